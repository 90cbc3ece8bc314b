"""fpm.client against byte strings built by hand from the FastCGI spec, and its CLI."""

import socket
import struct
import threading

import pytest

from fpm import client as c


def header(type, rid, clen, plen):
    return bytes([1, type, rid >> 8, rid & 255, clen >> 8, clen & 255, plen, 0])


# --- encoding --------------------------------------------------------------------------------

def test_record_is_padded_to_eight():
    assert c.encode_record(c.STDIN, 1, b"abc") == header(5, 1, 3, 5) + b"abc" + b"\0" * 5


def test_record_of_eight_bytes_has_no_padding():
    assert c.encode_record(c.STDIN, 1, b"12345678") == header(5, 1, 8, 0) + b"12345678"


def test_empty_record_is_a_bare_header():
    assert c.encode_record(c.PARAMS, 1, b"") == b"\x01\x04\x00\x01\x00\x00\x00\x00"


def test_explicit_padding_and_big_request_id():
    assert c.encode_record(c.STDOUT, 0x1234, b"x", padding=0) == b"\x01\x06\x12\x34\x00\x01\x00\x00x"
    assert c.encode_record(c.STDOUT, 1, b"x", padding=255) == header(6, 1, 1, 255) + b"x" + b"\0" * 255


def test_record_content_over_65535_is_refused():
    assert len(c.encode_record(c.STDIN, 1, b"a" * 65535)) == 8 + 65535 + 1
    with pytest.raises(ValueError, match="65536 bytes exceeds 65535"):
        c.encode_record(c.STDIN, 1, b"a" * 65536)


def test_begin_request():
    assert c.encode_begin(1) == b"\x01\x01\x00\x01\x00\x08\x00\x00" + b"\x00\x01\x00" + b"\0" * 5
    assert c.encode_begin(2, c.FILTER, keep_conn=True) == \
        b"\x01\x01\x00\x02\x00\x08\x00\x00" + b"\x00\x03\x01" + b"\0" * 5


def test_pairs_with_one_byte_lengths():
    assert c.encode_pairs({"A": "bc"}) == b"\x01\x02Abc"
    assert c.encode_pairs([(b"K", b"")]) == b"\x01\x00K"
    assert c.encode_pairs([("N" * 127, "v")]) == b"\x7f\x01" + b"N" * 127 + b"v"


def test_pairs_with_four_byte_lengths():
    assert c.encode_pairs([("N" * 128, "v")]) == b"\x80\x00\x00\x80\x01" + b"N" * 128 + b"v"
    assert c.encode_pairs([("n", "v" * 70000)]) == b"\x01\x80\x01\x11\x70n" + b"v" * 70000


def test_pairs_keep_order_and_encode_text_as_utf8():
    assert c.encode_pairs([("B", "é"), ("A", "1")]) == b"\x01\x02B\xc3\xa9\x01\x01A1"


def test_stream_ends_with_an_empty_record():
    assert c.encode_stream(c.STDIN, 1, b"") == header(5, 1, 0, 0)
    assert c.encode_stream(c.STDIN, 1, b"hi") == header(5, 1, 2, 6) + b"hi" + b"\0" * 6 + header(5, 1, 0, 0)


def test_stream_over_65535_is_split():
    data = bytes(range(256)) * 300  # 76800 bytes
    out = c.encode_stream(c.STDOUT, 1, data)
    assert out[:8] == header(6, 1, 65535, 1)
    rest = out[8 + 65535 + 1:]
    assert rest[:8] == header(6, 1, 76800 - 65535, 7)
    assert rest[8:8 + 11265] == data[65535:]
    assert rest[8 + 11265 + 7:] == header(6, 1, 0, 0)


def test_stream_split_at_given_sizes_then_at_65535():
    records = list(c.iter_records(c.encode_stream(c.PARAMS, 1, b"abcdefghij", [1, 3])))
    assert records == [(4, 1, b"a"), (4, 1, b"bcd"), (4, 1, b"efghij"), (4, 1, b"")]
    records = list(c.iter_records(c.encode_stream(c.PARAMS, 1, b"abcdefg", 3)))
    assert [r[2] for r in records] == [b"abc", b"def", b"g", b""]
    with pytest.raises(ValueError):
        c.encode_stream(c.PARAMS, 1, b"abc", [0])


