"""One worker, many requests: each request's environ holds exactly its own params. The worker
reuses the strs of the previous request's names and values by position (fpm/_codec.pyx
_latin1_at), so a value of the same length, a shorter or longer request, or the same names
in another order must never show an earlier request's bytes."""
import json

import pytest

from fpm import client

# (header, value) lists sent one after the other to the same worker.
SEQUENCE = [
    [("X-A", "aaaa"), ("X-B", "bbbb"), ("X-C", "cccc")],
    [("X-A", "AAAA"), ("X-B", "bbbb"), ("X-C", "cccC")],  # same lengths, other bytes
    [("X-A", "aaaa")],                                     # fewer pairs
    [("X-C", "cccc"), ("X-A", "aaaa"), ("X-B", "bbbb"), ("X-D", "dddd"), ("X-E", "")],
    [("X-A", "a\x7f~a"), ("X-B", "b" * 300)],                # longer values
    [("X-A", "aaaa"), ("X-B", "bbbb"), ("X-C", "cccc")],
]


def sent_headers(environ):
    return {k: v for k, v in environ.items() if k.startswith("HTTP_X_")}


@pytest.mark.parametrize("keep_conn", [False, True], ids=["new-connection", "keep-conn"])
def test_each_request_sees_only_its_own_params(pyfpm, keep_conn):
    server = pyfpm(workers=1)
    with client.Connection(server.address, 10) as conn:
        for _ in range(3):
            for headers in SEQUENCE:
                if keep_conn:
                    response = conn.request("/environ", headers=headers, keep_conn=True)
                else:
                    response = client.request(server.address, "/environ", headers=headers)
                assert response.status == 200, response.body
                want = {"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers}
                assert sent_headers(json.loads(response.body)) == want


def test_no_param_adds_or_replaces_a_key_of_the_pools_own_namespaces(pyfpm):
    """fpm.* and wsgi.* keys are the pool's: a param so named (a misconfigured fastcgi_param,
    a FastCGI client of its own) is dropped, whether its name is new to the worker or at a
    position where the previous request had an ordinary one."""
    server = pyfpm(workers=1)
    ordinary = [("HTTP_X_A", "1"), ("HTTP_X_B", "2"), ("HTTP_X_C", "3")]
    forged = [("HTTP_X_A", "1"), ("fpm.role", "admin"), ("wsgi.extra", "x"),
              ("fpm.version", "0.0-forged"), ("wsgi.url_scheme", "gopher"), ("HTTP_X_C", "3")]
    for params in (ordinary, forged, ordinary, forged, forged):
        environ = json.loads(client.request(server.address, "/environ", params=params).body)
        assert not {"fpm.role", "wsgi.extra"} & set(environ)
        assert environ["wsgi.url_scheme"] == "http"
        assert environ["HTTP_X_A"] == "1" and environ["HTTP_X_C"] == "3"
        if params is ordinary:
            assert environ["HTTP_X_B"] == "2"
    from fpm import __version__
    assert environ["fpm.version"] == __version__
