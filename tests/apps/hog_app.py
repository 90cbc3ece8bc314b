"""An app whose first request to /hog starts a thread that takes every descriptor its
worker frees, for good: the worker's accept() then fails with EMFILE (a leak, as apps have
them). Any other path answers with the worker's pid."""
import os
import threading
import time

held = []
full = threading.Event()


def _grab():
    while True:
        try:
            held.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            full.set()
            time.sleep(0.001)


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/hog" and not full.is_set():
        threading.Thread(target=_grab, daemon=True).start()
        full.wait(5)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d" % os.getpid()]
