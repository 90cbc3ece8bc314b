"""The server codec (fpm._codec) held against the independent client (fpm.client).

Requests built by the client's encoder must come out of the server's Decoder as the same
events however the bytes are chunked; the server's encoders must parse in the client.
"""

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fpm import _codec, _worker
from fpm import client as c

# Timing is the benchmarks' business; a slow CI machine must not fail a round trip.
relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- helpers ---------------------------------------------------------------------------------

def merged(events):
    """Events with adjacent stdin pieces of one request joined: their split follows the chunking."""
    out = []
    for event in events:
        if event[0] == "stdin":
            assert isinstance(event[2], bytes) and event[2], f"empty or non-bytes stdin event {event!r}"
            if out and out[-1][:2] == event[:2]:
                out[-1] = ("stdin", event[1], out[-1][2] + event[2])
                continue
        out.append(tuple(event))
    return out


def decode(data, cuts=(), **kw):
    """Feed data to a fresh Decoder cut at `cuts`, then eof(); (merged events, decoder)."""
    decoder = _codec.Decoder(**kw)
    events, prev = [], 0
    for cut in sorted(set(cuts) | {len(data)}):
        events += decoder.feed(data[prev:cut])
        prev = cut
    decoder.eof()
    return merged(events), decoder


def expected(params, body=b"", request_id=1, keep_conn=False):
    events = [("begin", request_id, c.RESPONDER, keep_conn), ("params", request_id, dict(params))]
    return events + ([("stdin", request_id, body)] if body else []) + [("stdin_end", request_id)]


def records_at(data):
    """(offset, type, content offset, content length) of every record in wire bytes."""
    out, pos = [], 0
    while pos < len(data):
        _, type, _, clen, plen = struct.unpack_from("!BBHHBx", data, pos)
        out.append((pos, type, pos + 8, clen))
        pos += 8 + clen + plen
    return out


def params_length_offsets(wire):
    """Wire offsets before, inside and after every name/value length field."""
    stream_to_wire = [off + i for _, type, off, clen in records_at(wire) if type == c.PARAMS
                      for i in range(clen)]
    stream = bytes(wire[i] for i in stream_to_wire)
    cuts, pos = [], 0
    while pos < len(stream):
        lengths = []
        for _ in range(2):  # name length, value length
            size = 1 if stream[pos] < 128 else 4
            cuts += range(pos, pos + size + 1)
            lengths.append(stream[pos] if size == 1 else struct.unpack_from("!I", stream, pos)[0] & 0x7FFFFFFF)
            pos += size
        pos += sum(lengths)
    return sorted({stream_to_wire[i] for i in cuts if i < len(stream_to_wire)})


def end_request(request_id, app_status=0, protocol_status=0):
    return c.encode_record(c.END_REQUEST, request_id, struct.pack("!IB3x", app_status, protocol_status))


# Names and values around the 1-/4-byte length switch at 128, empty values, any byte.
blobs = st.one_of(st.binary(max_size=20), st.binary(min_size=120, max_size=140),
                  st.binary(min_size=250, max_size=300))
params_st = st.dictionaries(blobs.filter(bool), blobs, max_size=12)
bodies = st.one_of(st.binary(max_size=64), st.binary(max_size=5000))


# --- round trips under every chunking ---------------------------------------------------------

@relaxed
@given(params=params_st, body=bodies, keep=st.booleans(), rid=st.integers(1, 65535))
def test_whole(params, body, keep, rid):
    data = c.encode_request(params, body, rid, keep)
    assert decode(data)[0] == expected(params, body, rid, keep)


@settings(relaxed, max_examples=30)
@given(params=params_st, body=st.binary(max_size=300))
def test_byte_by_byte(params, body):
    data = c.encode_request(params, body)
    assert decode(data, range(len(data)))[0] == expected(params, body)


@relaxed
@given(params=params_st, body=bodies, data=st.data())
def test_random_chunks(params, body, data):
    wire = c.encode_request(params, body)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=40))
    assert decode(wire, cuts)[0] == expected(params, body)


@pytest.mark.parametrize("k", range(1, 9))
@relaxed
@given(params=params_st, body=bodies)
def test_split_inside_and_at_every_record_header(k, params, body):
    wire = c.encode_request(params, body, stdin_chunk=977)
    cuts = [pos + k for pos, *_ in records_at(wire)]
    assert decode(wire, cuts)[0] == expected(params, body)


