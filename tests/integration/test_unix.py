"""Pool user, group, chroot, chdir, rlimits, priority, dumpable and environment (fpm.unix),
seen from inside a request to the real master running as root, and the root rule of -R.

The pool user is made for the module (useradd) and removed after it (userdel); the app and
the directories it is given live in a world-readable directory, as a real deployment's do.
"""
import ast
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest

import harness
from fpm import client
from tests.conftest import APPS, make_account, make_jail, pyfpm_config

TS = r"\[\d{2}-[A-Z][a-z]{2}-\d{4} \d{2}:\d{2}:\d{2}\]"

def config(app_dir="{app_dir}", global_="", app="unix_app:app"):
    """One worker of ``app``; harness.Server fills in {pool} (the pool's own lines) and
    {app_dir}."""
    return pyfpm_config(listen="{sock}", workers=1, app=app, python_path=app_dir, log_level="",
                        global_="error_log = stderr\n" + global_, extra="{pool}")


@pytest.fixture(scope="module")
def account():
    """The pool user (conftest.Account), with app/ (the test app) and work/ (a chdir) in its
    world-readable base directory."""
    base = Path(tempfile.mkdtemp(prefix="pyfpm-unix-"))
    base.chmod(0o755)
    (base / "app").mkdir()
    shutil.copy(APPS / "unix_app.py", base / "app")
    (base / "work").mkdir()
    try:
        with make_account(base) as account:
            yield account
    finally:
        shutil.rmtree(base, ignore_errors=True)


def server(tmp_path, account, pool="", **kwargs):
    return harness.Server(config(), tmp_path, app_dir=account.app_dir, pool=pool, **kwargs)


def worker_state(srv, uri="/"):
    response = srv.request(uri)
    assert response.status == 200, response.body
    return ast.literal_eval(response.body.decode())


# --- a pool user, with its limits and environment ---------------------------------------------

def test_worker_runs_as_the_pool_user_with_its_limits_priority_and_environment(tmp_path, account):
    pool = f"""\
user = {account.name}
chdir = {account.base / "work"}
rlimit_files = 1234
rlimit_core = unlimited
process.priority = 7
process.dumpable = yes
env[GREETING] = hello
env[FROM_MASTER] = $PYFPM_TEST_MARKER
"""
    with server(tmp_path, account, pool, env={"PYFPM_TEST_MARKER": "from the master"}) as srv:
        state = worker_state(srv)
        master_nice = os.getpriority(os.PRIO_PROCESS, srv.pid)
    assert (state["uid"], state["euid"]) == (account.uid, account.uid)
    assert (state["gid"], state["egid"]) == (account.gid, account.gid)
    # initgroups: the user's own group and the one it is a member of, none of root's
    assert state["groups"] == sorted([account.gid, account.extra_gid])
    assert state["cwd"] == str(account.base / "work")
    # clear_env (the default): only env[] and the pool user's USER and HOME
    assert state["environ"] == {"GREETING": "hello", "FROM_MASTER": "from the master",
                                "USER": account.name, "HOME": str(account.home)}
    assert state["nofile"] == [1234, 1234]
    assert state["core"] == [resource.RLIM_INFINITY] * 2
    assert state["nice"] == 7 and master_nice != 7  # the pool's priority is the workers'
    assert state["dumpable"] == 1


def test_clear_env_off_keeps_the_master_environment_group_sets_the_gid(tmp_path, account):
    pool = f"""\
user = {account.name}
group = {account.extra}
clear_env = no
env[GREETING] = hello
env[HOME] = /srv/custom
"""
    marker = {"PYFPM_TEST_MARKER": "kept", "USER": "root"}
    with server(tmp_path, account, pool, env=marker) as srv:
        state = worker_state(srv)
    env = state["environ"]
    assert env["PYFPM_TEST_MARKER"] == "kept" and env["PATH"] == os.environ["PATH"]
    assert env["GREETING"] == "hello"
    assert env["USER"] == account.name  # the pool user's, not the master's
    assert env["HOME"] == "/srv/custom"  # env[] wins over the user's home
    assert (state["gid"], state["egid"]) == (account.extra_gid, account.extra_gid)
    assert state["groups"] == [account.extra_gid]  # initgroups(user, group)
    # Without process.dumpable, setuid leaves the worker as the kernel's suid_dumpable says.
    assert state["dumpable"] == int(Path("/proc/sys/fs/suid_dumpable").read_text())
    # No chdir: the worker stays where the master was started.
    assert state["cwd"] == str(tmp_path)


def test_a_pool_user_worker_still_dies_with_the_master(tmp_path, account):
    # A change of uid clears the parent-death signal; the worker must set it again after.
    with server(tmp_path, account, f"user = {account.name}") as srv:
        pid = worker_state(srv)["pid"]
        os.kill(srv.pid, signal.SIGKILL)
        deadline = time.monotonic() + 3
        while harness.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not harness.alive(pid), "worker %d outlived its master" % pid


