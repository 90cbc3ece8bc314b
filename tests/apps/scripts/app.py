"""A script-mode page: answers with what it was given, as JSON."""
import json
import os
import sys

import _sibling  # from this directory: on sys.path while this module's top level runs

HERE = os.path.dirname(os.path.abspath(__file__))


def application(environ, start_response):
    keys = ("SCRIPT_NAME", "PATH_INFO", "SCRIPT_FILENAME", "QUERY_STRING", "DOCUMENT_URI",
            "REQUEST_URI")
    body = json.dumps({
        **{k: environ.get(k) for k in keys},
        "module": __name__,
        "sibling": _sibling.WORD,
        "dir_on_path": HERE in sys.path,
        "pid": os.getpid(),
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
