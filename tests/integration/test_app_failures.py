"""A pool whose app cannot be loaded: its requests are answered 503 at once (never left to
hang until the web server's timeout), the log says why, the status page and `pyfpm status`
show the pool failing, the next try picks up a fixed app, a preload that fails takes no
other pool down, and `-t` says which pools' apps cannot be imported (failing with
--strict-app) and which paths their users cannot read."""
import json
import signal
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

import harness
from fpm import client
from fpm.config import venv_site_packages
from tests.conftest import make_account, make_jail, pool_section, pyfpm_config

BROKEN = "import os\nvalue = undefined_name  # line 2\n"
FIXED = ("def app(environ, start_response):\n"
         "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
         "    return [b'fixed']\n")

CONFIG = pyfpm_config(listen="{tmp}/www.sock", app="broken_app:app", python_path="{tmp}",
                      extra="pm.status_path = /status\nping.path = /ping\n{extra}")

FAILED = (r"ERROR: \[pool www\] child (\d+): cannot import module 'broken_app' for app "
          r"'broken_app:app': NameError: name 'undefined_name' is not defined$")


def broken(tmp_path, extra="", **kwargs):
    (tmp_path / "broken_app.py").write_text(BROKEN)
    return harness.Server(CONFIG, tmp_path, extra=extra, **kwargs)


def status(address):
    response = client.request(address, "/status?json")
    assert response.status == 200, response.body
    return json.loads(response.body)


def test_requests_are_answered_503_at_once_and_the_log_says_why(tmp_path, nginx):
    server = broken(tmp_path).start()
    try:
        server.wait_log(FAILED)
        server.wait_log(r"child \d+: answering 503 for [\d.]+ seconds")
        # The traceback: where in the app's code the import failed.
        assert re.search(r'File "%s", line 2, in <module>' % re.escape(str(tmp_path / "broken_app.py")),
                         server.log_text())
        front = nginx(server.address)
        answer = front.get("/anything")
        assert answer.status == 503 and answer.seconds < 1.0
        assert answer.header("Retry-After") in {"1", "2"}
        assert b"undefined_name" not in answer.body and b"broken_app" not in answer.body
        assert client.request(server.address, "/ping").status == 503  # not ready
    finally:
        server.stop()


def test_the_ping_on_pm_status_listen_is_not_ready_either(tmp_path):
    """A health check polling the status listener's ping (a worker of its own, which loads
    no app) sees the pool failing too: 503, as the pool's own ping and the status say."""
    server = broken(tmp_path, extra="pm.status_listen = %s" % (tmp_path / "status.sock")).start()
    try:
        server.wait_log(r"answering 503")
        response = client.request(str(tmp_path / "status.sock"), "/ping")
        assert (response.status, response.body) == (
            503, b"Service Unavailable: the application cannot be loaded; try again later.\n")
        assert status(str(tmp_path / "status.sock"))["app status"] == "failing"
    finally:
        server.stop()


def test_the_status_page_and_pyfpm_status_show_the_pool_failing(tmp_path):
    server = broken(tmp_path).start()
    try:
        server.wait_log(r"answering 503")
        data = status(server.address)
        assert data["app status"] == "failing"
        assert data["app error"] == ("cannot import module 'broken_app' for app 'broken_app:app': "
                                     "NameError: name 'undefined_name' is not defined")
        shown = harness.run_fpm("status", server.address, allow_root=False)
        assert shown.returncode == 0, shown.stderr
        assert ("app        FAILING, answered 503: cannot import module 'broken_app'"
                in shown.stdout)
    finally:
        server.stop()


def test_the_next_try_picks_up_the_fixed_app(tmp_path):
    server = broken(tmp_path).start()
    try:
        server.wait_log(r"answering 503 for [\d.]+ seconds")
        (tmp_path / "broken_app.py").write_text(FIXED)
        deadline = time.monotonic() + 10
        while (answer := server.request("/")).status != 200:
            assert answer.status == 503 and time.monotonic() < deadline, server.log_text()
            time.sleep(0.05)
        assert answer.body == b"fixed"
        deadline = time.monotonic() + 10
        while status(server.address)["app status"] != "ok":  # both workers tried again
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.05)
        assert status(server.address)["app error"] == "-"
    finally:
        server.stop()


