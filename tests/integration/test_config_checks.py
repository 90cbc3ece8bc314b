"""What `pyfpm -t` refuses, start-up refuses in the same words (php-src's config-test-* cases
and issue 13's): a slowlog or access log that cannot be created, a unix socket in a missing
directory, process.max below the workers the pools start, a misspelt directive. And the
slowlog, opened with the other logs at start, kept across USR1 and a reload."""
import re
import signal
import sys

import pytest

from fpm import client
from tests.conftest import pyfpm_config
from tests.harness import Server, run_fpm, wait_for

def config(global_="", pool="", listen="{sock}"):
    """One worker of slow_app; the pool's own lines (``pool``) begin at line 9 when
    ``global_`` is empty."""
    return pyfpm_config(listen=listen, workers=1, app="slow_app:app", mode="", log_level="",
                        global_=global_, extra=pool)


def errors(out) -> list[str]:
    """The ERROR lines of pyfpm's stderr, without their time stamps."""
    return [line.split("] ", 1)[1] for line in out.stderr.splitlines() if "] ERROR: " in line]


@pytest.mark.parametrize("global_, pool, error", [
    ("", "slowlog = {tmp}/missing/www.slow.log\nrequest_slowlog_timeout = 5",
     "ERROR: [pool www] unable to open slowlog '{tmp}/missing/www.slow.log': "
     "No such file or directory (2)"),
    ("", "access.log = {tmp}/missing/www.access.log",
     "ERROR: [pool www] unable to open the access log '{tmp}/missing/www.access.log': "
     "No such file or directory (2)"),
    ("", "pm.status_listen = {tmp}/missing/status.sock",
     "ERROR: [{tmp}/pyfpm.conf:9] [pool www] pm.status_listen: invalid value "
     "'{tmp}/missing/status.sock' (expected a unix socket path in an existing directory; "
     "'{tmp}/missing' is not a directory)"),
    ("process.max = 1", "[api]\nlisten = {tmp}/api.sock\npm = dynamic\npm.max_children = 4\n"
                        "pm.min_spare_servers = 2\npm.max_spare_servers = 2",
     "ERROR: [{tmp}/pyfpm.conf:2] [global] process.max (1) must not be less than the number "
     "of workers the pools start (3: [pool www] pm.max_children = 1, [pool api] "
     "pm.start_servers = 2)"),
    ("", "pm.max_childs = 4",
     "ERROR: [{tmp}/pyfpm.conf:9] [pool www] unknown entry 'pm.max_childs' "
     "(did you mean 'pm.max_children'?)"),
], ids=["slowlog", "access-log", "status-listen-dir", "process-max", "misspelt"])
def test_test_and_start_refuse_alike(tmp_path, global_, pool, error):
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(config(global_, pool.format(tmp=tmp_path), tmp_path / "www.sock"))
    test = run_fpm("-t", "-y", str(conf))
    start = run_fpm("-F", "-O", "-y", str(conf))
    assert (test.returncode, start.returncode) == (78, 78), (test.stderr, start.stderr)
    assert error.format(tmp=tmp_path) in errors(test)
    assert errors(start) == errors(test)
    assert errors(test)[-1] == "ERROR: FPM initialization failed"


def test_a_unix_socket_in_a_missing_directory_is_named_by_both(tmp_path):
    conf = tmp_path / "pyfpm.conf"
    sock = tmp_path / "run/pyfpm/www.sock"
    conf.write_text(config(listen=sock))
    test = run_fpm("-t", "-y", str(conf))
    start = run_fpm("-F", "-O", "-y", str(conf))
    assert (test.returncode, start.returncode) == (78, 78)
    assert errors(test) == errors(start) == [
        f"ERROR: [{conf}:4] [pool www] listen: invalid value '{sock}' (expected a unix socket "
        f"path in an existing directory; '{sock.parent}' is not a directory)",
        "ERROR: FPM initialization failed"]
    sock.parent.mkdir(parents=True)
    assert run_fpm("-t", "-y", str(conf)).returncode == 0


# --- the slowlog, opened with the other logs --------------------------------------------------

SLOW = "slowlog = {tmp}/www.slow.log\nrequest_slowlog_timeout = 1\naccess.log = {tmp}/access.log"


@pytest.fixture
def server(tmp_path):
    """One worker, a slowlog at tmp/www.slow.log and an access log (whose reopening USR1
    announces)."""
    server = Server(config(pool=SLOW), tmp_path)
    server.start()
    server.wait_idle(1)
    yield server
    server.stop()


def slow_request(server, slowlog) -> None:
    """One request the slowlog records; returns once its entry is in ``slowlog``."""
    before = len(slowlog_pids(slowlog))
    assert client.request(server.address, "/sleep?s=1.6", timeout=30).status == 200
    wait_for("the slow request's entry", lambda: len(slowlog_pids(slowlog)) > before, 5, server)


