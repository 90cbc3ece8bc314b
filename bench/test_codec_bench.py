"""Codec microbenchmarks on what nginx really sends: the compiled decoder and encoder, with
the pure-Python client's parser and flup's (the pure-Python FastCGI server) on the same bytes
as yardsticks (compare ratios)."""

import pytest

from fpm import _codec, client

BODY = bytes(range(256)) * 256  # 64 KiB
RESPONSE_HEAD = (b"Status: 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
                 b"Content-Length: 1024\r\nCache-Control: private\r\n\r\n")


def request_bytes(params, body=b""):
    """BEGIN_REQUEST (keep_conn, as nginx with an upstream keepalive), PARAMS in one record as
    nginx sends them, then the body in nginx's 32 KiB STDIN records."""
    return client.encode_request(params, body, keep_conn=True)


def decode_once(decoder, data):
    """Feed one whole request and reset the decoder for the next, as a kept connection does."""
    events = decoder.feed(data)
    decoder.end_request()
    return events


@pytest.mark.benchmark(group="params")
def test_parse_params(benchmark, realistic_params):
    data = request_bytes(realistic_params)
    decoder = _codec.Decoder()
    events = benchmark(decode_once, decoder, data)
    params = next(e[2] for e in events if e[0] == "params")
    assert params[b"HTTP_USER_AGENT"].startswith(b"Mozilla/5.0")
    assert len(params) == len(realistic_params)
    benchmark.extra_info["params_bytes"] = len(client.encode_pairs(realistic_params))


@pytest.mark.benchmark(group="params")
def test_parse_params_pure_python(benchmark, realistic_params):
    """Yardstick: fpm.client's record parser and pair decoder on the same request."""
    data = request_bytes(realistic_params)

    def decode():
        records = client.RecordParser().feed(data)
        return dict(client.decode_pairs(b"".join(c for t, _, c in records if t == client.PARAMS)))

    assert len(benchmark(decode)) == len(realistic_params)


class _Bytes:
    """The socket flup's Record.read() takes, over bytes already received."""

    def __init__(self, data):
        self.data, self.at = data, 0

    def recv(self, n):
        out = self.data[self.at:self.at + n]
        self.at += len(out)
        return out

    def fileno(self):
        return -1  # flup formats it into a debug line it never logs


def flup_records(data):
    """flup 1.0.3's parser (fcgi_base.Record.read) over one request: (type, content) each."""
    fcgi = pytest.importorskip("flup.server.fcgi_base", reason="pip install flup")
    sock, out = _Bytes(data), []
    while sock.at < len(data):
        record = fcgi.Record()
        record.read(sock)
        out.append((record.type, record.contentData))
    return fcgi, out


@pytest.mark.benchmark(group="params")
def test_parse_params_flup(benchmark, realistic_params):
    """The pure-Python reference the issue names: flup's record reader and decode_pair."""
    data = request_bytes(realistic_params)
    fcgi, _ = flup_records(data)

    def decode():
        _, records = flup_records(data)
        block = b"".join(c for t, c in records if t == fcgi.FCGI_PARAMS)
        params, pos = {}, 0
        while pos < len(block):
            pos, (name, value) = fcgi.decode_pair(block, pos)
            params[name] = value
        return params

    assert len(benchmark(decode)) == len(realistic_params)


@pytest.mark.benchmark(group="body")
def test_decode_64k_body_flup(benchmark, realistic_params):
    data = request_bytes(dict(realistic_params, CONTENT_LENGTH=str(len(BODY))), BODY)
    fcgi, _ = flup_records(data)

    def decode():
        return b"".join(c for t, c in flup_records(data)[1] if t == fcgi.FCGI_STDIN)

    assert benchmark(decode) == BODY


@pytest.mark.benchmark(group="body")
def test_decode_64k_body(benchmark, realistic_params):
    params = dict(realistic_params, REQUEST_METHOD="POST", CONTENT_LENGTH=str(len(BODY)),
                  CONTENT_TYPE="application/octet-stream")
    data = request_bytes(params, BODY)
    decoder = _codec.Decoder()
    events = benchmark(decode_once, decoder, data)
    assert b"".join(e[2] for e in events if e[0] == "stdin") == BODY
    assert events[-1][0] == "stdin_end"


@pytest.mark.benchmark(group="body")
def test_decode_64k_body_pure_python(benchmark, realistic_params):
    data = request_bytes(dict(realistic_params, CONTENT_LENGTH=str(len(BODY))), BODY)

    def decode():
        return b"".join(c for t, _, c in client.RecordParser().feed(data) if t == client.STDIN)

    assert benchmark(decode) == BODY


@pytest.mark.benchmark(group="response")
@pytest.mark.parametrize("size", [1024, 65536], ids=["1k", "64k"])
def test_encode_response(benchmark, size):
    body = BODY[:size]

    def encode():
        return _codec.encode_stdout(1, RESPONSE_HEAD) + _codec.encode_stdout(1, body) + \
            _codec.encode_end_request(1)

    out = benchmark(encode)
    response = client.Response.from_records(client.iter_records(out))
    assert (response.status, response.body) == (200, body)


@pytest.mark.benchmark(group="response")
@pytest.mark.parametrize("size", [1024, 65536], ids=["1k", "64k"])
def test_encode_response_pure_python(benchmark, size):
    body = BODY[:size]

    def encode():
        return client.encode_stream(client.STDOUT, 1, RESPONSE_HEAD + body) + \
            client.encode_record(client.END_REQUEST, 1, bytes(8))

    benchmark(encode)