def test_a_preload_that_fails_leaves_the_other_pools_serving(tmp_path):
    (tmp_path / "good_app.py").write_text(FIXED)
    server = broken(tmp_path, "preload = yes\n\n" + pool_section(
        "good", listen="%s/good.sock" % tmp_path, workers=1, mode="", app="good_app:app",
        python_path=tmp_path))
    server.start()
    try:
        server.wait_log(r"ERROR: \[pool www\] preload: cannot import module 'broken_app' .*; its "
                        r"workers import the app themselves and answer 503 while it cannot be "
                        r"loaded$")
        assert client.request(str(tmp_path / "good.sock"), "/").body == b"fixed"
        server.wait_log(r"answering 503")
        assert server.request("/").status == 503
    finally:
        server.stop()


# --- -t, and what the pool's user can read ------------------------------------------------

def test_t_warns_of_an_app_that_cannot_be_imported_and_strict_app_fails(tmp_path):
    (tmp_path / "broken_app.py").write_text(BROKEN)
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(harness.substitute(CONFIG, {"tmp": tmp_path, "extra": ""}))
    lenient = harness.run_fpm("-t", "-y", str(conf))
    assert lenient.returncode == 0, lenient.stderr
    assert re.search(r"WARNING: \[pool www\] app 'broken_app:app' cannot be loaded: cannot import "
                     r"module 'broken_app' for app 'broken_app:app': NameError: name "
                     r"'undefined_name' is not defined$", lenient.stderr, re.M)
    strict = harness.run_fpm("-t", "--strict-app", "-y", str(conf))
    assert strict.returncode == 78
    assert re.search(r"ERROR: \[pool www\] app 'broken_app:app' cannot be loaded: ", strict.stderr)
    (tmp_path / "broken_app.py").write_text(FIXED)
    fixed = harness.run_fpm("-t", "--strict-app", "-y", str(conf))
    assert fixed.returncode == 0 and "WARNING" not in fixed.stderr, fixed.stderr


@pytest.fixture(scope="module")
def site():
    """A world-readable base with an app the pool user cannot read (private/, root's 0700)
    and one it can (public/), and the user."""
    base = Path(tempfile.mkdtemp(prefix="pyfpm-app-failures-"))
    base.chmod(0o755)
    for name, mode in (("private", 0o700), ("public", 0o755)):
        (base / name).mkdir()
        (base / name / "user_app.py").write_text(FIXED)
        (base / name).chmod(mode)
    try:
        with make_account(base) as account:
            yield base, account
    finally:
        shutil.rmtree(base, ignore_errors=True)


# {user}'s pool; {path}: its python_path.
USER_CONFIG = pyfpm_config(listen="{tmp}/www.sock", workers=1, app="user_app:app",
                           python_path="{path}", extra="user = {user}\n{extra}")


def test_t_imports_as_the_pools_user_and_names_what_it_cannot_read(site, tmp_path):
    base, account = site
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(USER_CONFIG.format(tmp=tmp_path, user=account.name, path=base / "private",
                                       extra=""))
    done = harness.run_fpm("-t", "-y", str(conf), allow_root=False)
    assert done.returncode == 0, done.stderr
    assert ("WARNING: [pool www] user '%s' cannot read python_path '%s' (mode 0700); the workers "
            "cannot import what the master has not imported" % (account.name, base / "private")
            in done.stderr)
    assert ("WARNING: [pool www] app 'user_app:app' cannot be loaded: cannot import module "
            "'user_app' for app 'user_app:app': ModuleNotFoundError: No module named 'user_app'"
            in done.stderr)
    assert "(user '%s' cannot read python_path '%s' (mode 0700))" % (account.name, base / "private") \
        in done.stderr
    conf.write_text(USER_CONFIG.format(tmp=tmp_path, user=account.name, path=base / "public",
                                       extra=""))
    done = harness.run_fpm("-t", "--strict-app", "-y", str(conf), allow_root=False)
    # (Where this interpreter lives under a private home, the user cannot read its standard
    # library either, and -t says so too.)
    assert done.returncode == 0 and "python_path" not in done.stderr, done.stderr


