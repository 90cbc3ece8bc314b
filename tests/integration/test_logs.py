"""The logs of a real master: error_log (file, stderr, syslog) and log_level, the access log
through nginx (default format, every code, JSON lines, suppress_path), captured worker output
(decorated or not), and USR1 reopening every log under load without losing a line."""
import base64
import contextlib
import json
import os
import re
import select
import signal
import stat
import syslog
import threading
import time


import harness
from harness import wait_for
from fpm import client
from tests.conftest import pyfpm_config

APP = "log_app:app"
CLF = r"\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}"
STAMP = r"\[\d{2}-[A-Z][a-z]{2}-\d{4} \d{2}:\d{2}:\d{2}\] "

def config(*, global_="", pool="", listen="127.0.0.1:{port}", workers=2):
    return pyfpm_config(listen=listen, workers=workers, app="log_app:app", log_level="",
                        global_=global_, extra=pool)


@contextlib.contextmanager
def running(conf, tmp_path, ready="stderr", flags=("-F", "-O")):
    """A master; ``ready``: where it says it is ready (its stderr, a file), or None when it
    does not say it (log_level above notice, syslog) and its workers are waited for instead.
    Without -O a foreground master logs where error_log says."""
    server = harness.Server(conf, tmp_path, flags=flags)
    try:
        server.start(wait_ready=ready == "stderr")
        if ready is None:
            server.wait_idle()
        elif ready != "stderr":
            wait_for("ready to handle connections in %s" % ready, lambda: ready.exists() and
                     "ready to handle connections" in ready.read_text(), 10)
        yield server
    finally:
        server.stop()


def read_lines(path):
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def wait_lines(path, count, timeout=5.0):
    """The file's lines once there are ``count`` of them (workers write after answering)."""
    lines = wait_for("%d lines in %s" % (count, path),
                     lambda: len(read_lines(path)) >= count and read_lines(path), timeout)
    time.sleep(0.05)  # and no more than that
    assert len(read_lines(path)) == count, read_lines(path)
    return lines


# --- error_log and log_level -------------------------------------------------------------------

def test_error_log_file_gets_php_fpm_lines_and_is_private(tmp_path):
    log = tmp_path / "error.log"
    with running(config(global_="error_log = %s" % log), tmp_path, log, ("-F",)) as server:
        text = log.read_text()
        assert re.search(r"^%sNOTICE: fpm is running, pid %d$" % (STAMP, server.pid), text, re.M)
        assert re.search(r"^%sNOTICE: ready to handle connections$" % STAMP, text, re.M)
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
        assert server.log_text() == ""  # nothing on the terminal once launched
        assert server.request("/fail").status == 500
        wait_for("the worker's ERROR line", lambda: "log_app failed on purpose" in log.read_text())
        assert re.search(r'^%sERROR: \[pool www\] child \d+: the application raised an exception '
                         r'on "GET /fail"$' % STAMP, log.read_text(), re.M)


def test_error_log_stderr(pyfpm):
    server = pyfpm(config())
    assert re.search(r"^%sNOTICE: fpm is running, pid %d$" % (STAMP, server.pid),
                     server.log_text(), re.M)


def test_log_level_warning_hides_notices_and_keeps_errors(tmp_path):
    with running(config(global_="log_level = warning", workers=1), tmp_path, None) as server:
        assert server.request("/fail").status == 500
        server.wait_log(r"ERROR: \[pool www\] child \d+: the application raised an exception")
        assert "NOTICE" not in server.log_text() and "DEBUG" not in server.log_text()


def test_log_level_debug_shows_child_started(pyfpm):
    server = pyfpm(config(global_="log_level = debug", workers=1))
    server.wait_log(r"^%sDEBUG: \[pool www\] child \d+ started$" % STAMP)


def received(sock, pattern, seen, timeout=5.0):
    """The first datagram matching ``pattern``; every datagram read goes into ``seen``."""
    regex = re.compile(pattern)
    for line in seen:
        if regex.search(line):
            return line
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([sock], [], [], 0.05)[0]:
            line = sock.recv(65536).decode(errors="replace")
            seen.append(line)
            if regex.search(line):
                return line
    raise AssertionError("no syslog line /%s/ in:\n%s" % (pattern, "\n".join(seen)))