def test_rlimit_files_above_the_kernel_ceiling_is_logged_and_the_worker_serves(tmp_path, account):
    ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
    with server(tmp_path, account, f"rlimit_files = {ceiling + 1}") as srv:
        state = worker_state(srv)
        line = srv.wait_log(r"^%s ERROR: \[pool www\] child \d+: rlimit_files = %d: "
                            r"setrlimit\(RLIMIT_NOFILE\) failed: .*; the limit stays at "
                            r"soft (\d+), hard (\d+); the kernel allows at most %d \(fs.nr_open\)$"
                            % (TS, ceiling + 1, ceiling))
    assert state["nofile"] == [int(line[1]), int(line[2])]


def test_a_chdir_gone_after_start_fails_the_worker_with_exit_70(tmp_path, account):
    work = account.base / "gone"
    work.mkdir()
    with server(tmp_path, account, f"user = {account.name}\nchdir = {work}") as srv:
        pid = worker_state(srv)["pid"]
        work.rmdir()  # e.g. a deploy that swapped the directory away
        mark = srv.mark()
        os.kill(pid, signal.SIGKILL)
        srv.wait_log(r"ERROR: \[pool www\] child \d+: chdir = '%s': chdir\(%s\) failed: No "
                     r"such file or directory \(2\)$" % (re.escape(str(work)), re.escape(str(work))),
                     since=mark)
        # It could not start: the pool waits before the next try, as for an app that
        # cannot be loaded.
        srv.wait_log(r"child \d+ ended before it was ready to serve \(exited with code 70 [\d.]+ "
                     r"seconds after start\); "
                     r"next spawn in 0\.9\d* seconds$", since=mark)


# --- the root rule: a pool runs as root only with -R ------------------------------------------

@pytest.mark.parametrize("pool, message", [
    ("", "user has not been defined; set 'user' or start pyfpm with -R to let workers run "
         "as root"),
    ("user = root", "please specify user and group other than root (user = 'root' is uid 0), "
                    "or start pyfpm with -R"),
    ("user = {name}\ngroup = root", "please specify user and group other than root "
                                    "(group = 'root' is gid 0), or start pyfpm with -R"),
])
def test_root_workers_need_R(tmp_path, account, pool, message):
    pool = pool.format(name=account.name)
    srv = server(tmp_path, account, pool, allow_root=False)
    try:
        srv.start(wait_ready=False)
        assert srv.wait_exit() == 78
        lines = re.sub(TS + " ", "", srv.log_text()).splitlines()
        assert lines == ["ERROR: [pool www] " + message, "ERROR: FPM initialization failed"]
    finally:
        srv.stop()
    test = harness.run_fpm("-t", "-y", str(srv.conf_path), allow_root=False)
    assert test.returncode == 78 and "ERROR: [pool www] " + message in test.stderr
    # With -R the same configuration runs, and its workers are root.
    with server(tmp_path, account, pool) as srv:
        state = worker_state(srv)
    assert state["gid"] == 0
    if "group" not in pool:
        assert state["uid"] == 0 and state["environ"]["USER"] == "root"


def test_R_survives_a_reload(tmp_path, account):
    # The master re-executes itself with its own command line on USR2; without -R there the
    # new master would refuse this pool.
    with server(tmp_path, account, "") as srv:
        before = worker_state(srv)
        mark = srv.mark()
        srv.signal(signal.SIGUSR2)
        srv.wait_log(r"NOTICE: ready to handle connections$", 10, since=mark)
        deadline = time.monotonic() + 5
        while (after := worker_state(srv))["pid"] == before["pid"]:
            assert time.monotonic() < deadline, "no new worker after the reload"
            time.sleep(0.05)
        assert "user has not been defined" not in srv.log_text()
    assert after["uid"] == 0


def test_unknown_user_fails_the_config_test(tmp_path, account):
    (tmp_path / "pyfpm.conf").write_text(harness.substitute(
        config(), {"sock": tmp_path / "s", "app_dir": account.app_dir, "pool": "user = aaaaaa"}))
    for allow_root in (False, True):
        test = harness.run_fpm("-t", "-y", str(tmp_path / "pyfpm.conf"), allow_root=allow_root)
        assert test.returncode == 78
        assert re.sub(TS + " ", "", test.stderr).splitlines() == [
            "ERROR: [pool www] cannot get uid for user 'aaaaaa'",
            "ERROR: FPM initialization failed"]


# --- chroot -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def jail(account):
    """A chroot holding the standard library (hard links when possible) and /app."""
    root = make_jail(account.base / "jail")
    (root / "app").mkdir()
    shutil.copy(APPS / "unix_app.py", root / "app")
    return root


def test_chroot_serves_from_inside_the_jail(tmp_path, account, jail):
    pool = f"user = {account.name}\nchroot = {jail}\nchdir = /app"
    text = config(app_dir="/app")
    with harness.Server(text, tmp_path, pool=pool) as srv:
        state = worker_state(srv)
        # A module first imported now comes from the jail's copy of the standard library
        # (which the pool user could not even read at the host's path here).
        json = worker_state(srv, "/import?json")
    top = os.stat(jail)
    assert state["root"] == [top.st_dev, top.st_ino]
    assert state["cwd"] == "/app"
    assert state["uid"] == account.uid
    assert json == {"module": "json",
                    "file": str(Path(os.__file__).parent / "json" / "__init__.py")}


