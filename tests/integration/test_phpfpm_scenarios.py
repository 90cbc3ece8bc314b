"""Scenarios of php-src's sapi/fpm/tests that have a Python meaning, against the real master:
the contract PHP-FPM operators rely on. Each test names the php-src test it ports.

bug77023   an idle worker that ignores SIGQUIT is killed on the next tick, not kept for ever
bug68381   log_level = warning: a start, a request and a stop log nothing
bug68458   the same without pm.start_servers (its default is a notice, not a warning)
GH-8885    access.log = /proc/self/fd/2 (or /dev/stderr, /dev/stdout, /proc/self/fd/1) keeps
           writing where that stream went at start, across USR1 and USR2 (and, beyond the
           php-src test, in a daemon across a reload)
bug72573   httpoxy: a Proxy header never reaches the app as HTTP_PROXY
(PEP 3333) wsgi.input ends at CONTENT_LENGTH, whatever the web server sends after it
bug74083, bug76601   a storm of USR2 neither kills the master nor leaves a worker behind
reload-uses-sigkill-as-last-measure   old workers that block QUIT and TERM are killed
bug68423   pools of each pm side by side, each answering its own ping
"""
import hashlib
import json
import os
import re
import signal
import threading
import time

import subprocess

import pytest

import harness
from harness import Server, wait_for
from fpm import client
from tests.conftest import global_section, pool_section, pyfpm_config

# Blocks SIGQUIT in every worker that imports it, as bug77023's script does with
# pcntl_sigprocmask(): the worker's graceful stop never arrives.
DEAF_APP = """\
import os, signal, time

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGQUIT})


def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        time.sleep(1.5)
    body = b"%d" % os.getpid()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

# A plain app whose /slow announces itself (a file) before it sleeps.
APP = """\
import os, time


def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        open(os.path.join(os.path.dirname(__file__), "started"), "w").close()
        time.sleep(3)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""

def config_for(pool, app="app:app", level="notice", global_extra="", error_log="stderr"):
    """One pool [www]; ``pool``: its pm lines and more."""
    return pyfpm_config(listen="{sock}", pm=None, workers=None, mode="", app=app,
                        python_path="{tmp}", log_level=level,
                        global_="error_log = %s\n%s" % (error_log, global_extra), extra=pool)


def server_for(tmp_path, pool, app="app:app", source=APP, level="notice", global_extra="",
               error_log="stderr", **kwargs):
    """A harness.Server of one pool [www] (``pool``: its pm lines and more), its app
    written from ``source``; ``kwargs`` go to the Server."""
    (tmp_path / (app.partition(":")[0] + ".py")).write_text(source)
    return Server(config_for(pool, app, level, global_extra, error_log), tmp_path, **kwargs)