def test_error_log_syslog_ident_facility_and_priority_per_level(dev_log, tmp_path):
    conf = config(global_="error_log = syslog\nsyslog.ident = pyfpm-it\n"
                          "syslog.facility = local5\nlog_level = notice",
                  pool="catch_workers_output = yes", workers=1)
    seen = []
    with running(conf, tmp_path, None, ("-F",)) as server:
        pri = lambda level: r"^<%d>" % (syslog.LOG_LOCAL5 | level)
        received(dev_log, pri(syslog.LOG_NOTICE) + r"\w{3} [ \d]\d [\d:]{8} pyfpm-it\[%d\]: "
                 r"\[NOTICE\] fpm is running, pid %d$" % (server.pid, server.pid), seen)
        (pid,) = server.wait_idle(1)
        assert server.request("/fail").status == 500
        # The master writes every line, the worker's at the worker's level, as PHP-FPM's
        # master writes what its children say.
        received(dev_log, pri(syslog.LOG_ERR) + r".* pyfpm-it\[%d\]: \[ERROR\] \[pool www\] "
                 r"child %d: the application raised an exception" % (server.pid, pid), seen)
        server.request("/print?text=hello+syslog")
        received(dev_log, pri(syslog.LOG_WARNING) + r".* pyfpm-it\[%d\]: \[WARNING\] \[pool www\] "
                 r'child %d said into stdout: "hello syslog"$' % (server.pid, pid), seen)
    assert not [line for line in seen if "DEBUG" in line]


def test_config_test_reports_a_bad_access_format(tmp_path):
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(config(pool='access.format = "%R %{bogus}d"').replace("{port}", "9"))
    result = harness.run_fpm("-t", "-y", str(conf))
    assert result.returncode == 78
    assert re.search(r"ERROR: \[%s:10\] \[pool www\] access.format: invalid value "
                     r"'%%R %%\{bogus\}d' \(expected a format of PHP-FPM's %% codes; only "
                     r"'seconds', 'milli', 'milliseconds', 'micro' or 'microseconds' are allowed "
                     r"as a modifier for %%d \('bogus'\)\)$" % re.escape(str(conf)),
                     result.stderr, re.M), result.stderr


# --- the access log through nginx ------------------------------------------------------------

def access_server(pyfpm, tmp_path, pool_lines, workers=2):
    log = tmp_path / "access.log"
    server = pyfpm(config(pool="access.log = %s\n%s" % (log, pool_lines), workers=workers))
    return server, log


def test_access_log_default_format(pyfpm, nginx, tmp_path):
    server, log = access_server(pyfpm, tmp_path, "")
    front = nginx(server.address)
    assert front.get("/hello?x=1").status == 200
    assert front.get("/status?code=404").status == 404
    (first, second) = wait_lines(log, 2)
    assert re.fullmatch(r'127\.0\.0\.1 -  %s "GET /hello" 200' % CLF, first)
    assert re.fullmatch(r'127\.0\.0\.1 -  %s "GET /status" 404' % CLF, second)
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


EVERY_CODE = ('%% %C %{user}C %{system}C %d %{milli}d %{micro}d %{HTTP_HOST}e %f %l %m %M '
              '%{kilo}M %{mega}M %n %{X-Test}o %p %P %q %Q %r %R %s %t %{%Y}t %T %u')


def test_access_log_every_code(pyfpm, nginx, tmp_path):
    server, log = access_server(pyfpm, tmp_path, "access.format = \"%s\"" % EVERY_CODE)
    front = nginx(server.address)
    auth = "Basic " + base64.b64encode(b"bob:secret").decode()
    r = front.request("POST", "/echo?a=1", body=b"hello",
                      headers={"Host": "example.test", "Authorization": auth})
    assert r.status == 200
    (line,) = wait_lines(log, 1)
    m = re.fullmatch(
        r"%% (?P<cpu>\d+\.\d\d) (?P<user>\d+\.\d\d) (?P<sys>\d+\.\d\d) (?P<s>\d+\.\d{3}) "
        r"(?P<ms>\d+\.\d{3}) (?P<us>\d+) example\.test - 5 POST (?P<mem>\d+) (?P<kb>\d+) "
        r"(?P<mb>\d+) www yes (?P<pid>\d+) (?P<ppid>\d+) a=1 \? /echo 127\.0\.0\.1 200 "
        r"(?P<t>%s) (?P<year>\d{4}) (?P<T>%s) bob" % (CLF, CLF), line)
    assert m, line
    assert int(m["pid"]) in server.children() and int(m["ppid"]) == server.pid
    assert abs(float(m["ms"]) - int(m["us"]) / 1000) < 0.001
    assert abs(float(m["s"]) - int(m["us"]) / 1e6) < 0.0006
    assert int(m["kb"]) == int(m["mem"]) // 1024 and int(m["mb"]) == int(m["mem"]) // 2**20
    assert int(m["mb"]) >= 5  # a Python worker's peak RSS
    assert m["year"] == m["t"][7:11]