@relaxed
@given(params=params_st.filter(bool))
def test_split_at_the_length_bytes(params):
    wire = c.encode_request(params)
    assert decode(wire, params_length_offsets(wire))[0] == expected(params)


@relaxed
@given(params=params_st, data=st.data())
def test_params_split_across_records_at_random_points(params, data):
    stream = c.encode_pairs(params)
    sizes = data.draw(st.lists(st.integers(1, max(1, len(stream))), max_size=20))
    wire = c.encode_request(params, b"x", params_chunk=sizes)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=10))
    assert decode(wire, cuts)[0] == expected(params, b"x")


@settings(relaxed, max_examples=20)
@given(params=params_st, body=bodies, split=st.integers(1, 7))
def test_params_and_body_in_tiny_records(params, body, split):
    wire = c.encode_request(params, body, params_chunk=split, stdin_chunk=split)
    assert decode(wire)[0] == expected(params, body)


def test_big_value_and_big_body_cross_records():
    params = {b"HTTP_COOKIE": b"c" * 70000, b"N" * 200: b"", b"E": b""}
    body = bytes(range(256)) * 400  # 102400 bytes: four 32 KiB STDIN records
    wire = c.encode_request(params, body)
    assert decode(wire)[0] == expected(params, body)
    assert decode(wire, range(0, len(wire), 4093))[0] == expected(params, body)


def test_padding_the_sender_chose_is_skipped():
    wire = (c.encode_begin(1) + c.encode_record(c.PARAMS, 1, c.encode_pairs({"A": "b"}), padding=255)
            + c.encode_record(c.PARAMS, 1, b"", padding=3) + c.encode_record(c.STDIN, 1, b"xy", padding=0)
            + c.encode_record(c.STDIN, 1, b""))
    assert decode(wire)[0] == expected({b"A": b"b"}, b"xy")


def test_two_requests_on_a_kept_connection():
    decoder = _codec.Decoder()
    assert merged(decoder.feed(c.encode_request({"A": "1"}, b"one", keep_conn=True))) == \
        expected({b"A": b"1"}, b"one", 1, True)
    assert decoder.end_request(7) == c.encode_record(c.STDOUT, 1, b"") + end_request(1, 7)
    assert not decoder.want_close
    assert merged(decoder.feed(c.encode_request({"B": "2"}, request_id=2))) == expected({b"B": b"2"}, b"", 2)
    decoder.end_request()
    assert decoder.want_close  # no FCGI_KEEP_CONN this time
    decoder.eof()


def test_next_request_sent_early_waits_for_end_request():
    # A pipelined request with the same id is held until the current one is answered.
    wire = c.encode_request({"A": "1"}, keep_conn=True) + c.encode_request({"B": "2"}, b"x")
    decoder = _codec.Decoder()
    assert merged(decoder.feed(wire)) == expected({b"A": b"1"}, b"", 1, True)
    assert decoder.feed(b"") == []
    decoder.end_request()
    assert merged(decoder.feed(b"")) == expected({b"B": b"2"}, b"x")
    assert decoder.data_to_send() == b""


@relaxed
@given(p1=params_st, p2=params_st, b1=bodies, b2=bodies, data=st.data())
def test_pipelined_requests_under_random_chunks(p1, p2, b1, b2, data):
    # The serve loop answers each request at stdin_end, then feeds b"" to release the next.
    wire = c.encode_request(p1, b1, keep_conn=True) + c.encode_request(p2, b2, keep_conn=True)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(wire)), max_size=30))) | {len(wire)})
    decoder, events, prev = _codec.Decoder(), [], 0
    for cut in cuts:
        piece, prev = wire[prev:cut], cut
        while True:
            new = decoder.feed(piece)
            events += new
            if not any(e[0] == "stdin_end" for e in new):
                break
            decoder.end_request()
            piece = b""
    decoder.eof()
    assert merged(events) == expected(p1, b1, 1, True) + expected(p2, b2, 1, True)