def slowlog_pids(path) -> list[int]:
    text = path.read_text() if path.exists() else ""
    return [int(pid) for pid in re.findall(r"^\[.{20}\]  \[pool www\] pid (\d+)$", text, re.M)]


def test_the_slowlog_is_created_at_start(server, tmp_path):
    slowlog = tmp_path / "www.slow.log"
    assert slowlog.exists() and slowlog.read_text() == ""
    assert slowlog.stat().st_mode & 0o777 == 0o600


def test_the_slowlog_is_reopened_on_usr1(server, tmp_path):
    """logrotate moves the file, USR1 reopens it: later entries go to the new file."""
    slowlog, rotated = tmp_path / "www.slow.log", tmp_path / "www.slow.log.1"
    slow_request(server, slowlog)
    slowlog.rename(rotated)
    mark = server.mark()
    server.signal(signal.SIGUSR1)
    server.wait_log(r"NOTICE: access log file re-opened", since=mark)
    assert slowlog.exists()
    slow_request(server, slowlog)
    assert len(slowlog_pids(rotated)) == 1 and len(slowlog_pids(slowlog)) == 1


def test_the_slowlog_works_after_a_reload(server, tmp_path):
    mark = server.mark()
    server.signal(signal.SIGUSR2)
    server.wait_log(r"NOTICE: ready to handle connections$", since=mark)
    wait_for("the previous worker to go", lambda: len(server.children()) == 1, 10, server)
    slow_request(server, tmp_path / "www.slow.log")
    assert slowlog_pids(tmp_path / "www.slow.log") == server.children()


def test_a_reload_to_an_unopenable_slowlog_is_refused_and_serving_goes_on(server, tmp_path):
    workers = server.children()
    server.conf_path.write_text(server.config_text.replace("www.slow.log", "missing/www.slow.log"))
    mark = server.mark()
    server.signal(signal.SIGUSR2)
    server.wait_log(r"ERROR: reload failed: the new configuration is invalid; still serving "
                    r"with the current one", since=mark)
    assert "ERROR: [pool www] unable to open slowlog '%s/missing/www.slow.log': No such file " \
           "or directory (2)" % tmp_path in server.log_text()[mark:]
    assert client.request(server.address, "/sleep?s=0", timeout=10).status == 200
    assert server.children() == workers


# --- -t, the start and a reload refuse alike (issue 14, items 2 and 6) ----------------------

NR_OPEN = int(open("/proc/sys/fs/nr_open").read())


@pytest.mark.parametrize("global_, pool, error", [
    ("error_log = {tmp}/missing/error.log", "",
     "failed to open error log file '{tmp}/missing/error.log': No such file or directory (2)"),
    ("pid = {tmp}/missing/fpm.pid", "",
     "unable to create the pid file '{tmp}/missing/fpm.pid': No such file or directory (2)"),
    ("rlimit_files = %d" % (NR_OPEN + 1), "",
     "[global] rlimit_files = %d: setrlimit(RLIMIT_NOFILE) failed: " % (NR_OPEN + 1)),
    ("", "access.log = {tmp}/a\0b.log",
     "[{conf}:10] [pool www] access.log: invalid value '{tmp}/a\\x00b.log' (expected no NUL "
     "byte: it would cut a path, an environment value or a C string short)"),
    ("", "env[TOKEN] = a\0b",
     "[{conf}:10] [pool www] env: invalid value 'a\\x00b' (expected no NUL byte: it would cut "
     "a path, an environment value or a C string short)"),
    ("", "pm.max_requests = 1" + "0" * 33,
     "[{conf}:10] [pool www] pm.max_requests: invalid value '1" + "0" * 33 + "' (expected an "
     "integer from 0 to 2147483647)"),
    ("", "user = pyfpm-no-such-user", "[pool www] cannot get uid for user 'pyfpm-no-such-user'"),
    ("", "listen = {tmp}/missing/www.sock",
     "[{conf}:10] [pool www] listen: invalid value '{tmp}/missing/www.sock' (expected a unix "
     "socket path in an existing directory; '{tmp}/missing' is not a directory)"),
], ids=["error-log-dir", "pid-dir", "global-rlimit", "nul-in-access-log", "nul-in-env",
        "max-requests-overflow", "unknown-user", "listen-dir"])