def test_access_log_cpu_of_a_busy_request(pyfpm, nginx, tmp_path):
    server, log = access_server(pyfpm, tmp_path, 'access.format = "%r %C %{milli}d"', workers=1)
    front = nginx(server.address)
    front.get("/hello")
    time.sleep(0.3)  # the wait between requests is not the next request's CPU
    front.get("/print?text=x&sleep=0.2")
    front.get("/cpu?ms=200")
    _, idle, busy = wait_lines(log, 3)
    _, cpu, ms = busy.split()
    # 200 ms of CPU: most of the request's time, less if the machine is busy elsewhere.
    assert float(ms) >= 200 and 20 <= float(cpu) <= 110, busy
    # 200 ms asleep: a request's time, little of its CPU.
    _, cpu, ms = idle.split()
    assert float(ms) >= 200 and float(cpu) < 20, idle


def test_access_log_json_lines(pyfpm, nginx, tmp_path):
    fmt = "%R %t %m %r %q %s %{micro}d %{HTTP_HOST}e %{X-Test}o %n"
    server, log = access_server(pyfpm, tmp_path, 'access.format = "%s"\naccess.json = yes' % fmt)
    front = nginx(server.address)
    front.get("/caf%C3%A9?q=1", headers={"Host": "example.test"})
    (line,) = wait_lines(log, 1)
    obj = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d", obj.pop("time"))
    assert isinstance(obj.pop("duration_us"), int)
    assert obj == {"remote_addr": "127.0.0.1", "method": "GET", "uri": "/caf%C3%A9",
                   "query": "q=1", "status": 200, "env": {"HTTP_HOST": "example.test"},
                   "headers": {"X-Test": "yes"}, "pool": "www"}


def test_access_suppress_path(pyfpm, nginx, tmp_path):
    server, log = access_server(pyfpm, tmp_path, 'access.format = "%m %r%Q%q %s"\n'
                                                 "access.suppress_path[] = /ping\n"
                                                 "access.suppress_path[] = /health")
    front = nginx(server.address)
    front.get("/ping")                       # left out
    front.request("HEAD", "/health")         # left out
    front.get("/ping?verbose=1")             # a query: logged
    front.request("POST", "/ping", body=b"x")  # a body: logged
    front.get("/status?code=404")
    front.get("/pings")                      # not the exact path: logged
    assert wait_lines(log, 4) == ["GET /ping?verbose=1 200", "POST /ping 200",
                                  "GET /status?code=404 404", "GET /pings 200"]


# --- catch_workers_output --------------------------------------------------------------------

def test_worker_output_decorated(pyfpm):
    server = pyfpm(config(pool="catch_workers_output = yes", workers=1))
    (pid,) = server.wait_idle(1)
    server.request("/print?text=to+stdout")
    server.request("/print?text=to+stderr&stream=stderr")
    server.wait_log(r'^%sWARNING: \[pool www\] child %d said into stdout: "to stdout"$'
                    % (STAMP, pid))
    server.wait_log(r'^%sWARNING: \[pool www\] child %d said into stderr: "to stderr"$'
                    % (STAMP, pid))


def test_worker_output_wrapped_at_log_limit(pyfpm):
    server = pyfpm(config(global_="log_limit = 512", pool="catch_workers_output = yes",
                          workers=1))
    (pid,) = server.wait_idle(1)
    server.request("/print?text=" + "x" * 1200)
    pattern = r'^%sWARNING: \[pool www\] child %d said into stdout: "(x+)"$' % (STAMP, pid)
    wait_for("3 wrapped lines", lambda: len(re.findall(pattern, server.log_text(), re.M)) == 3)
    lines = [x for x in server.log_text().splitlines() if re.match(pattern, x)]
    assert all(len(x) + 1 <= 512 for x in lines)
    assert sum(len(re.match(pattern, x)[1]) for x in lines) == 1200


