"""Test WSGI app for the logging tests: routes that print, fail, burn CPU, answer a status.

    /print?text=...&stream=stdout|stderr&end=   prints text + end (default a newline);
                                  &flush=1      then flushes (a line without its newline)
                                  &sleep=S      after sleeping S seconds
    /fail                                       raises (an ERROR line in the error log)
    /status?code=404                            answers that status
    /cpu?ms=50                                  spins that long on the CPU
    anything else                               200, text/plain, X-Test: yes, the body read
"""

import sys
import time
from urllib.parse import parse_qs


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
        stream.write(q.get("text", "") + q.get("end", "\n"))
        if q.get("flush"):
            stream.flush()
    elif path == "/fail":
        raise RuntimeError("log_app failed on purpose")
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
