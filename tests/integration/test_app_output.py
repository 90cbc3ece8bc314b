"""Where what an app says ends up, with a real master (and real nginx where the web server's
log matters): wsgi.errors (wsgi_errors = both | log | server, a Flask traceback in both
logs by default), exceptions that escape the app, sys.stderr without catch_workers_output,
and captured output whose last line ends with its request (php-src's
log-bwd-multiple-msgs-stdout-stderr)."""
import importlib.util
import re

import pytest

from fpm import client
from harness import wait_for
from tests.conftest import require
from tests.integration.test_logs import STAMP, config


def said_head(pid, into):
    """A worker's decorated line up to its opening quote, as a regex."""
    return r'^%sWARNING: \[pool www\] child %d said into %s: "' % (STAMP, pid, re.escape(into))


def said(pid, into, text):
    return said_head(pid, into) + re.escape(text) + '"$'


def errors_head(pid, request):
    return said_head(pid, 'wsgi.errors on "%s"' % request)


def errors_line(pid, request, text):
    return errors_head(pid, request) + re.escape(text) + '"$'


def count(server, pattern):
    return len(re.findall(pattern, server.log_text(), re.M))


# --- the response ------------------------------------------------------------------------------

def test_a_response_over_a_list_goes_out_with_its_end_in_one_write(pyfpm):
    """An app whose response iterates over a list (Django's HttpResponse does) has no chunk
    to wait for: the chunks go out with END_REQUEST in one write, so a host killed
    mid-request has sent all of it or nothing (and nginx sends nothing on to the client
    before the end is there). Its close() takes 0.5 s: the first bytes to arrive must
    hold the end already."""
    server = pyfpm(app="wsgi_app:raw_app", workers=1)
    with client.connect(server.address) as sock:
        sock.sendall(client.encode_request(client.build_params("/list-response?close=0.5")))
        records = client.RecordParser().feed(sock.recv(65536))
    assert [t for t, _, _ in records[-2:]] == [client.STDOUT, client.END_REQUEST], records
    stdout = b"".join(content for t, _, content in records if t == client.STDOUT)
    assert stdout.endswith(b"\r\n\r\none two"), records


# --- wsgi.errors ---------------------------------------------------------------------------------

@pytest.fixture
def flask_site(served):
    """Flask behind nginx; Flask writes a failing view's traceback to wsgi.errors."""
    require("flask", importlib.util.find_spec("flask"), "pip install -e .[test]")

    def start(wsgi_errors=None):
        extra = "" if wsgi_errors is None else "wsgi_errors = " + wsgi_errors
        front, server = served(app="flask_app:app", mount="/flask", workers=1, extra=extra)
        front.expected_errors.append("FastCGI sent in stderr")
        (pid,) = server.wait_idle(1)
        assert front.get("/flask/boom").status == 500
        return front, server, pid
    return start


def nginx_got_it(front):
    wait_for("the traceback in nginx's error log",
             lambda: "ValueError: flask view failed" in front.error_log())
    assert re.search(r"\[error\] .* FastCGI sent in stderr: .*ERROR in app: Exception on "
                     r"/boom \[GET\]", front.error_log())


def test_a_flask_traceback_reaches_both_logs_by_default(flask_site):
    front, server, pid = flask_site()
    server.wait_log(errors_line(pid, "GET /flask/boom", "ValueError: flask view failed"))
    lines = [x for x in server.log_text().splitlines() if "said into wsgi.errors" in x]
    # One log line per line Flask wrote, each naming pool, pid and request.
    head = errors_head(pid, "GET /flask/boom")
    assert re.match(head + r'\[.*\] ERROR in app: Exception on /boom \[GET\]"$',
                    lines[0]), lines
    assert re.match(errors_line(pid, "GET /flask/boom", "Traceback (most recent call last):"),
                    lines[1]), lines
    assert all(re.match(head, x) for x in lines), lines
    nginx_got_it(front)


