"""conf/init.d/pyfpm driving a real daemonized master: start, status, reload, stop,
force-quit, restart, configtest, with the paths set through its variables."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness
from fpm.client import request
from tests.conftest import find_program, pyfpm_config

SCRIPT = Path(__file__).resolve().parents[2] / "conf" / "init.d" / "pyfpm"

APP = """\
import os

def app(environ, start_response):
    body = b"pid %d" % os.getpid()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


class InitScript:
    """conf/init.d/pyfpm run by /bin/sh against a config, pid file and log in ``tmp``."""

    def __init__(self, tmp: Path, listen: str | None = None):
        self.tmp = tmp
        self.sock = tmp / "www.sock"
        self.pid_file = tmp / "pyfpm.pid"
        self.log = tmp / "fpm.log"
        (tmp / "testapp.py").write_text(APP)
        self.conf = tmp / "pyfpm.conf"
        self.conf.write_text(pyfpm_config(
            listen=listen or self.sock, app="testapp:app", python_path=tmp, mode="",
            log_level="", global_="error_log = %s/fpm.log" % tmp))
        # PYFPM is one command; this one runs the fpm package the tests import.
        command = tmp / "pyfpm"
        command.write_text('#!/bin/sh\nexec "%s" -m fpm "$@"\n' % sys.executable)
        command.chmod(0o755)
        self.env = dict(harness.fpm_env(), PYFPM=str(command), PYFPM_CONF=str(self.conf),
                        PYFPM_PID=str(self.pid_file), PYFPM_OPTS=" ".join(root_opts()),
                        PYFPM_RUNDIR=str(tmp / "run"),
                        PYFPM_DEFAULTS=str(tmp / "no-such-defaults"))

    def run(self, action: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["/bin/sh", str(SCRIPT), action], capture_output=True, text=True,
                              env=self.env, timeout=timeout)

    def pid(self) -> int:
        return int(self.pid_file.read_text())

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def kill(self) -> None:
        """Teardown: SIGKILL a master that is still there, and its workers."""
        try:
            pid = self.pid()
        except (OSError, ValueError):
            return
        if harness.alive(pid):
            workers = harness.children_of(pid)
            for p in [pid] + workers:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def root_opts() -> list[str]:
    """``-R`` as root once pyfpm has it: the test pools set no ``user``."""
    if os.geteuid() != 0:
        return []
    usage = subprocess.run(harness.COMMAND + ["--help"], capture_output=True, text=True,
                           env=harness.fpm_env()).stdout
    return ["-R"] if "--allow-to-run-as-root" in usage else []


@pytest.fixture
def init(tmp_path):
    script = InitScript(tmp_path)
    yield script
    script.kill()


def assert_ok(out: subprocess.CompletedProcess, tail: str) -> None:
    assert out.returncode == 0, "exit %d\n%s%s" % (out.returncode, out.stdout, out.stderr)
    assert out.stdout.rstrip().endswith(tail), out.stdout + out.stderr