def test_next_request_with_another_id_sent_early_is_multiplexing():
    wire = c.encode_request({"A": "1"}, keep_conn=True) + c.encode_request({"B": "2"}, b"x", request_id=2)
    events, decoder = decode(wire)
    assert events == expected({b"A": b"1"}, b"", 1, True)
    assert decoder.data_to_send() == end_request(2, 0, c.CANT_MPX_CONN)


def test_second_begin_for_the_active_request_is_an_error():
    with pytest.raises(_codec.ProtocolError, match="second BEGIN_REQUEST"):
        _codec.Decoder().feed(c.encode_begin(1) + c.encode_begin(1))


def test_feeding_nothing_gives_nothing():
    decoder = _codec.Decoder()
    assert decoder.feed(b"") == []
    decoder.eof()
    assert decoder.data_to_send() == b""


# --- management records and the codec's own replies -------------------------------------------

def test_get_values():
    names = c.encode_pairs({"FCGI_MAX_CONNS": "", "FCGI_MAX_REQS": "", "FCGI_MPXS_CONNS": ""})
    events, decoder = decode(c.encode_record(c.GET_VALUES, 0, names), max_conns=7, max_reqs=9)
    assert events == []
    [(type, rid, content)] = c.iter_records(decoder.data_to_send())
    assert (type, rid) == (c.GET_VALUES_RESULT, 0)
    assert dict(c.decode_pairs(content)) == {b"FCGI_MAX_CONNS": b"7", b"FCGI_MAX_REQS": b"9", b"FCGI_MPXS_CONNS": b"0"}
    assert decoder.data_to_send() == b""  # taken once


def test_get_values_answers_only_the_names_asked_and_known():
    names = c.encode_pairs({"FCGI_MPXS_CONNS": "", "NO_SUCH_VARIABLE": ""})
    _, decoder = decode(c.encode_record(c.GET_VALUES, 0, names))
    [(_, _, content)] = c.iter_records(decoder.data_to_send())
    assert c.decode_pairs(content) == [(b"FCGI_MPXS_CONNS", b"0")]


def test_get_values_between_requests_on_a_kept_connection():
    wire = (c.encode_request({"A": "1"}, keep_conn=True)
            + c.encode_record(c.GET_VALUES, 0, c.encode_pairs({"FCGI_MPXS_CONNS": ""})))
    for cuts in ((), range(len(wire))):
        events, decoder = decode(wire, cuts)
        assert events == expected({b"A": b"1"}, b"", 1, True)
        assert c.decode_pairs(list(c.iter_records(decoder.data_to_send()))[0][2]) == [(b"FCGI_MPXS_CONNS", b"0")]


@pytest.mark.parametrize("type", [0, 12, 99, 255])
def test_unknown_type(type):
    events, decoder = decode(c.encode_record(type, 0, b"whatever"))
    assert events == []
    assert decoder.data_to_send() == c.encode_record(c.UNKNOWN_TYPE, 0, bytes([type]) + bytes(7))


@pytest.mark.parametrize("role", [c.AUTHORIZER, c.FILTER, 0, 99])
def test_roles_other_than_responder_are_refused(role):
    wire = (c.encode_begin(1, role) + c.encode_stream(c.PARAMS, 1, c.encode_pairs({"A": "b"}))
            + c.encode_stream(c.STDIN, 1, b"body"))
    events, decoder = decode(wire)
    assert events == []
    assert decoder.data_to_send() == end_request(1, 0, c.UNKNOWN_ROLE)


def test_refused_role_then_a_responder_request_on_the_same_connection():
    wire = (c.encode_begin(1, c.AUTHORIZER, keep_conn=True) + c.encode_stream(c.PARAMS, 1, b"")
            + c.encode_stream(c.STDIN, 1, b"") + c.encode_request({"A": "b"}, b"x"))
    events, decoder = decode(wire)
    assert events == expected({b"A": b"b"}, b"x")
    assert decoder.data_to_send() == end_request(1, 0, c.UNKNOWN_ROLE)


def test_second_request_id_while_one_is_active():
    wire = (c.encode_begin(1) + c.encode_begin(2)
            + c.encode_stream(c.PARAMS, 2, c.encode_pairs({"X": "y"})) + c.encode_stream(c.STDIN, 2, b"two")
            + c.encode_stream(c.PARAMS, 1, c.encode_pairs({"A": "b"})) + c.encode_stream(c.STDIN, 1, b"one"))
    for cuts in ((), range(len(wire))):
        events, decoder = decode(wire, cuts)
        assert events == expected({b"A": b"b"}, b"one")
        assert decoder.data_to_send() == end_request(2, 0, c.CANT_MPX_CONN)