def test_worker_output_undecorated_is_raw_and_whole(pyfpm):
    server = pyfpm(config(global_="log_limit = 512", pool="catch_workers_output = yes\n"
                                                          "decorate_workers_output = no",
                          workers=1))
    server.wait_idle(1)
    record = json.dumps({"event": "order", "items": list(range(200))})  # > log_limit
    server.request("/print?text=" + client_quote(record))
    server.wait_log("^" + re.escape(record) + "$")


def test_worker_output_unbuffered_and_undecorated_passes_through(pyfpm):
    server = pyfpm(config(global_="log_buffering = no", pool="catch_workers_output = yes\n"
                                                            "decorate_workers_output = no",
                          workers=1))
    server.wait_idle(1)
    server.request("/print?text=progress:+&end=&flush=1")
    server.wait_log(r"progress: \Z")  # no newline added, nothing waits for one
    server.request("/print?text=done")
    server.wait_log(r"^progress: done$")


def test_worker_output_hidden_by_log_level_error(tmp_path):
    conf = config(global_="log_level = error", pool="catch_workers_output = yes", workers=1)
    with running(conf, tmp_path, None) as server:
        server.request("/print?text=invisible")
        server.request("/fail")
        server.wait_log("the application raised an exception")
        assert "invisible" not in server.log_text()


def client_quote(text):
    from urllib.parse import quote
    return quote(text, safe="")


# --- USR1 under load ---------------------------------------------------------------------------

class Load:
    """Clients sending FastCGI requests with a unique query each, until stopped; what
    completed (the whole response received)."""

    def __init__(self, address, clients=4, max_requests=20000):
        self.address = address
        self.done: list[str] = []
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.max_requests = max_requests
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(clients)]

    def _run(self, n):
        i = 0
        while not self.stop.is_set() and len(self.done) < self.max_requests:
            query = "c%d-%d" % (n, i)
            i += 1
            try:
                r = client.request(self.address, "/hello?" + query, timeout=10)
            except (OSError, client.FastCGIError) as e:
                self.failed.append("%s: %s" % (query, e))
                continue
            (self.done if r.status == 200 else self.failed).append(query)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_usr1_reopens_every_log_without_losing_a_line(tmp_path):
    access, error = tmp_path / "access.log", tmp_path / "error.log"
    conf = config(global_="error_log = %s" % error, listen="{sock}", workers=3,
                  pool="access.log = %s\naccess.format = \"%%R %%q %%s\"" % access)
    with running(conf, tmp_path, error, ("-F",)) as server:
        server.wait_idle(3)
        assert server.request("/fail").status == 500  # a worker's line in the old error log
        with Load(server.address) as load:
            wait_for("some load", lambda: len(load.done) > 200, 10)
            os.rename(access, tmp_path / "access.log.1")
            os.rename(error, tmp_path / "error.log.1")
            before = len(load.done)
            wait_for("lines in the moved file", lambda: len(load.done) > before + 100, 10)
            server.signal(signal.SIGUSR1)
            wait_for("the reopened error log",
                     lambda: error.exists() and "error log file re-opened" in error.read_text())
            after = len(load.done)
            wait_for("requests after the reopen", lambda: len(load.done) > after + 500, 10)
        assert load.failed == []
        assert server.request("/fail").status == 500  # a worker's line in the new error log
        wait_for("the worker's line in the new error log",
                 lambda: "log_app failed on purpose" in error.read_text())
        # %R is "-" on a unix socket, as in PHP-FPM.
        expected = sorted(["- %s 200" % q for q in load.done] + ["-  500"] * 2)
        old_path = tmp_path / "access.log.1"
        wait_for("every access line",
                 lambda: len(read_lines(old_path)) + len(read_lines(access)) >= len(expected))
        time.sleep(0.1)  # and no more
        old, new = read_lines(old_path), read_lines(access)
        assert sorted(old + new) == expected
        assert len(old) > 300 and len(new) > 500  # both files took lines
        assert "access log file re-opened" in error.read_text()
        assert "log_app failed on purpose" in (tmp_path / "error.log.1").read_text()
        # Nobody was restarted for it: no worker exited.
        assert " exited " not in error.read_text()
