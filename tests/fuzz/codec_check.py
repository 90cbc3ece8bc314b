"""The codec's fuzz check: any bytes into fpm._codec.Decoder, held against fpm.client.

``check(data)`` raises AssertionError (or whatever escaped the codec) on a defect:
- the codec may only refuse bytes with ProtocolError, never with another exception;
- its events and replies do not depend on how the bytes are cut (the same stream fed
  whole and in pieces gives the same events, the same replies and the same verdict);
- where the independent client can read the stream (record framing, name-value pairs),
  the codec reads the same: the first RESPONDER request's params and body, as events;
- everything the codec sends back (data_to_send, end_request) parses as FastCGI records;
- driven as the worker drives it (end_request after each request's input), it never
  raises anything but ProtocolError, from feed() or from eof().
"""

import random
import zlib

from fpm import _codec
from fpm import client as c


def _run(data, cuts, *, answer=False):
    """Feed ``data`` cut at ``cuts``: (events, the ProtocolError or None, replies).
    ``answer``: end each request once its input is in, as the worker does."""
    dec = _codec.Decoder(params_max=1 << 20)  # above any input: no limit to model
    events, replies, error, prev = [], bytearray(), None, 0
    try:
        for cut in cuts + [len(data)]:
            new = dec.feed(data[prev:cut])
            prev = cut
            while True:
                events += new
                replies += dec.data_to_send()
                if not (answer and new and new[-1][0] in ("stdin_end", "abort")):
                    break
                replies += dec.end_request(0, _codec.REQUEST_COMPLETE)
                new = dec.feed(b"")  # a BEGIN_REQUEST that waited for the end
        if answer:
            dec.eof()
    except _codec.ProtocolError as e:
        error = e
        replies += dec.data_to_send()
    return _merged(events), error, bytes(replies)


def _merged(events):
    out = []
    for event in events:
        if event[0] == "stdin" and out and out[-1][:2] == event[:2]:
            out[-1] = ("stdin", event[1], out[-1][2] + event[2])
        else:
            out.append(event)
    return out


def _records(wire):
    """The client's reading of bytes the codec sent: whole records, version 1."""
    records = list(c.iter_records(wire))
    for rtype, rid, content in records:
        assert rtype in (c.END_REQUEST, c.STDOUT, c.GET_VALUES_RESULT, c.UNKNOWN_TYPE), rtype
        if rtype == c.END_REQUEST:
            assert len(content) == 8 and rid, (rid, content)
        if rtype in (c.GET_VALUES_RESULT, c.UNKNOWN_TYPE):
            assert rid == 0 and len(content) <= c.MAX_CONTENT
    return records


def client_records(data):
    """The client's reading of ``data``: (records, True if they are all of it); after a
    header it cannot read, the records before it."""
    parser = c.RecordParser()
    try:
        records = parser.feed(data)
        return records, parser.buffered == 0
    except c.FastCGIError:
        # Fed a header at a time, the parser keeps the records before the bad one.
        parser, records = c.RecordParser(), []
        for at in range(0, len(data), 8):
            try:
                records += parser.feed(data[at:at + 8])
            except c.FastCGIError:
                break
        return records, False


def reference(data):
    """What the client reads in ``data`` as events of its first RESPONDER request, as far
    as the stream is plainly valid: (events, full). ``full``: the whole stream is one
    request (management records aside) read to its end; False where the reading stops at
    something the client cannot read or that is the codec's policy to judge (a second
    request, a record of the request out of order)."""
    records, complete = client_records(data)
    events, active, stage, params = [], None, None, b""
    for rtype, rid, content in records:
        if rid == 0 and (rtype in (c.GET_VALUES, c.DATA) or not 1 <= rtype <= c.UNKNOWN_TYPE):
            if rtype == c.GET_VALUES:
                try:
                    c.decode_pairs(content)
                except c.FastCGIError:
                    return events, False
            continue
        if active is None:
            if rtype != c.BEGIN_REQUEST or rid == 0 or len(content) != 8:
                return events, False
            role, flags = content[0] << 8 | content[1], content[2]
            if role != c.RESPONDER:
                return events, False
            active, stage = rid, "params"
            events.append(("begin", rid, role, bool(flags & c.KEEP_CONN)))
            continue
        if rid != active or stage == "done":
            return events, False
        if rtype == c.PARAMS and stage == "params":
            if content:
                params += content
                continue
            try:
                pairs = c.decode_pairs(params)
            except c.FastCGIError:
                return events, False
            events.append(("params", rid, dict(pairs)))
            stage = "stdin"
        elif rtype == c.STDIN and stage == "stdin":
            if content:
                if events[-1][0] == "stdin":
                    events[-1] = ("stdin", rid, events[-1][2] + content)
                else:
                    events.append(("stdin", rid, content))
            else:
                events.append(("stdin_end", rid))
                stage = "done"
        else:
            return events, False
    return events, complete and stage == "done"


def check(data):
    """Raise on any defect the codec shows with ``data`` (see the module's docstring)."""
    rng = random.Random(zlib.crc32(data))
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 12)))) \
        if len(data) > 1 else []
    whole = _run(data, [])
    pieces = _run(data, cuts)
    assert (whole[1] is None) == (pieces[1] is None), ("verdict depends on the cuts", whole[1], pieces[1])
    # feed() that raises drops the events of its own call: with an error, one list is
    # a prefix of the other.
    n = len(whole[0]) if whole[1] is None else min(len(whole[0]), len(pieces[0]))
    assert whole[0][:n] == pieces[0][:n] and (whole[1] or len(pieces[0]) == n), \
        ("events depend on the cuts %s" % cuts, whole[0], pieces[0])
    assert whole[2] == pieces[2], ("replies depend on the cuts %s" % cuts, whole[2], pieces[2])
    _records(whole[2])
    events, full = reference(data)
    got = whole[0]
    if full:
        assert whole[1] is None and got == events, ("codec and client disagree", whole[1], got, events)
    else:
        # The codec may stop earlier (its policy), never read differently; where the
        # client stopped inside a body, the codec's body goes on from there.
        n = min(len(got), len(events))
        same = got[:n - 1] == events[:n - 1] if n else True
        if n and same:
            a, b = got[n - 1], events[n - 1]
            same = a == b or (a[:2] == b[:2] == ("stdin", a[1]) and (
                a[2].startswith(b[2]) or b[2].startswith(a[2])))
        assert same, ("codec and client disagree", got, events)
    answered = _run(data, cuts, answer=True)
    _records(answered[2])