def test_abort_request():
    wire = c.encode_begin(1) + c.encode_stream(c.PARAMS, 1, c.encode_pairs({"A": "b"})) + \
        c.encode_record(c.STDIN, 1, b"part") + c.encode_record(c.ABORT_REQUEST, 1)
    decoder = _codec.Decoder()
    assert merged(decoder.feed(wire)) == [("begin", 1, 1, False), ("params", 1, {b"A": b"b"}),
                                          ("stdin", 1, b"part"), ("abort", 1)]


def test_abort_before_params_end():
    decoder = _codec.Decoder()
    wire = c.encode_begin(3, keep_conn=True) + c.encode_record(c.PARAMS, 3, b"\x01\x01Ab") + \
        c.encode_record(c.ABORT_REQUEST, 3)
    assert decoder.feed(wire) == [("begin", 3, 1, True), ("abort", 3)]


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"POST /form HTTP/1.0\r\n\r\n",
                                  b"GET / HTTP/1.1"])
def test_http_sent_to_the_fastcgi_port(data):
    with pytest.raises(_codec.ProtocolError, match="HTTP"):
        _codec.Decoder().feed(data)


def test_http_fed_in_small_pieces_is_still_named():
    decoder = _codec.Decoder()
    with pytest.raises(_codec.ProtocolError, match="HTTP"):
        for byte in b"GET / HTTP/1.1\r\n\r\n":
            decoder.feed(bytes([byte]))


@pytest.mark.parametrize("version", [0, 2, 3, 255])
def test_bad_version(version):
    record = bytes([version]) + c.encode_begin(1)[1:]
    with pytest.raises(_codec.ProtocolError, match=f"version {version}"):
        _codec.Decoder().feed(record)


