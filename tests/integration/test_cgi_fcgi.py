"""libfcgi's `cgi-fcgi -bind -connect`, the classic PHP-FPM health check, against pyfpm.
cgi-fcgi sends its whole environment as PARAMS and its stdin as STDIN (peers.md §6.2)."""

import hashlib
import json
import subprocess

import pytest

from tests.conftest import find_program


def cgi_fcgi(address, env, body=b""):
    """Run cgi-fcgi with exactly `env`; returns (exit code, CGI headers dict, body, stderr)."""
    binary = find_program("cgi-fcgi")
    env = {"PATH": "/usr/bin:/bin", **env}
    if body:
        env["CONTENT_LENGTH"] = str(len(body))
    proc = subprocess.run([binary, "-bind", "-connect", str(address)], input=body, env=env,
                          capture_output=True, timeout=30)
    head, _, payload = proc.stdout.partition(b"\r\n\r\n")
    headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n") if line)
    return proc.returncode, headers, payload, proc.stderr


def full_env(method, uri, **extra):
    path, _, query = uri.partition("?")
    return {"REQUEST_METHOD": method, "SCRIPT_NAME": path, "SCRIPT_FILENAME": path,
            "REQUEST_URI": uri, "QUERY_STRING": query, "SERVER_NAME": "localhost",
            "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
            "GATEWAY_INTERFACE": "CGI/1.1", **extra}


@pytest.mark.parametrize("listen", ["unix", "tcp"])
def test_classic_health_check(pyfpm, listen):
    """The php-fpm health check: only SCRIPT_NAME, SCRIPT_FILENAME and REQUEST_METHOD."""
    server = pyfpm(listen=listen, app="wsgi_app:raw_app")
    code, headers, body, _ = cgi_fcgi(server.address, {
        "SCRIPT_NAME": "/hello", "SCRIPT_FILENAME": "/hello", "REQUEST_METHOD": "GET"})
    assert code == 0
    assert headers.get("Status", "200 OK").startswith("200")
    assert body == b"hello world"


@pytest.mark.parametrize("listen", ["unix", "tcp"])
def test_environ_and_query(pyfpm, listen):
    server = pyfpm(listen=listen)
    code, headers, body, _ = cgi_fcgi(server.address, full_env("GET", "/environ?a=1&b=2",
                                                               HTTP_X_PROBE="yes"))
    assert code == 0
    assert headers["Content-Type"] == "application/json"
    env = json.loads(body)
    assert (env["PATH_INFO"], env["QUERY_STRING"], env["HTTP_X_PROBE"]) == ("/environ", "a=1&b=2", "yes")


def test_post_body(pyfpm):
    server = pyfpm()
    data = bytes(range(256)) * 4000
    code, _, body, _ = cgi_fcgi(server.address, full_env("POST", "/sha256"), data)
    assert code == 0
    assert b'"sha256": "%s"' % hashlib.sha256(data).hexdigest().encode() in body


def test_error_status_and_next_request(pyfpm):
    server = pyfpm(workers=1)
    _, headers, _, _ = cgi_fcgi(server.address, full_env("GET", "/raise-before"))
    assert headers["Status"].startswith("500")
    code, _, body, _ = cgi_fcgi(server.address, full_env("GET", "/hello"))
    assert (code, body) == (0, b"hello world")