def test_wsgi_errors_log_keeps_it_from_the_web_server(flask_site):
    front, server, pid = flask_site("log")
    server.wait_log(errors_line(pid, "GET /flask/boom", "ValueError: flask view failed"))
    assert front.get("/flask/").body == b"flask index"  # nginx has logged the request before
    assert "FastCGI sent in stderr" not in front.error_log()


def test_wsgi_errors_server_keeps_it_from_the_error_log(flask_site):
    front, server, pid = flask_site("server")
    nginx_got_it(front)
    assert "wsgi.errors" not in server.log_text()


def test_wsgi_errors_lines_end_with_their_request_and_are_wrapped_at_log_limit(pyfpm):
    server = pyfpm(config(global_="log_limit = 512", pool="wsgi_errors = log", workers=1))
    (pid,) = server.wait_idle(1)
    assert server.request("/errors?text=half&end=").stderr == b""  # log only
    assert server.request("/errors?text=two%0Alines").status == 200
    server.wait_log(errors_line(pid, "GET /errors?text=half&end=", "half"))
    server.wait_log(errors_line(pid, "GET /errors?text=two%0Alines", "two"))
    server.wait_log(errors_line(pid, "GET /errors?text=two%0Alines", "lines"))
    server.request("/errors?text=y&times=1200")
    pattern = errors_head(pid, "GET /errors?text=y&times=1200") + '(y+)"$'
    wrapped = lambda: [x for x in server.log_text().splitlines() if re.match(pattern, x)]
    wait_for("the long line, wrapped",
             lambda: sum(len(re.match(pattern, x)[1]) for x in wrapped()) == 1200)
    assert len(wrapped()) > 1 and all(len(x.encode()) + 1 <= 512 for x in wrapped())


def test_wsgi_errors_after_finish_request_go_to_the_error_log(pyfpm):
    """The web server has the whole response: the log is the only place left."""
    server = pyfpm(config(pool="wsgi_errors = server", workers=1))
    (pid,) = server.wait_idle(1)
    r = server.request("/errors?text=too+late&finish=1")
    assert (r.status, r.body, r.stderr) == (200, b"", b"")
    server.wait_log(errors_line(pid, "GET /errors?text=too+late&finish=1", "too late"))


# --- exceptions that escape the app ------------------------------------------------------------

def test_an_uncaught_exception_is_logged_from_the_apps_own_frames(pyfpm):
    server = pyfpm(config(workers=1))
    (pid,) = server.wait_idle(1)
    assert server.request("/fail?x=1").status == 500
    server.wait_log(r"ERROR: \[pool www\] child %d: RuntimeError: log_app failed on purpose$"
                    % pid)
    text = server.log_text()
    # Each line of the traceback names the worker: none can pass for another's.
    own = r"%sERROR: \[pool www\] child %d: " % (STAMP, pid)
    head = re.search(r'^%sthe application raised an exception on "GET /fail\?x=1"\n'
                     r'%sTraceback \(most recent call last\):\n'
                     r'%s  File "(.*)", line \d+, in app$' % (own, own, own), text, re.M)
    assert head and head[1].endswith("tests/apps/log_app.py"), text
    assert "fpm/_worker" not in text  # the loop's own frames are left out


def test_sys_exit_in_the_app_is_logged_with_its_request(pyfpm):
    server = pyfpm(config(workers=1))
    (pid,) = server.wait_idle(1)
    with pytest.raises((OSError, client.FastCGIError)):
        server.request("/exit", timeout=5)  # the worker exits, as the app asked
    server.wait_log(r'^%sERROR: \[pool www\] child %d: the application raised an exception on '
                    r'"GET /exit"$' % (STAMP, pid))
    server.wait_log(r"^%sERROR: \[pool www\] child %d: SystemExit: 3$" % (STAMP, pid))
    server.wait_log(r"child %d exited with code 3" % pid)


# --- sys.stdout and sys.stderr without catch_workers_output --------------------------------------