def test_chroot_without_chdir_starts_in_its_root(tmp_path, account, jail):
    pool = f"user = {account.name}\nchroot = {jail}"
    text = config(app_dir="/app")
    with harness.Server(text, tmp_path, pool=pool) as srv:
        state = worker_state(srv)
    top = os.stat(jail)
    assert state["root"] == [top.st_dev, top.st_ino]
    assert state["cwd"] == "/"


# --- [global]: the master's own limits and priority ---------------------------------------------

def test_global_limits_and_priority_apply_to_the_master_and_its_workers(tmp_path, account):
    text = config(global_="rlimit_files = 2345\nrlimit_core = 0\nprocess.priority = 3")
    with harness.Server(text, tmp_path, app_dir=account.app_dir,
                        pool=f"user = {account.name}") as srv:
        state = worker_state(srv)
        master_nice = os.getpriority(os.PRIO_PROCESS, srv.pid)
        limits = Path("/proc/%d/limits" % srv.pid).read_text()
    assert master_nice == 3 and state["nice"] == 3  # inherited
    assert re.search(r"^Max open files\s+2345\s+2345\s", limits, re.M)
    assert state["nofile"] == [2345, 2345] and state["core"] == [0, 0]


def test_a_global_rlimit_that_cannot_be_set_stops_the_start(tmp_path, account):
    ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
    text = config(global_="rlimit_files = %d\n" % (ceiling + 1))
    srv = harness.Server(text, tmp_path, app_dir=account.app_dir, pool="")
    try:
        srv.start(wait_ready=False)
        assert srv.wait_exit() == 78
        lines = re.sub(TS + " ", "", srv.log_text()).splitlines()
        assert lines[-1] == "ERROR: FPM initialization failed"
        assert lines[-2].startswith("ERROR: [global] rlimit_files = %d: setrlimit(RLIMIT_NOFILE) "
                                    "failed: " % (ceiling + 1))
    finally:
        srv.stop()


# --- virtualenv --------------------------------------------------------------------------------

def _venv(root: Path, version: str) -> Path:
    """A virtualenv's layout (what `python -m venv` makes), with one module and a .pth file."""
    packages = root / "lib" / ("python" + version) / "site-packages"
    packages.mkdir(parents=True)
    (packages / "venv_app.py").write_text(
        "import sys\n"
        "def app(environ, start_response):\n"
        "    body = repr({'file': __file__, 'path': sys.path}).encode()\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [body]\n")
    (root / "extra").mkdir()
    (packages / "extra.pth").write_text(str(root / "extra") + "\n")
    (root / "pyvenv.cfg").write_text("home = /usr/bin\nversion = %s.0\n" % version)
    return root


def test_virtualenv_packages_are_imported(tmp_path, account):
    here = "%d.%d" % sys.version_info[:2]
    venv = _venv(account.base / "venv", here)
    text = config(app="venv_app:app")
    pool = f"user = {account.name}\nvirtualenv = {venv}"
    with harness.Server(text, tmp_path, app_dir=account.app_dir, pool=pool) as srv:
        state = worker_state(srv)
    packages = venv / "lib" / ("python" + here) / "site-packages"
    assert state["file"] == str(packages / "venv_app.py")
    # after the interpreter's own library, before python_path: the venv and its .pth entries
    path = state["path"]
    stdlib = str(Path(os.__file__).parent)
    assert (path.index(stdlib) < path.index(str(packages)) < path.index(str(venv / "extra"))
            < path.index(str(account.app_dir)))


def test_a_virtualenv_rebuilt_for_another_python_fails_the_worker_clearly(tmp_path, account):
    # The master checks the venv at start; a worker started later (a respawn) finds what is
    # there then, e.g. a venv recreated with another Python under the running pyfpm.
    here = "%d.%d" % sys.version_info[:2]
    venv = _venv(account.base / "venv-rebuilt", here)
    pool = f"user = {account.name}\nvirtualenv = {venv}"
    with harness.Server(config(), tmp_path, app_dir=account.app_dir, pool=pool) as srv:
        pid = worker_state(srv)["pid"]
        (venv / "lib" / ("python" + here)).rename(venv / "lib" / "python3.99")
        mark = srv.mark()
        os.kill(pid, signal.SIGKILL)
        srv.wait_log(r"ERROR: \[pool www\] child \d+: virtualenv '%s' was made for Python 3.99, "
                     r"but pyfpm runs Python %s " % (re.escape(str(venv)), re.escape(here)),
                     since=mark)
        # It answers 503 for a second, then leaves the next try to a new worker.
        srv.wait_log(r"child \d+: answering 503 for [\d.]+ seconds", since=mark)
        # (The address from the values: the configuration itself no longer passes the check.)
        assert client.request(str(srv.values["sock"]), "/").status == 503
        srv.wait_log(r"child \d+ exited with code 69", since=mark)