def test_tls_sent_to_the_fastcgi_port():
    with pytest.raises(_codec.ProtocolError, match="TLS"):
        _codec.Decoder().feed(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")


def test_bad_version_after_a_good_request():
    decoder = _codec.Decoder()
    decoder.feed(c.encode_request({"A": "b"}, keep_conn=True))
    with pytest.raises(_codec.ProtocolError, match="version 3"):
        decoder.feed(b"\x03" + c.encode_begin(2)[1:])


def test_params_over_the_cap():
    params = {"N": "v" * 2000}
    size = len(c.encode_pairs(params))
    with pytest.raises(_codec.ProtocolError, match=rf"{size}\b.*\blimit 1000\b"):
        _codec.Decoder(params_max=1000).feed(c.encode_request(params))


def test_params_over_the_cap_split_in_many_records():
    # The cap is on the whole PARAMS stream, not on one record.
    params = {f"N{i}": "v" * 100 for i in range(20)}
    with pytest.raises(_codec.ProtocolError, match=r"limit 1000\b"):
        _codec.Decoder(params_max=1000).feed(c.encode_request(params, params_chunk=500))


def test_params_at_the_cap_pass():
    params = {"N": "v" * 995}  # 1 + 4 + 1 + 995 = 1001 stream bytes
    stream = c.encode_pairs(params)
    assert decode(c.encode_request(params), params_max=len(stream))[0] == expected({b"N": b"v" * 995})


def test_default_cap_is_one_mebibyte():
    params = {"N": "v" * (1 << 20)}
    with pytest.raises(_codec.ProtocolError, match=r"limit 1048576\b"):
        _codec.Decoder().feed(c.encode_request(params))


@pytest.mark.parametrize("cut", [1, 7, 8, 12, 16 + 8 + 3])
def test_eof_mid_record(cut):
    decoder = _codec.Decoder()
    decoder.feed(c.encode_request({"A": "bc"}, b"body")[:cut])
    with pytest.raises(_codec.ProtocolError, match="truncated"):
        decoder.eof()


@pytest.mark.parametrize("upto", ["begin", "params", "stdin"])
def test_eof_mid_request(upto):
    wire = c.encode_begin(1)
    if upto != "begin":
        wire += c.encode_stream(c.PARAMS, 1, c.encode_pairs({"A": "b"}))
    if upto == "stdin":
        wire += c.encode_record(c.STDIN, 1, b"part")
    decoder = _codec.Decoder()
    decoder.feed(wire)
    with pytest.raises(_codec.ProtocolError):
        decoder.eof()


def test_truncated_pair_inside_the_params_stream():
    wire = c.encode_begin(1) + c.encode_record(c.PARAMS, 1, b"\x05\x01AB") + c.encode_record(c.PARAMS, 1, b"")
    with pytest.raises(_codec.ProtocolError):
        _codec.Decoder().feed(wire)


# --- server encoders read by the client --------------------------------------------------------

def check_wire(wire):
    """Every record: version 1, padded to a multiple of 8 with fewer than 8 bytes."""
    for pos, _, off, clen in records_at(wire):
        assert wire[pos] == 1
        plen = wire[pos + 6]
        assert (clen + plen) % 8 == 0 and plen < 8, (pos, clen, plen)
    assert sum(8 + clen + wire[pos + 6] for pos, _, _, clen in records_at(wire)) == len(wire)


@relaxed
@given(size=st.one_of(st.integers(1, 3000), st.integers(65520, 65545), st.integers(131040, 131080)),
       rid=st.integers(1, 65535), seed=st.integers(0, 255))
def test_encode_stdout_and_stderr(size, rid, seed):
    data = bytes((i * 7 + seed) & 255 for i in range(size))  # cheap to draw, unlike st.binary at 128 KiB
    for encode, type in ((_codec.encode_stdout, c.STDOUT), (_codec.encode_stderr, c.STDERR)):
        wire = encode(rid, data)
        check_wire(wire)
        records = list(c.iter_records(wire))
        assert all(t == type and r == rid and 0 < len(content) <= 65535 for t, r, content in records)
        assert b"".join(content for _, _, content in records) == data


def test_encode_stdout_pads_only_the_last_record():
    data = b"x" * (65535 * 2 + 10)
    wire = _codec.encode_stdout(1, data)
    sizes = [clen for _, _, _, clen in records_at(wire)]
    assert sum(sizes) == len(data) and max(sizes) <= 65535
    assert all(n % 8 == 0 for n in sizes[:-1])


def test_encode_stdout_of_nothing_is_nothing():
    # The empty record that ends the stream comes from Decoder.end_request().
    assert _codec.encode_stdout(1, b"") == b"" and _codec.encode_stderr(1, b"") == b""


@pytest.mark.parametrize("rid, app_status, protocol_status", [
    (1, 0, 0), (65535, 0xFFFFFFFF, 0), (7, 1, c.CANT_MPX_CONN), (2, 0, c.OVERLOADED), (3, 0, c.UNKNOWN_ROLE)])
def test_encode_end_request(rid, app_status, protocol_status):
    wire = _codec.encode_end_request(rid, app_status, protocol_status)
    assert wire == (bytes([1, 3, rid >> 8, rid & 255, 0, 8, 0, 0])
                    + struct.pack("!IB3x", app_status, protocol_status))


def test_a_whole_response_parses_in_the_client():
    decoder = _codec.Decoder()
    decoder.feed(c.encode_request({}))
    stdout = b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"b" * 70000
    wire = (_codec.encode_stdout(1, stdout) + _codec.encode_stderr(1, b"warning\n")
            + decoder.end_request())
    r = c.Response.from_records(c.iter_records(wire))
    assert (r.status, r.headers, r.body, r.stderr, r.stdout_closed) == \
        (200, [("Content-Type", "text/plain")], b"b" * 70000, b"warning\n", True)


# --- request_start_param values -------------------------------------------------------------

@pytest.mark.parametrize("value, seconds", [
    ("1700000000.123", 1700000000.123),      # nginx $msec
    ("t=1700000000123", 1700000000.123),     # X-Request-Start in milliseconds
    ("1700000000123456", 1700000000.123456),  # microseconds
    ("", 0.0), (None, 0.0), ("soon", 0.0),    # unreadable: the wait is not timed
])
def test_request_start_reads_seconds_milli_and_microseconds(value, seconds):
    assert _worker.request_start(value) == pytest.approx(seconds)


def test_finish_request_outside_a_request_is_false():
    import fpm
    assert fpm.finish_request() is False