def test_test_start_and_reload_refuse_alike(tmp_path, global_, pool, error):
    """Each of these passed -t; a reload to it ended the master and every worker (with
    error_log, silently), or left the workers crash-looping while the master said ready."""
    conf = tmp_path / "pyfpm.conf"
    good = config("error_log = {tmp}/fpm-stderr.log")
    bad = config("error_log = {tmp}/fpm-stderr.log\n" + global_, pool)
    expected = error.format(tmp=tmp_path, conf=conf)
    conf.write_text(bad.replace("{tmp}", str(tmp_path)).replace("{sock}", str(tmp_path / "s")))
    test = run_fpm("-F", "-t", "-y", str(conf))
    start = run_fpm("-F", "-y", str(conf))
    assert (test.returncode, start.returncode) == (78, 78), (test.stderr, start.stderr)
    assert any(line.startswith("ERROR: " + expected) for line in errors(test)), test.stderr
    assert errors(start) == errors(test)
    # Logging where the configuration says (no -O): as a master started by an init script.
    with Server(good, tmp_path, flags=("-F",)) as server:
        (worker,) = server.wait_idle(1)
        server.conf_path.write_text(bad.replace("{tmp}", str(tmp_path))
                                    .replace("{sock}", str(tmp_path / "s")))
        mark = server.mark()
        server.signal(signal.SIGUSR2)
        server.wait_log(r"ERROR: reload failed: the new configuration is invalid; still serving "
                        r"with the current one", 30, since=mark)
        assert "ERROR: " + expected in server.log_text()[mark:]
        assert client.request(server.address, "/sleep?s=0", timeout=10).status == 200
        assert server.children() == [worker]
        assert server.proc.poll() is None


LAUNCHER = """\
import os, sys
if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), "broken")):
    raise ImportError("cannot import name 'serve' from 'fpm.master' (a half-done upgrade)")
from fpm.cli import main
sys.exit(main())
"""


def test_a_reload_into_code_that_cannot_start_is_refused_before_the_exec(tmp_path):
    """The exec cannot be undone: the old master first runs the command it would execute
    (the new code, once upgraded) on the new configuration."""
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    with Server(config(), tmp_path, command=[sys.executable, str(launcher)]) as server:
        (worker,) = server.wait_idle(1)
        (tmp_path / "broken").touch()
        mark = server.mark()
        server.signal(signal.SIGUSR2)
        server.wait_log(r"ERROR: reload failed: still serving with the current configuration$",
                        30, since=mark)
        assert ("ERROR: the new master would not start: it exits with code 1: ImportError: "
                "cannot import name 'serve' from 'fpm.master' (a half-done upgrade)"
                in server.log_text()[mark:])
        assert client.request(server.address, "/sleep?s=0", timeout=10).status == 200
        assert server.children() == [worker] and server.proc.poll() is None
        (tmp_path / "broken").unlink()  # the upgrade completed: the next reload goes ahead
        mark = server.mark()
        server.signal(signal.SIGUSR2)
        server.wait_log(r"NOTICE: ready to handle connections$", 30, since=mark)
        wait_for("the previous worker to go", lambda: worker not in server.children(), 10,
                 server)
        assert client.request(server.address, "/sleep?s=0", timeout=10).status == 200


def test_every_number_at_the_top_of_its_range_starts_and_serves(tmp_path):
    """The ranges are what the code holds: at their maxima the master starts, its worker
    serves, and a reload goes through (a config -t passes always starts)."""
    top = """\
log_limit = 2147483647
process_control_timeout = 2147483647
systemd_interval = 2147483647
emergency_restart_threshold = 2147483647
emergency_restart_interval = 2147483647
rlimit_core = 9223372036854775807
"""
    pool = """\
listen.backlog = 2147483647
pm.max_requests = 2147483647
pm.max_requests_jitter = 2147483647
pm.max_memory = 9223372036854775807
request_body_buffer_size = 9223372036854775807
request_body_max_size = 9223372036854775807
fastcgi.params_max = 2147483647
request_read_timeout = 2147483
request_queue_timeout = 2147483647
request_start_param = REQUEST_START
request_terminate_timeout = 2147483647
request_slowlog_timeout = 2147483647
request_slowlog_trace_depth = 2147483647
slowlog = {tmp}/slow.log
"""
    text = config(top, pool)
    conf = tmp_path / "test.conf"
    conf.write_text(text.replace("{tmp}", str(tmp_path)).replace("{sock}", str(tmp_path / "s")))
    test = run_fpm("-t", "-y", str(conf))
    assert test.returncode == 0, test.stderr
    with Server(text, tmp_path) as server:
        server.wait_idle(1)
        response = client.request(server.address, "/sleep?s=0", method="POST", body=b"x" * 70000,
                                  timeout=10)
        assert response.status == 200
        mark = server.mark()
        server.signal(signal.SIGUSR2)
        server.wait_log(r"NOTICE: ready to handle connections$", 30, since=mark)
        assert client.request(server.address, "/sleep?s=0", timeout=10).status == 200
        assert "exited with code" not in server.log_text()