def test_without_catch_workers_output_stderr_reaches_the_log_and_stdout_does_not(pyfpm):
    server = pyfpm(config(workers=1))
    (pid,) = server.wait_idle(1)
    server.request("/print?text=dropped")
    server.request("/print?text=dropped+too&stream=stderr&raw=1")  # past sys.stderr
    server.request("/print?text=kept&stream=stderr")
    server.request("/print?text=half&stream=stderr&end=")
    server.request("/print?text=other+half&stream=stderr&end=")
    server.wait_log(said(pid, "stderr", "kept"))
    server.wait_log(said(pid, "stderr", "half"))
    server.wait_log(said(pid, "stderr", "other half"))
    assert "dropped" not in server.log_text()


def test_a_threads_traceback_is_not_lost(pyfpm):
    server = pyfpm(config(workers=1))
    (pid,) = server.wait_idle(1)
    assert server.request("/thread-fail").status == 200
    server.wait_log(said(pid, "stderr", "ValueError: log_app's thread failed"))
    assert re.search(said(pid, "stderr", "Exception in thread failing:"), server.log_text(),
                     re.M)


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no_preload"])
def test_a_logging_handler_made_at_import_reaches_the_log(pyfpm, preload):
    """With preload the handler is made in the master, on the master's sys.stderr."""
    server = pyfpm(config(pool="preload = %s" % ("yes" if preload else "no"), workers=1))
    (pid,) = server.wait_idle(1)
    server.request("/log?text=from+the+handler")
    server.wait_log(said(pid, "stderr", "from the handler"))


# --- captured output ends with its request -------------------------------------------------------

def test_each_requests_partial_lines_end_with_it(pyfpm):
    """php-src's log-bwd-multiple-msgs-stdout-stderr: output without a newline is logged at
    the end of its request, never joined with the next request's, and nothing waits for the
    worker to exit."""
    server = pyfpm(config(pool="catch_workers_output = yes", workers=1))
    (pid,) = server.wait_idle(1)
    for _ in range(2):
        assert server.request("/mixed").status == 200
    out, err = said(pid, "stdout", "msg 1 - "), said(pid, "stderr", "msg 2 - msg 3")
    wait_for("two lines on each stream", lambda: count(server, out) == count(server, err) == 2)
    # A partial line the app flushed reached the master before its request ended.
    server.request("/print?text=progress...&end=&flush=1&stream=stderr")
    server.request("/print?text=done&stream=stderr")
    server.wait_log(said(pid, "stderr", "progress..."))
    server.wait_log(said(pid, "stderr", "done"))
    assert server.children() == [pid]


def test_worker_last_words_are_logged_when_it_exits(pyfpm):
    """Bytes written past sys.stderr, without newline, wait for it; a worker's exit ends
    them with PHP-FPM's ', pipe is closed'."""
    server = pyfpm(config(pool="catch_workers_output = yes\npm.max_requests = 1", workers=1))
    (pid,) = server.wait_idle(1)
    server.request("/print?text=last+words&end=&raw=1&stream=stderr")
    server.wait_log(r'^%sWARNING: \[pool www\] child %d said into stderr: "last words", '
                    r'pipe is closed$' % (STAMP, pid))


def syscalls_written(pid):
    """The write system calls ``pid`` has made (/proc/PID/io syscw)."""
    with open("/proc/%d/io" % pid) as f:
        return next(int(x.split()[1]) for x in f if x.startswith("syscw:"))


def test_a_request_that_prints_nothing_writes_nothing_more(pyfpm):
    """Unlike PHP-FPM's marker after every request, the end of a request writes to the
    capture pipes only when the request wrote to them."""
    costs = []
    for pool in ("catch_workers_output = yes", "catch_workers_output = no"):
        server = pyfpm(config(pool=pool, workers=1))
        (pid,) = server.wait_idle(1)
        server.request("/hello")
        before = syscalls_written(pid)
        for _ in range(20):
            server.request("/hello")
        costs.append(syscalls_written(pid) - before)
        server.stop()
    assert costs[0] == costs[1], costs
