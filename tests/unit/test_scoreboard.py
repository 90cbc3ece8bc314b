"""The scoreboard as the master uses it: slots claimed, read back consistently, released."""
import os
import sys

from fpm import _board, scoreboard


def test_a_slot_reads_as_its_struct_and_a_hostile_worker_cannot_stretch_its_texts():
    board = scoreboard.Board("www", 2)
    try:
        slot = board.read(board.claim())
        assert {"pid", "stage", "order", "started", "changed", "accepted", "duration", "requests",
                "content_length", "rss", "cpu", "flags", "request_method", "request_uri",
                "script", "user"} <= set(vars(slot))
        assert "seq" not in vars(slot) and slot.request_method == "" and not slot.app_failed
        # An app can write anything into its worker's slot: every byte after the (even)
        # sequence is 0xff, no text ends, and each is read within its own field.
        start, size = _board.board_size(1), _board.board_size(2) - _board.board_size(1)
        os.pwrite(board.fd, b"\xff" * (size - 4), start + 4)
        texts = vars(board.read(1))
        for name in ("request_method", "request_uri", "script", "user"):
            assert texts[name] and set(texts[name]) == {"\ufffd"}, name
        assert len(texts["request_method"]) < 16 and len(texts["user"]) < 32
        # The header's app error likewise, with no NUL in its 512 bytes.
        os.pwrite(board.fd, b"x" * 512, _board.board_size(0) - 512)
        assert board.header()["app_error"] == b"x" * 511
    finally:
        board.close()


def test_claim_read_release():
    board = scoreboard.Board("www", 2)
    try:
        first, second = board.claim(), board.claim()
        assert (first, second) == (0, 1) and board.claim() is None
        board.mem.set_pid(second, 4242)
        slot = board.read(second)
        assert (slot.pid, slot.stage_name, slot.idle, slot.requests) == (4242, "Starting", True, 0)
        assert abs(slot.started - scoreboard.now_us()) < 5_000_000
        board.release(second)
        assert board.read(second).pid == 0 and board.claim() == second
    finally:
        board.close()


def test_a_scoreboard_maps_again_from_its_fd_and_refuses_a_wrong_size():
    board = scoreboard.Board("www", 3)
    try:
        board.mem.set_pid(board.claim(), 7)
        again = scoreboard.Board("www", 3, board.fd)  # what a re-executed master does
        assert again.read(0).pid == 7
        try:
            scoreboard.Board("www", 4, board.fd)
        except ValueError as e:
            assert "no scoreboard of 4 slots" in str(e)
        else:
            raise AssertionError("a 3-slot scoreboard was mapped as 4 slots")
    finally:
        board.close()


def test_a_pools_app_error_is_kept_and_a_writer_killed_halfway_does_not_hang_its_readers():
    board = scoreboard.Board("www", 2)
    try:
        slot = board.claim()
        assert board.mem.app_error() == (0, "") and not board.read(slot).app_failed
        board.mem.mark_app_failed(slot, 1_700_000_000_000_000, "cannot import module 'x' ✗")
        assert board.mem.app_error() == (1_700_000_000_000_000, "cannot import module 'x' ✗")
        assert board.read(slot).app_failed
        # The header ends with app_seq, its padding, the time and 512 bytes of text; an odd
        # app_seq is a write in progress, for ever if its writer died (SIGKILL) halfway.
        seq_at = _board.board_size(0) - 512 - 8 - 4 - 4
        os.pwrite(board.fd, (3).to_bytes(4, sys.byteorder), seq_at)
        assert board.mem.app_error()[1] == "cannot import module 'x' ✗"
    finally:
        board.close()
