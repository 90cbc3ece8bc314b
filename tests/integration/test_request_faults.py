"""No request can end a worker: what the loop cannot take is refused (413) or its connection
dropped, logged, and the same worker serves the next request (issue 14, item 1)."""

import re

import pytest

from fpm import client as fc
from harness import wait_for
from tests.integration.test_bad_peers import raw_exchange, worker_of


@pytest.fixture
def server(pyfpm):
    """One worker: the request after a fault is served by the worker that met it."""
    return pyfpm(workers=1)


def post(content_length, body=b"abc"):
    """A POST /sha256 whose CONTENT_LENGTH param is ``content_length`` (bytes as sent)."""
    params = fc.build_params("/sha256", method="POST", body=body)
    params["CONTENT_LENGTH"] = content_length
    return fc.encode_request(params, body)


def response_to(server, request):
    return fc.Response.from_records(fc.iter_records(raw_exchange(server.address, request)))


def test_a_content_length_no_body_can_have_is_answered_413(server):
    """The issue's forty requests killed 28 workers and left the pool empty."""
    pid, mark = worker_of(server), server.mark()
    for _ in range(40):
        response = response_to(server, post(b"9" * 23))
        assert (response.status, response.body) == (413, b"The request body is too large.\n")
    server.wait_log(r'WARNING: \[pool www\] child %d: the body of "POST /sha256" is '
                    r'99999999999999999999999 bytes \(CONTENT_LENGTH\), more than any request '
                    r'body can be \(9223372036854775807 bytes\); answered 413' % pid, since=mark)
    # Just past a Py_ssize_t, and far past int()'s 4300 digits (shown cut).
    for value in (b"9223372036854775808", b"9" * 5000):
        response = response_to(server, post(value))
        assert response.status == 413
    server.wait_log(r"is 9999999999999999999\.\.\. \(5000 digits\) bytes", since=mark)
    # The largest a Py_ssize_t holds, or leading zeros, is a length like any other.
    for value in (b"9223372036854775807", b"0" * 30 + b"3"):
        response = response_to(server, post(value))
        assert response.status == 200 and b'"length": 3' in response.body
    assert server.request("/hello").status == 200
    assert server.children() == [pid], "no worker may die of a request"
    assert "exited" not in server.log_text()[mark:]


@pytest.mark.parametrize("value", [b"\xb2", b"\xb9\xb3"])
def test_digits_int_cannot_read_are_not_a_number(server, value):
    """'\\xb2' (superscript two) passes str.isdigit() but not int(): that ended the worker."""
    pid, mark = worker_of(server), server.mark()
    assert raw_exchange(server.address, post(value)) == b""
    server.wait_log(r"WARNING: \[pool www\] child %d: peer \S+: CONTENT_LENGTH '.+' is not a "
                    r"number; connection closed" % pid, since=mark)
    assert server.request("/hello").status == 200
    assert server.children() == [pid]


def test_what_a_dropped_connection_left_unsent_never_reaches_the_next(server):
    """A response cut by its peer leaves bytes in the worker's output buffer; the next
    connection's first reply (a GET_VALUES answer) went out with them, another client's
    response in front of its own."""
    pid = worker_of(server)
    with fc.Connection(server.address) as busy:
        busy.send(fc.encode_request(fc.build_params("/slow", params={"QUERY_STRING": "s=0.3"})))
        # Accepted after /slow (the backlog is first in, first out), and gone by then: the
        # worker's write() fails.
        with fc.connect(server.address) as sock:
            sock.sendall(fc.encode_request(fc.build_params("/write")))
        assert busy.read_response(1).status == 200
    server.wait_log(r"child %d: peer \S+: the peer hung up while the response was being "
                    r"sent; connection closed" % pid)
    answer = raw_exchange(server.address, fc.encode_record(
        fc.GET_VALUES, 0, fc.encode_pairs({"FCGI_MPXS_CONNS": ""})))
    assert b"written" not in answer
    assert list(fc.iter_records(answer)) == [
        (fc.GET_VALUES_RESULT, 0, fc.encode_pairs({"FCGI_MPXS_CONNS": "0"}))]
    assert server.children() == [pid]


def test_an_error_the_loop_does_not_expect_drops_the_connection_not_the_worker(pyfpm, tmp_path):
    """An app that leaves non-str values in its environ breaks the access log line, after
    the response went out: the connection goes, with the traceback; the worker stays."""
    server = pyfpm(app="fault_app:app", workers=1,
                   extra="access.log = %s\naccess.format = %%r %%s" % (tmp_path / "access.log"))
    pid, mark = worker_of(server), server.mark()
    response = server.request("/mangle")
    assert response.status == 200 and b'"pid": %d' % pid in response.body
    server.wait_log(r'ERROR: \[pool www\] child %d: peer \S+: unexpected error while serving '
                    r'"GET /mangle"; connection closed\n(.*\n)*.*TypeError' % pid, since=mark)
    assert server.request("/pid").status == 200
    assert server.children() == [pid]
    wait_for("the next request's access log line",
             lambda: re.search(r"^/pid 200$", (tmp_path / "access.log").read_text(), re.M))


def test_a_request_body_file_with_a_nul_is_refused_not_taken_for_an_app_error(server):
    """realpath() raised on it, and the log blamed the application, with a traceback."""
    pid, mark = worker_of(server), server.mark()
    response = server.request("/sha256", method="POST",
                              params={"REQUEST_BODY_FILE": "/var/lib/nginx/body/x\0y"})
    assert (response.status, response.body) == (403, b"Access denied.\n")
    server.wait_log(r"WARNING: \[pool www\] child %d: REQUEST_BODY_FILE '/var/lib/nginx/body/"
                    r"x\\x00y' holds a NUL byte; request refused" % pid, since=mark)
    assert "raised an exception" not in server.log_text()[mark:]
    assert server.children() == [pid]
