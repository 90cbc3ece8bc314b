"""Hostile FastCGI peers, for the tests and bench/attacks.py: each attack runs in a thread on
loopback only, bounded in connections and seconds, until it is stopped (or its time is up).

    with IdleFlood(address, 400) as attack:   # started; stopped and closed on exit
        attack.wait_open(400)
        ...
"""
from __future__ import annotations

import socket
import threading
import time

from fpm import client as fc

LIMIT = 60.0  # no attack runs longer than this, whatever the caller forgets


def head(uri="/hello", method="GET", body=b"", params=None):
    """BEGIN_REQUEST and the params of a request, as one byte string."""
    request = fc.encode_request(fc.build_params(uri, method=method, body=body, params=params))
    end = fc.encode_record(fc.PARAMS, 1, b"")
    return request[:request.index(end) + len(end)]


class Attack:
    """A thread that opens up to ``count`` connections to ``address`` and does what the
    subclass says with them; ``opened`` counts the connections it managed to open."""

    def __init__(self, address: str, count: int, seconds: float = LIMIT):
        self.address = address
        self.count = count
        self.deadline = time.monotonic() + min(seconds, LIMIT)
        self.socks: list[socket.socket] = []
        self.opened = 0
        self.failed = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self.deadline

    def halt(self) -> None:
        """Stop the thread; the connections stay open."""
        self._stop.set()
        self._thread.join(10)

    def stop(self) -> None:
        self.halt()
        for sock in self.socks:
            sock.close()
        self.socks = []

    def wait_open(self, n: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.opened < n:
            if self.error is not None:
                raise self.error
            if time.monotonic() > deadline:
                raise AssertionError("the attack opened %d of %d connections in %g s"
                                     % (self.opened, n, timeout))
            time.sleep(0.01)

    def connect(self) -> socket.socket | None:
        try:
            sock = fc.connect(self.address, 5.0)
        except OSError:
            self.failed += 1
            return None
        self.opened += 1
        return sock

    def _main(self) -> None:
        try:
            self.run()
        except BaseException as e:  # shown by wait_open() and the tests
            self.error = e

    def sleep(self, seconds: float) -> None:
        self._stop.wait(max(0.0, min(seconds, self.deadline - time.monotonic())))

    def open_all(self, first: bytes = b"") -> None:
        """Open the ``count`` connections, each sending ``first``."""
        while self.running and len(self.socks) < self.count:
            sock = self.connect()
            if sock is not None:
                sock.sendall(first)
                self.socks.append(sock)

    def hold(self) -> None:
        while self.running:
            self.sleep(0.05)

    def run(self) -> None:
        raise NotImplementedError


class IdleFlood(Attack):
    """Connections that send nothing, held open."""

    def run(self):
        self.open_all()
        self.hold()


class Slowloris(Attack):
    """Connections that send a request head a byte at a time, one byte each ``every``
    seconds, round-robin: the head is long (a 2 KB cookie) and never ends in time."""

    def __init__(self, address, count, every=0.2, **kwargs):
        super().__init__(address, count, **kwargs)
        self.every = every
        self.data = head(params={"HTTP_COOKIE": "x" * 2048})
        self.sent: dict[int, int] = {}

    def run(self):
        self.open_all()
        while self.running:
            for sock in self.socks:
                at = self.sent.get(sock.fileno(), 0)
                try:
                    sock.send(self.data[at:at + 1])
                except OSError:
                    continue  # closed by the server: what the test wants
                self.sent[sock.fileno()] = at + 1
            self.sleep(self.every)


class HalfRecords(Attack):
    """Connections that send BEGIN_REQUEST and half a PARAMS record, then nothing."""

    def run(self):
        self.open_all(head()[:len(fc.encode_begin(1)) + 20])
        self.hold()


class SlowBody(Attack):
    """Connections that send a whole head for a POST of ``size`` bytes, then its body in
    STDIN records of ``chunk`` bytes every ``every`` seconds, and its end; ``answers``
    collects what each got back when the server answered (and when, since the attack
    began)."""

    def __init__(self, address, count, size=100_000, chunk=10, every=0.1, **kwargs):
        super().__init__(address, count, **kwargs)
        self.size, self.chunk, self.every = size, chunk, every
        self.data = head("/sha256", "POST", b"x" * size)
        self.answers: list[tuple[float, bytes]] = []
        self.started = time.monotonic()

    def run(self):
        self.open_all(self.data)
        for sock in self.socks:
            sock.setblocking(False)
        self.started = time.monotonic()
        live = list(self.socks)
        got: dict[socket.socket, bytes] = {s: b"" for s in live}
        sent = 0
        while self.running and live:
            for sock in list(live):
                try:
                    while chunk := sock.recv(65536):
                        got[sock] += chunk
                    live.remove(sock)  # closed by the server
                    self.answers.append((time.monotonic() - self.started, got[sock]))
                    continue
                except BlockingIOError:
                    pass
                except OSError:
                    live.remove(sock)
                    self.answers.append((time.monotonic() - self.started, got[sock]))
                    continue
                piece = b"y" * min(self.chunk, self.size - sent)
                try:
                    sock.send(fc.encode_record(fc.STDIN, 1, piece))
                except OSError:
                    pass
            sent += self.chunk
            self.sleep(self.every)


class OversizeParams(Attack):
    """One connection after another sending more params than ``params_max`` allows (and a
    pair that claims a 2 GB value), each read until the server closes it."""

    def __init__(self, address, count, params_max, **kwargs):
        super().__init__(address, count, **kwargs)
        self.requests = [
            fc.encode_request(fc.build_params("/hello", params={"HTTP_X_BIG": "b" * params_max})),
            fc.encode_begin(1) + fc.encode_record(
                fc.PARAMS, 1, b"\x04\xff\xff\xff\xffNAME" + b"v" * 1000)
            + fc.encode_record(fc.PARAMS, 1, b"")]
        self.done = 0

    def run(self):
        while self.running and self.done < self.count:
            sock = self.connect()
            if sock is None:
                continue
            with sock:
                try:
                    sock.sendall(self.requests[self.done % 2])
                    sock.shutdown(socket.SHUT_WR)
                    while sock.recv(65536):
                        pass
                except OSError:
                    pass
            self.done += 1


class Storm(Attack):
    """``count`` connections opened and closed at once, as fast as they go; every other one
    sends a byte first."""

    def run(self):
        n = 0
        while self.running and n < self.count:
            sock = self.connect()
            n += 1
            if sock is None:
                continue
            if n % 2:
                try:
                    sock.send(b"\1")
                except OSError:
                    pass
            sock.close()
        self.done = n
