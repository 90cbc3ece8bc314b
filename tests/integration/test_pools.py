"""Several pools in one master (run as root, without -R), each with its own user, limits,
environment, working directory, python_path or chroot and virtualenv, seen from inside
requests to each: a pool sees only its own settings and answers with its own copy of the app
(the same module name in every pool), a crash in one pool leaves the others serving, and
FastCGI params cannot change a pool's settings.

test_unix.py checks each setting on one pool; this checks that pools do not leak into each
other. One master serves the whole module.
"""
import ast
import concurrent.futures
import os
import re
import resource
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

import harness
from fpm import client
from tests.conftest import APPS, global_section, make_account, make_jail, pool_section

PY = "python%d.%d" % sys.version_info[:2]
# Where pool c's app lives, inside its chroot: a virtualenv's site-packages.
VENV_PACKAGES = "/venv/lib/%s/site-packages" % PY

# [global] raises every worker's core limit; pool b sets its own.
CONFIG = "\n".join([
    global_section("", "error_log = stderr\nrlimit_core = unlimited"),
    pool_section("a", listen="{tmp}/a.sock", workers=1, mode="", app="pool_app:app",
                 python_path="{base}/a",
                 extra="user = {user_a}\nchdir = {base}/work\nclear_env = yes\nenv[X] = 1\n"
                       "rlimit_files = 1000\nprocess.priority = 5"),
    pool_section("b", listen="{tmp}/b.sock", mode="", app="pool_app:app", python_path="{base}/b",
                 extra="preload = yes\nuser = {user_b}\nclear_env = no\nenv[Y] = 2\n"
                       "rlimit_core = 0\nprocess.dumpable = yes"),
    pool_section("c", listen="{tmp}/c.sock", workers=1, mode="", app="pool_app:app",
                 python_path=None,
                 extra="user = {user_a}\nchroot = {base}/jail\nvirtualenv = /venv")])

MARKER = {"PYFPM_POOLS_MARKER": "from the master"}


@pytest.fixture(scope="module")
def site():
    """(base, user A, user B): a world-readable base directory holding a/ and b/ (a copy of
    pool_app each), work/ (pool a's chdir) and jail/ (pool c's chroot: the standard library and
    a virtualenv holding a third copy)."""
    base = Path(tempfile.mkdtemp(prefix="pyfpm-pools-"))
    base.chmod(0o755)
    for name in ("a", "b", "work"):
        (base / name).mkdir()
    for name in ("a", "b"):
        shutil.copy(APPS / "pool_app.py", base / name)
    jail = make_jail(base / "jail")
    packages = jail / VENV_PACKAGES.lstrip("/")
    packages.mkdir(parents=True)
    shutil.copy(APPS / "pool_app.py", packages)
    (jail / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\nversion = %d.%d.0\n"
                                              % sys.version_info[:2])
    try:
        with make_account(base, "home-a") as a, make_account(base, "home-b") as b:
            yield base, a, b
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def srv(site, tmp_path_factory):
    base, a, b = site
    server = harness.Server(CONFIG, tmp_path_factory.mktemp("pools"), allow_root=False,
                            env=MARKER, base=base, user_a=a.name, user_b=b.name)
    try:
        yield server.start()
    finally:
        server.stop()


def ask(srv, pool, uri="/", **kwargs):
    """What the worker of ``pool`` that took the request reports."""
    response = client.request(srv.tmp / ("%s.sock" % pool), uri, **kwargs)
    assert response.status == 200, (pool, response.status, response.body, srv.log_text())
    return ast.literal_eval(response.body.decode())


def host_root():
    top = os.stat("/")
    return [top.st_dev, top.st_ino]


def suid_dumpable():
    """What setuid leaves a worker's dumpable flag at, without process.dumpable."""
    return int(Path("/proc/sys/fs/suid_dumpable").read_text())


def expect_a(site, state):
    """Pool a's settings, and none of b's or c's."""
    base, a, _ = site
    assert (state["uid"], state["gid"]) == (a.uid, a.gid)
    assert state["groups"] == sorted([a.gid, a.extra_gid])
    assert state["cwd"] == str(base / "work")
    assert state["root"] == host_root()
    assert state["environ"] == {"X": "1", "USER": a.name, "HOME": str(a.home)}
    assert state["nofile"] == [1000, 1000]
    assert state["core"] == [resource.RLIM_INFINITY] * 2
    assert state["nice"] == 5
    assert state["dumpable"] == suid_dumpable()


# --- each pool its own settings ------------------------------------------------------------------

