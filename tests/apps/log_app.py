"""Test WSGI app for the logging tests: routes that print, fail, burn CPU, answer a status.

    /print?text=...&stream=stdout|stderr&end=   prints text + end (default a newline);
                                  &flush=1      then flushes (a line without its newline)
                                  &sleep=S      after sleeping S seconds
                                  &raw=1        with os.write, past sys.stdout/sys.stderr
    /mixed                                      "msg 1 - " to stdout, "msg 2 - " and "msg 3"
                                                to stderr, no newline (php-src's test)
    /errors?text=...&end=&times=N               writes text (N times) + end to wsgi.errors;
                                  &finish=1     after fpm.finish_request()
    /log?text=...                               logs a WARNING through a handler made at import
    /thread-fail                                a thread that raises
    /fail                                       raises (an ERROR line in the error log)
    /exit                                       sys.exit(3)
    /status?code=404                            answers that status
    /cpu?ms=50                                  spins that long on the CPU
    anything else                               200, text/plain, X-Test: yes, the body read
"""

import logging
import os
import sys
import threading
import time
from urllib.parse import parse_qs

import fpm

# A handler made at import, as logging.basicConfig() or Django's LOGGING make one: its stream
# is the sys.stderr of the process that imports this module (the master, with preload).
_logger = logging.getLogger("log_app")
_logger.addHandler(logging.StreamHandler())
_logger.propagate = False


def _query(environ):
    pairs = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)  # end= is ""
    return {k: v[-1] for k, v in pairs.items()}


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    q = _query(environ)
    status = "200 OK"
    if path == "/print":
        time.sleep(float(q.get("sleep", "0")))
        stream = sys.stderr if q.get("stream") == "stderr" else sys.stdout
        text = q.get("text", "") + q.get("end", "\n")
        if q.get("raw"):
            os.write(stream.fileno(), text.encode())
        else:
            stream.write(text)
        if q.get("flush"):
            stream.flush()
    elif path == "/mixed":
        sys.stdout.write("msg 1 - ")
        sys.stderr.write("msg 2 - ")
        sys.stderr.write("msg 3")
    elif path == "/errors":
        if q.get("finish"):
            start_response("200 OK", [("Content-Type", "text/plain")])
            fpm.finish_request()
        environ["wsgi.errors"].write(q.get("text", "") * int(q.get("times", "1"))
                                     + q.get("end", "\n"))
        if q.get("finish"):
            return [b"ok\n"]
    elif path == "/log":
        _logger.warning(q.get("text", ""))
    elif path == "/thread-fail":
        def fail():
            raise ValueError("log_app's thread failed")
        thread = threading.Thread(target=fail, name="failing")
        thread.start()
        thread.join()
    elif path == "/fail":
        raise RuntimeError("log_app failed on purpose")
    elif path == "/exit":
        sys.exit(3)
    elif path == "/status":
        code = int(q.get("code", "200"))
        status = "%d %s" % (code, {201: "Created", 204: "No Content", 404: "Not Found",
                                   500: "Internal Server Error"}.get(code, "Other"))
    elif path == "/cpu":
        end = time.process_time() + int(q.get("ms", "50")) / 1000
        while time.process_time() < end:
            pass
    body = environ["wsgi.input"].read()
    start_response(status, [("Content-Type", "text/plain"), ("X-Test", "yes"),
                            ("Content-Length", str(len(body) + 3))])
    return [b"ok\n" + body]
