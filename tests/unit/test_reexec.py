"""fpm.reexec: what crosses the exec of a reload, encoded and read back."""
import json

import pytest

from fpm import reexec


def test_streams_cross_the_exec():
    text = reexec.encode([], [], [], {2: 9, 1: 8})
    assert reexec.decode(text).streams == ((1, 8), (2, 9))


def test_a_master_from_before_streams_were_passed_is_understood():
    """A reload may start newer code from an older master's environment."""
    old = json.dumps({"listeners": [["/run/www.sock", 5, True]], "boards": [], "children": []})
    inherited = reexec.decode(old)
    assert inherited.streams == () and inherited.listeners == (("/run/www.sock", 5, True),)


def test_malformed_streams_are_refused():
    with pytest.raises(ValueError, match="malformed PYFPM_INHERIT"):
        reexec.decode(json.dumps({"listeners": [], "boards": [], "children": [],
                                  "streams": [["x"]]}))


def test_a_workers_log_socket_and_kept_channel_cross_the_exec():
    from types import SimpleNamespace
    child = SimpleNamespace(pid=12, pool=SimpleNamespace(name="www"), board=SimpleNamespace(fd=7),
                            slot=0, started=1.5, channel=9, output=(10, 11), log=13, kept_tx=14)
    (got,) = reexec.decode(reexec.encode([], [], [child])).children
    assert got == (12, "www", 7, 0, 1.5, 9, (10, 11), 13, 14)


@pytest.mark.parametrize("entry, tail", [([], (-1, -1)), ([13], (13, -1))],
                         ids=["before-log-sockets", "before-kept-channels"])
def test_workers_of_a_master_from_before_have_no_log_socket_or_kept_channel(entry, tail):
    """Their workers write the error log themselves (the new master has nothing to read),
    or share no kept connections."""
    old = json.dumps({"listeners": [], "boards": [],
                      "children": [[12, "www", 7, 0, 1.5, -1, None, *entry]]})
    assert reexec.decode(old).children == ((12, "www", 7, 0, 1.5, -1, None, *tail),)


def test_park_and_hand_off_sockets_cross_the_exec():
    class Lot:
        class ends:
            fds = (10, 11, 12, 13)

        class shared:
            @staticmethod
            def export():
                return [15, 4, [[0, 1, 16]]]
    inherited = reexec.decode(reexec.encode([], [], [], None, {"www": Lot()}, 14))
    assert inherited.lots == (("www", (10, 11, 12, 13)),) and inherited.parked_fd == 14
    assert inherited.kept == (("www", [15, 4, [[0, 1, 16]]]),)


def test_a_master_from_before_parking_hands_over_none():
    inherited = reexec.decode(json.dumps({"listeners": [], "boards": [], "children": []}))
    assert inherited.lots == () and inherited.parked_fd == -1
    assert reexec.parked_entries(inherited) == []


def test_parked_connections_cross_in_a_memfd():
    import base64
    import os
    import socket
    conn, peer = socket.socketpair()

    class Lot:
        @staticmethod
        def export():
            return [[conn.fileno(), 5, 6, 0, base64.b64encode(b"head").decode(), 1.5]]
    fd = reexec.save_parked({"www": Lot()})
    inherited = reexec.Inherited((), (), (), parked_fd=fd)
    with peer:
        assert reexec.parked_entries(inherited) == [("www", (conn.fileno(), 5, 6, 0, b"head", 1.5))]
        conn.close()
    with pytest.raises(OSError):
        os.fstat(fd)  # read and closed