def test_each_pool_runs_with_only_its_own_user_limits_and_environment(site, srv):
    base, a, b = site
    master_nice = os.getpriority(os.PRIO_PROCESS, srv.pid)
    master_nofile = list(resource.getrlimit(resource.RLIMIT_NOFILE))  # the master's, inherited
    expect_a(site, ask(srv, "a"))

    sb = ask(srv, "b")
    assert (sb["uid"], sb["gid"]) == (b.uid, b.gid)
    assert sb["groups"] == sorted([b.gid, b.extra_gid])
    assert sb["cwd"] == str(srv.tmp)  # no chdir: where the master was started
    assert sb["root"] == host_root()
    env = sb["environ"]  # clear_env = no: the master's, then env[], then the pool user's
    assert env["PYFPM_POOLS_MARKER"] == "from the master" and env["PATH"] == os.environ["PATH"]
    assert (env["Y"], env["USER"], env["HOME"]) == ("2", b.name, str(b.home))
    assert "X" not in env
    assert sb["nofile"] == master_nofile
    assert sb["core"] == [0, 0]
    assert sb["nice"] == master_nice != 5
    assert sb["dumpable"] == 1

    sc = ask(srv, "c")
    assert (sc["uid"], sc["gid"]) == (a.uid, a.gid)  # the same user as pool a, not its settings
    top = os.stat(base / "jail")
    assert sc["root"] == [top.st_dev, top.st_ino]
    assert sc["cwd"] == "/"  # chroot without chdir
    assert sc["environ"] == {"USER": a.name, "HOME": str(a.home)}
    assert sc["nofile"] == master_nofile
    assert sc["core"] == [resource.RLIM_INFINITY] * 2
    assert sc["nice"] == master_nice
    assert sc["dumpable"] == suid_dumpable()


def test_each_pool_answers_with_its_own_copy_of_the_app(site, srv):
    # Three modules named pool_app: pool b's was imported in the master (preload) before any
    # worker was forked, and still neither a nor c may get it, nor its python_path.
    base, _, _ = site
    states = {name: ask(srv, name) for name in "abc"}
    states["b2"] = ask(srv, "b")  # b's other worker, or the same one: the same copy
    files = {name: state["file"] for name, state in states.items()}
    assert files == {"a": str(base / "a" / "pool_app.py"), "b": str(base / "b" / "pool_app.py"),
                     "b2": str(base / "b" / "pool_app.py"),
                     "c": VENV_PACKAGES + "/pool_app.py"}
    assert {name: state["pool"] for name, state in states.items()} == \
        {"a": "a", "b": "b", "b2": "b", "c": "c"}
    paths = {name: state["path"] for name, state in states.items()}
    a_dir, b_dir = str(base / "a"), str(base / "b")
    assert a_dir in paths["a"] and b_dir not in paths["a"]
    assert b_dir in paths["b"] and a_dir not in paths["b"]
    assert VENV_PACKAGES in paths["c"] and a_dir not in paths["c"] and b_dir not in paths["c"]


# --- isolation of faults ---------------------------------------------------------------------------

def test_a_crash_in_one_pool_leaves_the_others_serving(site, srv):
    crashed = ask(srv, "a")["pid"]
    others = set(srv.children()) - {crashed}
    mark = srv.mark()
    with concurrent.futures.ThreadPoolExecutor(1) as background:
        # A request of pool b in progress while pool a's worker dies.
        slow = background.submit(ask, srv, "b", "/sleep?0.5")
        with pytest.raises((client.FastCGIError, ConnectionError)):
            client.request(srv.tmp / "a.sock", "/crash")
        assert ask(srv, "c")["pool"] == "c"
        assert slow.result(5)["pool"] == "b"
    srv.wait_log(r"WARNING: \[pool a\] child %d exited with code 3 after " % crashed, since=mark)
    srv.wait_log(r"NOTICE: \[pool a\] child \d+ started$", since=mark)
    respawned = ask(srv, "a")
    assert respawned["pid"] != crashed
    expect_a(site, respawned)  # the new worker has pool a's settings again
    # Only pool a's worker was replaced: b's and c's are the ones that were there before.
    assert set(srv.children()) - {respawned["pid"]} == others
    assert not re.search(r"\[pool [bc]\] child \d+ exited", srv.log_text()[mark:])


# --- what a request may not change ---------------------------------------------------------------

def test_fastcgi_params_cannot_change_the_pool_settings(site, srv):
    # PHP-FPM applies PHP_VALUE / PHP_ADMIN_VALUE params as ini settings; pyfpm has no such
    # channel, and a param named like a key of the base environ must not replace it.
    params = {"fpm.pool": "b", "wsgi.version": "(9, 9)",
              "PHP_VALUE": "rlimit_files = 5\nchdir = /tmp",
              "PHP_ADMIN_VALUE": "user = root\nenv[X] = 2"}
    with client.Connection(srv.tmp / "a.sock") as conn:
        first = ast.literal_eval(conn.request("/", params=params).body.decode())
        second = ast.literal_eval(conn.request("/").body.decode())
    assert second["pid"] == first["pid"]  # pool a has one worker: the same one answered both
    for state in (first, second):
        assert (state["pool"], state["wsgi.version"]) == ("a", (1, 0))
        expect_a(site, state)
