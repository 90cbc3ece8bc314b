"""What `pyfpm -t` refuses, start-up refuses in the same words (php-src's config-test-* cases
and issue 13's): a slowlog or access log that cannot be created, a unix socket in a missing
directory, process.max below the workers the pools start, a misspelt directive. And the
slowlog, opened with the other logs at start, kept across USR1 and a reload."""
import re
import signal

import pytest

from fpm import client
from tests.conftest import APPS
from tests.harness import Server, run_fpm, wait_for

POOL = """\
[global]
{global_}
[www]
listen = {listen}
pm = static
pm.max_children = 1
app = slow_app:app
python_path = {apps}
{pool}
"""


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
    conf.write_text(POOL.format(global_=global_, listen=tmp_path / "www.sock", apps=APPS,
                                pool=pool.format(tmp=tmp_path)))
    test = run_fpm("-t", "-y", str(conf))
    start = run_fpm("-F", "-O", "-y", str(conf))
    assert (test.returncode, start.returncode) == (78, 78), (test.stderr, start.stderr)
    assert error.format(tmp=tmp_path) in errors(test)
    assert errors(start) == errors(test)
    assert errors(test)[-1] == "ERROR: FPM initialization failed"


def test_a_unix_socket_in_a_missing_directory_is_named_by_both(tmp_path):
    conf = tmp_path / "pyfpm.conf"
    sock = tmp_path / "run/pyfpm/www.sock"
    conf.write_text(POOL.format(global_="", listen=sock, apps=APPS, pool=""))
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
    server = Server(POOL.format(global_="", listen="{sock}", apps=APPS, pool=SLOW), tmp_path)
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