def test_request_as_nginx_sends_it():
    out = c.encode_request({"A": "1"}, b"body", keep_conn=True)
    assert out == (b"\x01\x01\x00\x01\x00\x08\x00\x00\x00\x01\x01\0\0\0\0\0"
                   + header(4, 1, 4, 4) + b"\x01\x01A1\0\0\0\0" + header(4, 1, 0, 0)
                   + header(5, 1, 4, 4) + b"body\0\0\0\0" + header(5, 1, 0, 0))


def test_request_with_params_split_inside_a_length():
    params = {"N" * 200: "v"}
    out = c.encode_request(params, params_chunk=[2])
    records = list(c.iter_records(out))
    assert records[1] == (4, 1, b"\x80\x00")  # cut in the middle of the 4-byte name length
    assert b"".join(r[2] for r in records if r[0] == c.PARAMS) == c.encode_pairs(params)


def test_body_goes_in_32k_records_like_nginx():
    records = list(c.iter_records(c.encode_request({}, b"x" * 70000)))
    assert [len(r[2]) for r in records if r[0] == c.STDIN] == [32768, 32768, 4464, 0]


# --- decoding --------------------------------------------------------------------------------

def test_decode_pairs():
    data = b"\x01\x02Abc" + b"\x80\x00\x00\x80\x00" + b"N" * 128 + b"\x01\x80\x00\x01\x00n" + b"\xff" * 256
    assert c.decode_pairs(data) == [(b"A", b"bc"), (b"N" * 128, b""), (b"n", b"\xff" * 256)]


@pytest.mark.parametrize("data", [b"\x01", b"\x80\x00", b"\x01\x05Aabc", b"\x01\x80\x00\x00"])
def test_decode_truncated_pairs(data):
    with pytest.raises(c.FastCGIError, match="truncated|runs past"):
        c.decode_pairs(data)


def test_parser_skips_padding_and_works_byte_by_byte():
    data = header(6, 1, 3, 5) + b"abc" + b"PPPPP" + header(3, 1, 8, 0) + bytes(8)
    parser, got = c.RecordParser(), []
    for i in range(len(data)):
        got += parser.feed(data[i:i + 1])
    assert got == [(6, 1, b"abc"), (3, 1, bytes(8))]
    assert parser.buffered == 0


def test_parser_rejects_bad_version():
    with pytest.raises(c.FastCGIError, match="version 2"):
        c.RecordParser().feed(b"\x02\x06\x00\x01\x00\x00\x00\x00")


def test_parser_names_an_http_answer():
    with pytest.raises(c.FastCGIError, match="speaks HTTP, not FastCGI"):
        c.RecordParser().feed(b"HTTP/1.1 400 Bad Request\r\n")


def test_iter_records_rejects_a_truncated_record():
    with pytest.raises(c.FastCGIError, match="truncated record: 9 bytes"):
        list(c.iter_records(header(6, 1, 3, 5) + b"a"))


def end_request(rid=1, app_status=0, protocol_status=0):
    return header(3, rid, 8, 0) + struct.pack("!IB3x", app_status, protocol_status)