def in_thread(server, uri):
    """A request in a thread: (thread, {"r": response} or {"error": exception})."""
    result = {}

    def run():
        try:
            result["r"] = server.request(uri, timeout=20)
        except (OSError, client.FastCGIError) as e:
            result["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


# --- bug77023: an idle stop that the worker ignores ------------------------------------------

DYNAMIC = """\
pm = dynamic
pm.max_children = 2
pm.start_servers = 1
pm.min_spare_servers = 1
pm.max_spare_servers = 1
"""
ONDEMAND = """\
pm = ondemand
pm.max_children = 1
pm.process_idle_timeout = 1s
"""


@pytest.mark.parametrize("pool, size", [(DYNAMIC, 1), (ONDEMAND, 0)], ids=["dynamic", "ondemand"])
def test_idle_worker_ignoring_sigquit_is_killed_on_the_next_tick(tmp_path, pool, size):
    """dynamic: a slow request makes the pool fork its second worker; once both are idle
    the oldest is stopped. ondemand: the worker forked for a request is stopped once idle
    for 1 s. Either way the worker blocks SIGQUIT, so a tick later it gets SIGKILL, with
    PHP-FPM's warning, and is not replaced: the pool is back to its size."""
    with server_for(tmp_path, pool, "deaf:app", DEAF_APP) as server:
        if size:
            first = server.wait_idle(1)[0]
        thread, result = in_thread(server, "/slow")
        thread.join(20)
        assert result["r"].status == 200
        victim = first if size else int(result["r"].body)
        line = server.wait_log(r"^.* WARNING: \[pool www\] child %d exited on signal 9 "
                               r"\(SIGKILL\) after \d+\.\d{6} seconds from start$" % victim, 6)
        text = server.log_text()
        assert re.search(r"NOTICE: \[pool www\] child %d still alive, sending SIGKILL$"
                         % victim, text[:line.start()], re.M), text
        wait_for("the pool back to %d worker(s)" % size,
                 lambda: len(server.children()) == size, 2, server)
        survivors = server.children()
        mark = server.mark()
        time.sleep(2.2)  # two more ticks: nothing more is stopped, nothing started
        assert server.children() == survivors
        assert " started" not in server.log_text()[mark:]
        if size:
            assert server.request("/").status == 200


# --- bug68381, bug68458: a quiet log at log_level = warning ---------------------------------

STOPS = {
    "QUIT": lambda server: server.signal(signal.SIGQUIT),
    "TERM": lambda server: server.signal(signal.SIGTERM),
    "INT": lambda server: server.signal(signal.SIGINT),
    # Ctrl-C in a terminal: the whole process group gets it, the workers too.
    "ctrl-c": lambda server: os.killpg(server.pid, signal.SIGINT),
}


@pytest.mark.parametrize("start_servers", ["pm.start_servers = 2", ""],
                         ids=["bug68381", "bug68458-no-start-servers"])
@pytest.mark.parametrize("stop", STOPS)
def test_log_level_warning_start_request_stop_log_nothing(tmp_path, start_servers, stop):
    pool = ("pm = dynamic\npm.max_children = 5\n%s\npm.min_spare_servers = 1\n"
            "pm.max_spare_servers = 3\n" % start_servers)
    server = server_for(tmp_path, pool, level="warning")
    try:
        server.start(wait_ready=False)  # "ready to handle connections" is a notice
        server.wait_idle(2)
        assert server.request("/").status == 200
        STOPS[stop](server)
        assert server.wait_exit(5) == 0
        assert server.log_text() == ""
    finally:
        server.stop()


def test_log_level_warning_reload_logs_nothing(tmp_path):
    """USR2: the old workers, told to finish, exit without a word at warning level."""
    server = server_for(tmp_path, "pm = static\npm.max_children = 2\n", level="warning")
    try:
        server.start(wait_ready=False)
        old = set(server.wait_idle(2))
        server.signal(signal.SIGUSR2)
        wait_for("the new workers", lambda: (len(server.children()) == 2
                                             and not old & set(server.children())), 10, server)
        assert server.request("/").status == 200
        server.signal(signal.SIGQUIT)
        assert server.wait_exit(5) == 0
        assert server.log_text() == ""
    finally:
        server.stop()


def test_stop_cutting_requests_short_logs_the_exits_at_debug(tmp_path):
    """QUIT with a request in flight and process_control_timeout = 1: the master says it
    escalates (a notice); the worker's exit is what was asked, a debug line."""
    server = server_for(tmp_path, "pm = static\npm.max_children = 1\n", level="debug",
                        global_extra="process_control_timeout = 1")
    with server:
        worker = server.wait_idle(1)[0]
        thread, result = in_thread(server, "/slow")
        wait_for("the slow request", (tmp_path / "started").exists, 5, server)
        server.signal(signal.SIGQUIT)
        assert server.wait_exit(5) == 0
        thread.join(10)
        assert result["r"].status == 503
        text = server.log_text()
        assert "NOTICE: 1 child(ren) still alive, sending SIGTERM\n" in text
        assert re.search(r"DEBUG: \[pool www\] child %d exited on signal 15 \(SIGTERM\) after "
                         % worker, text), text
        assert "WARNING" not in text, text


def test_a_crash_during_a_stop_stays_a_warning(tmp_path):
    with server_for(tmp_path, "pm = static\npm.max_children = 1\n") as server:
        worker = server.wait_idle(1)[0]
        thread, result = in_thread(server, "/slow")
        wait_for("the slow request", (tmp_path / "started").exists, 5, server)
        server.signal(signal.SIGQUIT)
        server.wait_log(r"Finishing \.\.\.")
        os.kill(worker, signal.SIGSEGV)
        assert server.wait_exit(5) == 0
        thread.join(10)
        assert re.search(r"WARNING: \[pool www\] child %d exited on signal 11 \(SIGSEGV"
                         % worker, server.log_text()), server.log_text()


# --- GH-8885: an access log on a standard stream ---------------------------------------------

STREAM_POOL = "pm = static\npm.max_children = 2\naccess.log = %s\n"


def wait_text(path, text, timeout=10.0, count=1):
    """The file's text once ``text`` occurs ``count`` times in it."""
    return wait_for("%d x %r in %s" % (count, text, path),
                    lambda: path.exists() and path.read_text().count(text) >= count
                    and path.read_text(), timeout)


@pytest.mark.parametrize("path, fd", [("/proc/self/fd/2", 2), ("/dev/stderr", 2),
                                      ("/dev/stdout", 1), ("/proc/self/fd/1", 1)])
def test_access_log_on_a_stream_stays_there_across_usr1_and_usr2(tmp_path, path, fd):
    """The master is launched with stdout and stderr to files, and logs errors to a third:
    once launched, its fd 2 is the error log, so reopening /proc/self/fd/2 on USR1 would
    send the access lines there (GH-8885). Every line must land in the stream's file."""
    error_log = tmp_path / "error.log"
    out = tmp_path / "stdout.log"
    server = server_for(tmp_path, STREAM_POOL % path, error_log=error_log, flags=("-F",),
                        stdout=out)
    stream = out if fd == 1 else server.log_path
    try:
        server.start(wait_ready=False)
        wait_text(error_log, "ready to handle connections")
        steps = [("/before", None), ("/after-usr1", signal.SIGUSR1),
                 ("/after-usr2", signal.SIGUSR2), ("/after-usr2-usr1", signal.SIGUSR1)]
        reopened = reloaded = 0
        for uri, sig in steps:
            if sig == signal.SIGUSR1:
                server.signal(sig)
                reopened += 1
                wait_text(error_log, "NOTICE: access log file re-opened", count=reopened)
            elif sig == signal.SIGUSR2:
                server.signal(sig)
                reloaded += 1
                # The new master's workers serve once the old ones are told to finish.
                wait_text(error_log, "child(ren) of the previous configuration finish")
            assert server.request(uri).status == 200
            wait_text(stream, '"GET %s" 200' % uri)
        errors = error_log.read_text()
        assert '"GET /' not in errors, errors
    finally:
        server.stop()


def test_access_log_on_stdout_of_a_daemon_survives_a_reload(tmp_path):
    """A daemon's fd 1 becomes /dev/null once it has launched; the re-executed master of a
    reload starts with that. The access log keeps the stdout pyfpm was started with."""
    (tmp_path / "app.py").write_text(APP)
    out, error_log = tmp_path / "stdout.log", tmp_path / "error.log"
    address = tmp_path / "fpm.sock"
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(harness.substitute(
        config_for(STREAM_POOL % "/dev/stdout", global_extra="pid = {tmp}/fpm.pid",
                   error_log=error_log), {"tmp": tmp_path, "sock": address}))
    with open(out, "wb") as stdout:
        launcher = subprocess.run(harness.COMMAND + ["-R", "-D", "-y", str(conf)],
                                  stdin=subprocess.DEVNULL, stdout=stdout,
                                  stderr=subprocess.PIPE, env=harness.fpm_env(), timeout=10)
    assert launcher.returncode == 0, launcher.stderr
    daemon = int((tmp_path / "fpm.pid").read_text())
    address = str(address)
    try:
        assert client.request(address, "/first").status == 200
        wait_text(out, '"GET /first" 200')
        os.kill(daemon, signal.SIGUSR2)
        wait_text(error_log, "child(ren) of the previous configuration finish")
        assert client.request(address, "/reloaded").status == 200
        wait_text(out, '"GET /reloaded" 200')
    finally:
        os.kill(daemon, signal.SIGTERM)
        try:
            wait_for("the daemon gone", lambda: not harness.alive(daemon), 5)
        finally:
            if harness.alive(daemon):
                os.kill(daemon, signal.SIGKILL)


# --- bug72573: httpoxy ----------------------------------------------------------------------

def test_a_proxy_header_never_reaches_the_app(served):
    """A client's "Proxy:" header, which nginx passes as HTTP_PROXY, would be taken for the
    proxy to use by HTTP libraries (CVE-2016-5385); the other headers pass."""
    front, server = served(workers=1)
    seen = front.get("/environ", headers={"Proxy": "http://evil:8080", "Foo": "BAR"}).json()
    assert "HTTP_PROXY" not in seen and seen["HTTP_FOO"] == "BAR"
    # Straight over FastCGI, as php-src's test sends it, on a kept connection.
    with client.Connection(server.address) as conn:
        for _ in range(2):
            response = conn.request("/environ", params={"HTTP_PROXY": "BADPROXY",
                                                        "HTTP_FOO": "BAR"})
            seen = json.loads(response.body)
            assert "HTTP_PROXY" not in seen and seen["HTTP_FOO"] == "BAR"


# --- PEP 3333: wsgi.input ends at CONTENT_LENGTH ---------------------------------------------

@pytest.mark.parametrize("sent, declared", [(100, 0), (100, 50), (200 * 1024, 100 * 1024)],
                         ids=["0-of-100", "50-of-100", "spooled-100K-of-200K"])
def test_wsgi_input_ends_at_content_length(pyfpm, sent, declared):
    """A body longer than its CONTENT_LENGTH: the app reads exactly CONTENT_LENGTH bytes,
    the rest is read and dropped, and the kept connection serves the next request. (A
    64K request_body_buffer_size sends the 100 KiB body to a spool file.)"""
    server = pyfpm(workers=1, extra="request_body_buffer_size = 64K")
    body = bytes(range(256)) * (sent // 256) + bytes(sent % 256)
    with client.Connection(server.address) as conn:
        for _ in range(2):
            response = conn.request("/sha256", method="POST", body=body,
                                    params={"CONTENT_LENGTH": str(declared)})
            assert response.status == 200, response.body
            seen = json.loads(response.body)
            assert seen == {"length": declared, "content_length": str(declared),
                            "sha256": hashlib.sha256(body[:declared]).hexdigest()}
        assert conn.request("/hello").body == b"hello world"


# --- reloads: a storm of USR2, and old workers that ignore QUIT and TERM ---------------------

@pytest.mark.parametrize("catch", ["no", "yes"])
def test_a_storm_of_reloads_leaves_one_master_and_no_stray_worker(tmp_path, catch):
    """bug74083, bug76601: 25 USR2 at 0 to 24 ms apart, then one more. The master is still
    there with its pid, and once the last reload is done the pool has its static size: no
    worker of an earlier generation missed the QUIT that retires it (with
    process_control_timeout = 10 nothing would have killed it in time). A retired worker's
    log socket and output pipes reach their end before it is reaped: a reload in between
    still passes them on."""
    pool = ("pm = static\npm.max_children = 4\nping.path = /ping\nping.response = pong\n"
            "catch_workers_output = %s\n" % catch)
    with server_for(tmp_path, pool, global_extra="process_control_timeout = 10") as server:
        server.wait_idle(4)
        for interval in range(25):
            server.signal(signal.SIGUSR2)
            time.sleep(interval / 1000)
        server.wait_log(r"Reloading in progress \.\.\.")
        mark = server.mark()
        time.sleep(0.5)
        server.signal(signal.SIGUSR2)
        server.wait_log(r"reloading: execvp", 10, since=mark)
        wait_for("4 workers of the last generation",
                 lambda: len(server.children()) == 4 and server.request("/ping").body == b"pong",
                 8, server)
        assert server.proc.poll() is None
        server.signal(signal.SIGTERM)
        assert server.wait_exit(5) == 0


def test_reload_kills_old_workers_that_block_quit_and_term(tmp_path):
    """reload-uses-sigkill-as-last-measure: process_control_timeout = 1, and the old
    worker blocks SIGQUIT and SIGTERM: a second after its QUIT it gets TERM, a second
    later KILL. The new worker serves meanwhile; the kill was asked for, so it is no
    warning."""
    source = DEAF_APP.replace("{signal.SIGQUIT}", "{signal.SIGQUIT, signal.SIGTERM}")
    pool = "pm = static\npm.max_children = 1\nping.path = /ping\nping.response = pong\n"
    with server_for(tmp_path, pool, "deaf:app", source,
                    global_extra="process_control_timeout = 1") as server:
        old = server.wait_idle(1)[0]
        assert server.request("/").body == str(old).encode()
        server.signal(signal.SIGUSR2)
        server.wait_log(r"NOTICE: \[pool www\] child %d still alive, sending SIGTERM$" % old, 5)
        assert server.request("/ping").body == b"pong"
        server.wait_log(r"NOTICE: \[pool www\] child %d still alive, sending SIGKILL$" % old, 3)
        wait_for("the old worker gone", lambda: old not in server.children(), 2, server)
        assert len(server.children()) == 1 and server.request("/ping").body == b"pong"
        assert "WARNING" not in server.log_text(), server.log_text()


# --- bug68423: one pool per pm ---------------------------------------------------------------

def test_pools_of_every_pm_side_by_side(tmp_path):
    (tmp_path / "app.py").write_text(APP)
    pools = {"pool_dynamic": "pm = dynamic\npm.max_children = 5\npm.start_servers = 2\n"
                             "pm.min_spare_servers = 1\npm.max_spare_servers = 3",
             "pool_ondemand": "pm = ondemand\npm.max_children = 2\n"
                              "pm.process_idle_timeout = 10",
             "pool_static": "pm = static\npm.max_children = 2"}
    text = "\n".join([global_section("", "error_log = stderr")]
                      + [pool_section(name, listen="{tmp}/%s.sock" % name, pm=None, workers=None,
                                      mode="", app="app:app", python_path="{tmp}",
                                      extra="ping.path = /ping\nping.response = pong-%s\n%s"
                                      % (name[5:], pm))
                         for name, pm in pools.items()])
    with Server(text, tmp_path) as server:
        for name in pools:
            response = client.request(str(tmp_path / ("%s.sock" % name)), "/ping")
            assert response.body == b"pong-" + name[5:].encode()
        server.signal(signal.SIGTERM)
        assert server.wait_exit(5) == 0
        assert server.log_text().splitlines()[-1].endswith("NOTICE: exiting, bye-bye!")