def test_the_workers_import_error_names_what_its_user_cannot_read(site, tmp_path):
    base, account = site
    server = harness.Server(USER_CONFIG, tmp_path, allow_root=False, user=account.name,
                            path=base / "private", extra="")
    try:
        server.start()
        server.wait_log(r"WARNING: \[pool www\] user '%s' cannot read python_path" % account.name)
        server.wait_log(r"ERROR: \[pool www\] child \d+: cannot import module 'user_app' .* "
                        r"\(user '%s' cannot read python_path '%s' \(mode 0700\)\)$"
                        % (account.name, re.escape(str(base / "private"))))
        assert server.request("/").status == 503
    finally:
        server.stop()


def test_a_chdir_the_user_cannot_read_is_named_by_t_and_the_start(site, tmp_path):
    base, account = site
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(USER_CONFIG.format(tmp=tmp_path, user=account.name, path=base / "public",
                                       extra="chdir = %s" % (base / "private")))
    warning = ("WARNING: [pool www] user '%s' cannot read chdir '%s' (mode 0700); the workers "
               "cannot import what the master has not imported" % (account.name, base / "private"))
    done = harness.run_fpm("-t", "-y", str(conf), allow_root=False)
    assert done.returncode == 0 and warning in done.stderr, done.stderr
    assert ("WARNING: [pool www] app 'user_app:app' cannot be loaded: cannot enter chdir '%s': "
            "Permission denied" % (base / "private")) in done.stderr
    server = harness.Server(conf.read_text(), tmp_path, allow_root=False)
    try:
        server.start()
        assert warning in server.log_text()
        server.wait_log(r"ERROR: \[pool www\] child \d+: cannot enter chdir ")
        assert server.request("/").status == 503
    finally:
        server.stop()


def test_a_virtualenv_the_user_cannot_read_is_named_by_t(site, tmp_path):
    base, account = site
    venv = base / "private" / "venv"
    (Path(venv_site_packages(str(venv)))).mkdir(parents=True, exist_ok=True)
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(USER_CONFIG.format(tmp=tmp_path, user=account.name, path=base / "public",
                                       extra="virtualenv = %s" % venv))
    done = harness.run_fpm("-t", "-y", str(conf), allow_root=False)
    assert done.returncode == 0, done.stderr
    assert ("WARNING: [pool www] user '%s' cannot read virtualenv '%s': '%s' does not let it "
            "through (mode 0700); the workers cannot import what the master has not imported"
            % (account.name, venv, base / "private")) in done.stderr, done.stderr


def test_a_standard_library_the_user_cannot_read_is_named_by_t(site, tmp_path):
    """In a jail whose /root is private, as on a host whose interpreter lives in root's
    home: the pool's user cannot import "subprocess", and -t says why (naming the user by
    uid: the jail has no passwd file)."""
    base, account = site
    jail = make_jail(tmp_path / "jail")
    top = jail / Path(os.__file__).parent.relative_to("/").parts[0]
    top.chmod(0o700)
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(USER_CONFIG.format(tmp=tmp_path, user=account.name, path="/",
                                       extra="chroot = %s" % jail))
    done = harness.run_fpm("-t", "-y", str(conf), allow_root=False)
    assert done.returncode == 0, done.stderr
    assert re.search(r"WARNING: \[pool www\] uid %d cannot read the standard library '%s': "
                     r"'%s' does not let it through \(mode 0700\)"
                     % (account.uid, re.escape(str(Path(os.__file__).parent)),
                        re.escape("/" + top.name)), done.stderr), done.stderr


# --- what the review found: the pool never left without an answer ------------------------

