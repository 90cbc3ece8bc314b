"""Real framework apps nobody here wrote, through nginx → pyfpm: Flask and Django routing,
forms, uploads, cookies and streaming responses."""

import hashlib
import http.client
import json
import uuid

import importlib.util

import pytest

from tests.conftest import require


@pytest.fixture(autouse=True)
def frameworks():
    """Flask and Django are test extras: skip locally without them, fail under CI."""
    for name in ("flask", "django"):
        require(name, importlib.util.find_spec(name), "pip install -e .[test]")


def multipart(fields, files):
    """A multipart/form-data body: fields {name: value}, files {name: (filename, bytes)}."""
    boundary = uuid.uuid4().hex
    out = []
    for name, value in fields.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                   f"{value}\r\n".encode())
    for name, (filename, data) in files.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                   f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
                   + data + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


FORM = {"Content-Type": "application/x-www-form-urlencoded"}
UPLOADS = {"small": ("small.txt", b"tiny file\n"),
           "big": ("big.bin", bytes(range(256)) * 8192)}  # 2 MiB: spooled to disk by both


def check_uploads(result):
    for field, (filename, data) in UPLOADS.items():
        assert result["files"][field] == {"filename": filename, "length": len(data),
                                          "sha256": hashlib.sha256(data).hexdigest()}
    assert result["form"] == {"title": "holiday snaps"}


# --- Flask ---------------------------------------------------------------------------------

@pytest.fixture
def flask_site(served):
    front, _ = served(app="flask_app:app", mount="/flask", keep_conn=True)
    return front


def test_flask_routing(flask_site):
    assert flask_site.get("/flask/").body == b"flask index"
    r = flask_site.get("/flask/user/ada?x=1")
    assert r.json() == {"name": "ada", "script_root": "/flask", "path": "/user/ada",
                        "url": "http://%s/flask/user/ada?x=1" % flask_site.http_host()}
    assert flask_site.get("/flask/nowhere").status == 404


def test_flask_form(flask_site):
    r = flask_site.request("POST", "/flask/form", body="a=1&b=h%C3%A9llo+world", headers=FORM)
    assert r.json() == {"a": "1", "b": "héllo world"}


def test_flask_upload(flask_site):
    body, ctype = multipart({"title": "holiday snaps"}, UPLOADS)
    r = flask_site.request("POST", "/flask/upload", body=body, headers={"Content-Type": ctype})
    assert r.status == 200, r.body[:2000]
    check_uploads(r.json())


def test_flask_cookies(flask_site):
    r = flask_site.get("/flask/cookie/set")
    cookies = r.header_all("Set-Cookie")
    assert any(c.startswith("flavour=oatmeal") for c in cookies)
    assert any(c.startswith("session=abc123") and "HttpOnly" in c for c in cookies)
    r = flask_site.get("/flask/cookie/get", headers={"Cookie": "flavour=oatmeal; session=abc123"})
    assert r.json() == {"flavour": "oatmeal", "session": "abc123"}


def test_flask_streaming(flask_site):
    r = flask_site.get("/flask/stream?n=5000")
    assert r.status == 200
    assert r.header("Transfer-Encoding") == "chunked"
    assert r.body == "".join(f"line {i} of /stream\n" for i in range(5000)).encode()


def test_flask_chunked_upload_unbuffered(served):
    """nginx streams a chunked body with no CONTENT_LENGTH: Werkzeug reads it only when the
    server says the input is terminated (wsgi.input_terminated)."""
    front, _ = served(app="flask_app:app", request_buffering=False)
    data = bytes(range(256)) * 1000
    r = front.request("POST", "/raw", body=iter([data[:100000], data[100000:]]), chunked=True)
    assert r.json() == {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# --- Django --------------------------------------------------------------------------------

@pytest.fixture
def django_site(served):
    front, _ = served(app="django_project.wsgi:application", mount="/dj", keep_conn=True)
    return front


def test_django_routing(django_site):
    assert django_site.get("/dj/").body == b"django index"
    r = django_site.get("/dj/item/42/?q=1")
    assert r.json() == {"pk": 42, "path": "/dj/item/42/", "path_info": "/item/42/",
                        "script_name": "/dj",
                        "uri": "http://%s/dj/item/42/?q=1" % django_site.http_host()}
    assert django_site.get("/dj/item/x/").status == 404


def test_django_form(django_site):
    r = django_site.request("POST", "/dj/form/", body="tag=a&tag=b&name=%E2%9C%93", headers=FORM)
    assert r.json() == {"tag": ["a", "b"], "name": ["✓"]}


def test_django_upload(django_site):
    body, ctype = multipart({"title": "holiday snaps"}, UPLOADS)
    r = django_site.request("POST", "/dj/upload/", body=body, headers={"Content-Type": ctype})
    assert r.status == 200, r.body[:2000]
    check_uploads(r.json())


def test_django_cookies(django_site):
    cookies = django_site.get("/dj/cookie/set/").header_all("Set-Cookie")
    assert any(c.startswith("flavour=ginger") for c in cookies)
    assert any(c.startswith("session=xyz789") and "HttpOnly" in c for c in cookies)
    r = django_site.get("/dj/cookie/get/", headers={"Cookie": "flavour=ginger; session=xyz789"})
    assert r.json() == {"flavour": "ginger", "session": "xyz789"}


def test_django_streaming(django_site):
    conn = http.client.HTTPConnection("127.0.0.1", django_site.port, timeout=30)
    r = django_site.get("/dj/stream/?n=20000", conn=conn)
    assert r.status == 200
    assert r.body == "".join(f"row {i}\n" for i in range(20000)).encode()
    # the kept connection still works after a streamed response
    assert json.loads(django_site.get("/dj/item/7/", conn=conn).body)["pk"] == 7
    conn.close()