def wait_gone(pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while harness.alive(pid):
        assert time.monotonic() < deadline, "pid %d still alive" % pid
        time.sleep(0.01)


def test_start_makes_the_runtime_directory_for_unix_sockets(tmp_path):
    """/run is empty after a boot; pyfpm refuses a socket whose directory is missing."""
    script = InitScript(tmp_path, listen=tmp_path / "run" / "www.sock")
    try:
        assert_ok(script.run("start"), "done")
        assert request(str(tmp_path / "run" / "www.sock"), "/").status == 200
        assert_ok(script.run("stop"), "done")
    finally:
        script.kill()


def test_start_status_serve_stop(init):
    out = init.run("start")
    assert_ok(out, "done")
    assert out.stdout.startswith("Starting pyfpm ")
    pid = init.pid()
    assert harness.alive(pid) and os.getsid(pid) == pid, "not a daemon in its own session"
    status = init.run("status")
    assert (status.returncode, status.stdout) == (0, "pyfpm is running (pid %d)\n" % pid)
    response = request(str(init.sock), "/")
    assert response.status == 200 and int(response.body.split()[1]) in harness.children_of(pid)

    again = init.run("start")
    assert_ok(again, "already running (pid %d)" % pid)
    assert init.pid() == pid

    out = init.run("stop")
    assert_ok(out, "done")
    assert out.stdout.startswith("Gracefully shutting down pyfpm ")
    assert not harness.alive(pid)
    assert "NOTICE: Finishing ...\n" in init.log_text()
    status = init.run("status")
    assert (status.returncode, status.stdout) == (3, "pyfpm is not running\n")
    assert not init.pid_file.exists() and not init.sock.exists()
    # LSB: stopping a stopped service succeeds.
    assert_ok(init.run("stop"), "warning, pyfpm is not running")


def test_force_quit_terminates(init):
    assert_ok(init.run("start"), "done")
    pid = init.pid()
    out = init.run("force-quit")
    assert_ok(out, "done")
    assert out.stdout.startswith("Terminating pyfpm ")
    assert not harness.alive(pid)
    assert "NOTICE: Terminating ...\n" in init.log_text()
    assert init.run("status").returncode == 3


def test_restart_replaces_the_master(init):
    assert_ok(init.run("start"), "done")
    old = init.pid()
    assert_ok(init.run("restart"), "done")
    new = init.pid()
    assert new != old and harness.alive(new) and not harness.alive(old)
    assert request(str(init.sock), "/").status == 200


def test_reload_keeps_the_master_and_replaces_the_workers(init):
    assert_ok(init.run("start"), "done")
    pid = init.pid()
    request(str(init.sock), "/")
    before = harness.children_of(pid)
    mark = len(init.log_text())
    out = init.run("reload")
    assert_ok(out, "done")
    assert out.stdout.startswith("Reload service pyfpm ")
    deadline = time.monotonic() + 10
    while not re.search(r"ready to handle connections|SIGUSR2\) is not supported",
                        init.log_text()[mark:]):
        assert time.monotonic() < deadline, init.log_text()
        time.sleep(0.02)
    assert "NOTICE: Reloading in progress ...\n" in init.log_text()[mark:]
    assert "ready to handle connections" in init.log_text()[mark:]
    assert init.pid() == pid and harness.alive(pid)
    assert init.run("status").returncode == 0
    # The old workers retire once the new ones have loaded the app.
    for worker in before:
        wait_gone(worker, 10)
    response = request(str(init.sock), "/")
    assert response.status == 200
    assert int(response.body.split()[1]) in harness.children_of(pid)


def test_reload_with_a_broken_configuration_keeps_the_old_master(init):
    assert_ok(init.run("start"), "done")
    pid = init.pid()
    init.conf.write_text(init.conf.read_text().replace("pm.max_children = 2",
                                                       "pm.max_children = 0"))
    mark = len(init.log_text())
    out = init.run("reload")
    assert out.returncode == 1
    assert "failed: the configuration test failed" in out.stdout
    assert init.log_text()[mark:] == "", "the master was signalled"
    assert harness.alive(pid) and request(str(init.sock), "/").status == 200


def test_reload_when_stopped(init):
    out = init.run("reload")
    assert out.returncode == 7 and "not running" in out.stdout


def test_configtest(init):
    out = init.run("configtest")
    assert out.returncode == 0
    assert "configuration file %s test is successful" % init.conf in out.stderr
    init.conf.write_text("[www]\nlisten = 127.0.0.1:99999\npm = static\n")
    bad = init.run("configtest")
    assert bad.returncode == 78 and "99999" in bad.stderr


def test_failed_start_is_reported(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        script = InitScript(tmp_path, listen="127.0.0.1:%d" % taken.getsockname()[1])
        try:
            out = script.run("start")
        finally:
            script.kill()
    assert out.returncode == 1 and out.stdout.rstrip().endswith("failed")
    assert "Address already in use" in out.stderr
    assert script.run("status").returncode == 3


def test_stale_pid_file(init):
    dead = subprocess.Popen(["true"])
    dead.wait()
    init.pid_file.write_text("%d\n" % dead.pid)
    status = init.run("status")
    assert status.returncode == 1
    assert status.stdout == "pyfpm is not running, but the pid file %s exists\n" % init.pid_file
    # start is not fooled by it.
    assert_ok(init.run("start"), "done")
    assert init.pid() != dead.pid and init.run("status").returncode == 0


def test_usage():
    out = subprocess.run(["/bin/sh", str(SCRIPT), "bogus"], capture_output=True, text=True)
    assert out.returncode == 2
    assert re.match(r"Usage: .*\{start\|stop\|force-quit\|restart\|reload", out.stderr)


def test_script_is_shellcheck_clean():
    shellcheck = find_program("shellcheck")
    out = subprocess.run([shellcheck, "-s", "sh", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