def test_after_a_reload_to_a_broken_app_the_pool_answers_503_once_the_old_workers_are_gone(
        tmp_path):
    """The previous configuration's workers serve while the new ones cannot load the app;
    when they have all left (here by pm.max_requests, which applies again once the new
    master sees the new app fail: until then a reload holds recycling back), the new ones
    answer 503 at once instead of leaving the requests to hang."""
    (tmp_path / "broken_app.py").write_text(FIXED)
    server = harness.Server(CONFIG, tmp_path, extra="pm.max_requests = 3").start()
    try:
        server.wait_idle(2)
        (tmp_path / "broken_app.py").write_text(BROKEN)
        mark = server.mark()
        server.signal(signal.SIGUSR2)
        server.wait_log(r"NOTICE: ready to handle connections$", since=mark)
        server.wait_log(r"could not load the app", since=mark)
        seen = []
        # The 2 old workers serve 6 once the hold is lifted (the master's next look, within
        # 20 ms of the failure), and the few that came before it, then leave.
        for _ in range(30):
            seen.append(client.request(server.address, "/", timeout=5).status)
        assert set(seen) == {200, 503} and seen[-1] == 503, seen
    finally:
        server.stop()


def test_a_worker_answering_503_ignores_pm_max_requests(tmp_path):
    """A count of 503s must not end it: each new worker imports the app again."""
    server = broken(tmp_path, "pm.max_requests = 2").start()
    try:
        server.wait_log(r"answering 503 for")
        for _ in range(30):
            assert server.request("/").status == 503
        assert server.log_text().count("answering 503 for") <= 4, server.log_text()
    finally:
        server.stop()


@pytest.mark.parametrize("source, said", [
    ("import sys\nsys.exit('DATABASE_URL is not set')\n", "SystemExit: DATABASE_URL is not set"),
    ("raise SystemExit(1)\n", "SystemExit: 1"),
])
def test_an_app_that_exits_while_it_is_imported_is_answered_503(tmp_path, source, said):
    (tmp_path / "broken_app.py").write_text(source)
    server = harness.Server(CONFIG, tmp_path, extra="").start()
    try:
        server.wait_log(r"ERROR: \[pool www\] child \d+: cannot import module 'broken_app' for "
                        r"app 'broken_app:app': %s$" % re.escape(said))
        server.wait_log(r"answering 503 for")
        assert server.request("/").status == 503
    finally:
        server.stop()


def test_an_import_that_kills_the_worker_holds_the_pool_back(tmp_path):
    (tmp_path / "broken_app.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    server = harness.Server(CONFIG, tmp_path, extra="").start()
    try:
        server.wait_log(r"child \d+ ended before it was ready to serve \(exited on signal 11 "
                        r"\(SIGSEGV[^)]*\) [\d.]+ seconds after start\); next spawn in [\d.]+ "
                        r"seconds$")
        time.sleep(1.5)
        assert server.log_text().count("ended before it was ready") <= 4, server.log_text()
    finally:
        server.stop()


def test_once_the_app_loads_again_the_workers_still_answering_503_make_way(tmp_path):
    server = broken(tmp_path).start()
    try:
        # Two workers at their third try: each answers 503 for 3 to 4 s.
        deadline = time.monotonic() + 15
        while len(re.findall(r"child (\d+): answering 503 for [34](\.\d+)? seconds",
                             server.log_text())) < 2:
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.05)
        failing = server.children()
        (tmp_path / "broken_app.py").write_text(FIXED)
        os.kill(failing[0], signal.SIGKILL)  # its replacement loads the fixed app
        started = time.monotonic()
        while harness.alive(failing[1]):
            assert time.monotonic() - started < 2.5, "the other one kept answering 503"
            time.sleep(0.02)
        assert server.request("/").body == b"fixed"
        # The exited worker's slot says "failing" until the master has reaped it.
        started = time.monotonic()
        while status(server.address)["app status"] != "ok":
            assert time.monotonic() - started < 2, "the status page still says failing"
            time.sleep(0.02)
    finally:
        server.stop()
