"""fpm.demo: a valid WSGI app that shows interpreter, pool and request, all escaped."""
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

from fpm import config as fpm_config
from fpm import demo


def call(environ):
    statuses = []
    result = validator(demo.app)(environ, lambda status, headers, exc=None: statuses.append((status, headers)))
    try:
        body = b"".join(result)
    finally:
        result.close()
    return statuses[0], body.decode()


def test_page():
    pool = fpm_config.loads("[www]\nlisten = /tmp/x.sock\npm = static\npm.max_children = 3\n"
                            "app = fpm.demo:app\n").pools[0]
    environ = {"QUERY_STRING": "a=<b>"}
    setup_testing_defaults(environ)
    environ["fpm.pool"] = pool
    environ["HTTP_X_EVIL"] = "<script>alert(1)</script>"
    (status, headers), body = call(environ)
    assert status == "200 OK"
    assert ("Content-Type", "text/html; charset=utf-8") in headers
    assert "<script>" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "a=&lt;b&gt;" in body
    assert "<th>pm_max_children</th><td>3</td>" in body
    assert "<th>listen_mode</th><td>0660</td>" in body
    assert "<th>sys.path</th>" in body and "<h2>Interpreter</h2>" in body


def test_without_pool():
    environ = {"QUERY_STRING": ""}
    setup_testing_defaults(environ)
    _, body = call(environ)
    assert "not provided by the server" in body