def test_response_from_records():
    stdout = b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nnope"
    data = (header(6, 1, 30, 2) + stdout[:30] + b"\0\0" + header(7, 1, 4, 4) + b"warn\0\0\0\0"
            + header(6, 1, len(stdout) - 30, 0) + stdout[30:] + header(6, 1, 0, 0) + end_request(app_status=3))
    r = c.Response.from_records(c.iter_records(data))
    assert (r.status, r.reason, r.body, r.stderr, r.app_status, r.protocol_status) == \
        (404, "Not Found", b"nope", b"warn", 3, 0)
    assert r.headers == [("Content-Type", "text/plain"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    assert r.header("content-type") == "text/plain" and r.stdout_closed


def test_response_without_the_empty_stdout_record_is_flagged():
    data = header(6, 1, 8, 0) + b"X: y\n\nhi" + end_request()
    r = c.Response.from_records(c.iter_records(data))
    assert (r.status, r.headers, r.body, r.stdout_closed) == (200, [("X", "y")], b"hi", False)


def test_response_with_a_protocol_status_has_no_cgi_part():
    r = c.Response.from_records(c.iter_records(end_request(2, 0, c.CANT_MPX_CONN)), request_id=2)
    assert (r.status, r.protocol_status, r.body) == (502, c.CANT_MPX_CONN, b"")
    assert c.Response.from_records([(3, 1, struct.pack("!IB3x", 0, c.OVERLOADED))]).status == 503


@pytest.mark.parametrize("records, message", [
    ([(6, 2, b"x")], "request id 2"),
    ([(10, 1, b"")], "unexpected record type 10"),
    ([(6, 1, b"Status: 200 OK\r\n\r\n")], "before END_REQUEST"),
    ([(6, 1, b""), (6, 1, b"late"), (3, 1, bytes(8))], "after the empty STDOUT"),
    ([(6, 1, b"Status: 200 OK\r\n"), (3, 1, bytes(8))], "no end of CGI headers"),
    ([(6, 1, b"Status: OK\r\n\r\n"), (3, 1, bytes(8))], "bad CGI Status"),
    ([(6, 1, b"garbage\r\n\r\n"), (3, 1, bytes(8))], "without a colon"),
    ([(3, 1, b"\0\0")], "END_REQUEST body of 2 bytes"),
])
def test_bad_responses(records, message):
    with pytest.raises(c.FastCGIError, match=message):
        c.Response.from_records(records)


def test_cgi_location_without_status_is_a_redirect():
    assert c.parse_cgi(b"Location: /x\n\n")[:2] == (302, "Found")


# --- params and I/O against a scripted server ---------------------------------------------

def test_build_params_like_nginx():
    p = c.build_params("/a/b?x=1", "post", b"abc", [("Host", "example.org:8080"), ("X-A", "1"),
                                                    ("x-a", "2"), ("Cookie", "a=1"), ("Cookie", "b=2"),
                                                    ("Content-Type", "text/plain")],
                       {"SCRIPT_NAME": "/a"})
    assert p["REQUEST_METHOD"] == "POST" and p["REQUEST_URI"] == "/a/b?x=1"
    assert (p["DOCUMENT_URI"], p["QUERY_STRING"], p["SCRIPT_NAME"]) == ("/a/b", "x=1", "/a")
    assert (p["CONTENT_LENGTH"], p["CONTENT_TYPE"], p["HTTP_CONTENT_TYPE"]) == ("3", "text/plain", "text/plain")
    assert (p["HTTP_X_A"], p["HTTP_COOKIE"]) == ("1, 2", "a=1; b=2")
    assert (p["SERVER_NAME"], p["HTTP_HOST"], p["GATEWAY_INTERFACE"]) == ("example.org", "example.org:8080", "CGI/1.1")
    assert c.build_params()["CONTENT_LENGTH"] == ""


def serve_once(sock, replies):
    """A scripted peer: for each request read until the empty STDIN record, then send a reply."""
    def run():
        conn, _ = sock.accept()
        parser = c.RecordParser()
        with conn:
            for reply in replies:
                records = []
                while not any(t == c.GET_VALUES or (t == c.STDIN and not data) for t, _, data in records):
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    records += parser.feed(chunk)
                seen.append(records)
                conn.sendall(reply)
    seen = []
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return seen, t


OK = (c.encode_stream(c.STDOUT, 1, b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nhello")
      + c.encode_record(c.END_REQUEST, 1, struct.pack("!IB3x", 0, 0)))


@pytest.fixture
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s, s.getsockname()[1]
    s.close()


def test_connection_sends_two_requests_over_one_kept_connection(listener):
    sock, port = listener
    seen, t = serve_once(sock, [OK, OK])
    with c.Connection(f"127.0.0.1:{port}") as conn:
        assert conn.request("/one?q=1").body == b"hello"
        assert conn.request("/two", "POST", b"data").status == 200
    t.join(5)
    begin, *rest = seen[1]
    assert begin == (c.BEGIN_REQUEST, 1, b"\x00\x01\x01" + bytes(5))
    params = dict(c.decode_pairs(b"".join(d for t_, _, d in rest if t_ == c.PARAMS)))
    assert params[b"REQUEST_URI"] == b"/two" and params[b"CONTENT_LENGTH"] == b"4"
    assert params[b"REMOTE_ADDR"] == b"127.0.0.1" and int(params[b"REMOTE_PORT"]) > 0
    assert b"".join(d for t_, _, d in rest if t_ == c.STDIN) == b"data"


def test_kept_connection_with_trailing_bytes_is_an_error(listener):
    sock, port = listener
    serve_once(sock, [OK + c.encode_record(c.STDOUT, 1, b"extra")])
    with c.Connection(str(port)) as conn, pytest.raises(c.FastCGIError, match="after END_REQUEST"):
        conn.request()


def test_get_values(listener):
    sock, port = listener
    result = c.encode_record(c.GET_VALUES_RESULT, 0, c.encode_pairs({"FCGI_MAX_CONNS": "5", "FCGI_MPXS_CONNS": "0"}))
    seen, t = serve_once(sock, [result])
    with c.Connection(f"127.0.0.1:{port}") as conn:
        assert conn.get_values(["FCGI_MAX_CONNS", "FCGI_MPXS_CONNS"]) == {"FCGI_MAX_CONNS": "5", "FCGI_MPXS_CONNS": "0"}
    t.join(5)
    assert seen[0] == [(c.GET_VALUES, 0, b"\x0e\x00FCGI_MAX_CONNS\x0f\x00FCGI_MPXS_CONNS")]


def test_request_over_a_unix_socket(tmp_path):
    path = str(tmp_path / "fpm.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen()
    serve_once(s, [OK])
    assert c.request(path).body == b"hello"
    s.close()


def test_request_over_ipv6():
    s = socket.socket(socket.AF_INET6)
    try:
        s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    s.listen()
    serve_once(s, [OK])
    assert c.request(f"[::1]:{s.getsockname()[1]}").status == 200
    s.close()


def test_bad_address():
    with pytest.raises(ValueError, match="invalid FastCGI address 'host:port9'"):
        c.connect("host:port9")


# --- command line ----------------------------------------------------------------------------

def test_cli_prints_headers_and_body(listener, capsysbinary):
    sock, port = listener
    reply = (c.encode_stream(c.STDOUT, 1, b"Status: 201 Created\r\nX-A: b\r\n\r\nmade")
             + c.encode_stream(c.STDERR, 1, b"a warning\n")
             + c.encode_record(c.END_REQUEST, 1, bytes(8)))
    seen, t = serve_once(sock, [reply])
    assert c.main([str(port), "/x", "-d", "k=v", "-H", "X-Y: z", "--param", "SCRIPT_NAME=/s", "-i"]) == 0
    out, err = capsysbinary.readouterr()
    assert out == b"Status: 201 Created\r\nX-A: b\r\n\r\nmade" and err == b"a warning\n"
    t.join(5)
    params = dict(c.decode_pairs(b"".join(d for t_, _, d in seen[0] if t_ == c.PARAMS)))
    assert params[b"REQUEST_METHOD"] == b"POST" and params[b"SCRIPT_NAME"] == b"/s"
    assert params[b"HTTP_X_Y"] == b"z" and params[b"CONTENT_TYPE"] == b"application/x-www-form-urlencoded"


def test_cli_exit_1_on_a_server_error(listener, capsysbinary):
    sock, port = listener
    serve_once(sock, [c.encode_stream(c.STDOUT, 1, b"Status: 503 Busy\r\n\r\n") + c.encode_record(c.END_REQUEST, 1, bytes(8))])
    assert c.main([f"127.0.0.1:{port}"]) == 1


def test_cli_exit_2_when_nobody_listens(listener, capsys):
    sock, port = listener
    sock.close()
    assert c.main([f"127.0.0.1:{port}"]) == 2
    assert capsys.readouterr().err == f"pyfpm request: 127.0.0.1:{port}: Connection refused\n"


def test_cli_timeout(listener, capsys):
    sock, port = listener  # listens but never accepts or answers
    assert c.main([str(port), "--timeout", "0.2"]) == 2
    assert capsys.readouterr().err == f"pyfpm request: {port}: timed out after 0.2 s\n"


def test_cli_usage_errors(capsys):
    assert c.main(["9000", "-H", "nocolon"]) == 64
    assert "is not 'Name: value'" in capsys.readouterr().err
    assert c.main(["9000", "-d", "@/nonexistent/file"]) == 64
    assert capsys.readouterr().err == "pyfpm request: cannot read /nonexistent/file: No such file or directory\n"
