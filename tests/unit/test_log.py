"""fpm.log: PHP-FPM's line shape, level filtering, one write per message, file targets."""
import errno
import os
import re
import stat
import time

import pytest

from fpm import log as fpm_log
from fpm.log import Logger, choose_target, format_message, format_time, strerror

LINE = re.compile(r"\[\d{2}-[A-Z][a-z]{2}-\d{4} \d{2}:\d{2}:\d{2}\] (DEBUG|NOTICE|WARNING|ERROR|ALERT): ")


def test_format_time_uses_c_locale_month_and_local_time():
    t = time.mktime((2026, 11, 21, 10, 0, 0, 0, 0, -1))
    assert format_time(t) == "21-Nov-2026 10:00:00"
    t = time.mktime((2027, 1, 2, 3, 4, 5, 0, 0, -1))
    assert format_time(t) == "02-Jan-2027 03:04:05"


def test_format_message():
    t = time.mktime((2026, 11, 21, 10, 0, 0, 0, 0, -1))
    assert format_message("notice", "fpm is running, pid 1234", t) == \
        b"[21-Nov-2026 10:00:00] NOTICE: fpm is running, pid 1234\n"


def test_every_line_of_a_message_is_prefixed():
    out = format_message("error", "first\n  second\n", 0).decode()
    lines = out.splitlines()
    assert len(lines) == 2 and all(LINE.match(line) for line in lines)
    assert lines[1].endswith("ERROR:   second")


def test_strerror():
    assert strerror(errno.EADDRINUSE) == "Address already in use (%d)" % errno.EADDRINUSE
    assert strerror(OSError(errno.ENOENT, "x")) == "No such file or directory (%d)" % errno.ENOENT


def test_file_target_mode_append_and_levels(tmp_path):
    path = tmp_path / "fpm.log"
    path.write_text("old line\n")
    os.chmod(path, 0o600)
    log = Logger(str(path), "warning")
    log.debug("d")
    log.notice("n")
    log.warning("w")
    log.error("e")
    log.alert("a")
    log.syserror("unable to bind", errno.EADDRINUSE)
    text = path.read_text()
    assert text.startswith("old line\n")
    levels = [LINE.match(line).group(1) for line in text.splitlines()[1:]]
    assert levels == ["WARNING", "ERROR", "ALERT", "ERROR"]
    assert text.splitlines()[-1].endswith("ERROR: unable to bind: Address already in use (98)")


def test_new_file_is_private(tmp_path):
    path = tmp_path / "fpm.log"
    Logger(str(path)).notice("x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_unknown_level():
    with pytest.raises(ValueError, match="log_level 'verbose' is not one of"):
        Logger("stderr", "verbose")


def test_traceback_is_one_write(tmp_path, monkeypatch):
    writes = []
    real_write = os.write
    log = Logger(str(tmp_path / "fpm.log"))
    monkeypatch.setattr(fpm_log.os, "write", lambda fd, data: writes.append(data) or real_write(fd, data))
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("[pool www] child 1: the app failed")
    assert len(writes) == 1
    lines = writes[0].decode().splitlines()
    assert all(LINE.match(line) for line in lines)
    assert lines[0].endswith("ERROR: [pool www] child 1: the app failed")
    assert lines[-1].endswith("ValueError: boom")


def test_reopen_keeps_the_fd_number(tmp_path):
    path = tmp_path / "fpm.log"
    log = Logger(str(path))
    fd = log.fd
    log.notice("before")
    os.rename(path, tmp_path / "fpm.log.1")
    log.reopen()
    log.notice("after")
    assert log.fd == fd
    assert "before" in (tmp_path / "fpm.log.1").read_text()
    assert "after" in path.read_text() and "before" not in path.read_text()


def test_echo_to_stderr_while_starting(tmp_path, capfd):
    log = Logger(str(tmp_path / "fpm.log"), "debug", echo_stderr=True)
    log.debug("quiet")
    log.error("loud")
    err = capfd.readouterr().err
    assert "loud" in err and "quiet" not in err  # DEBUG stays in the file
    log.echo_stderr = False
    log.error("file only")
    assert capfd.readouterr().err == ""
    assert "file only" in (tmp_path / "fpm.log").read_text()


def test_stderr_target(capfd):
    Logger().notice("to stderr")
    assert LINE.match(capfd.readouterr().err)


@pytest.mark.parametrize("daemon, force, tty, expected", [
    (False, False, True, "stderr"),      # foreground on a terminal
    (False, True, False, "stderr"),      # -F -O
    (False, False, False, "/var/log/pyfpm.log"),
    (True, True, True, "/var/log/pyfpm.log"),  # a daemon has no terminal to write to
])
def test_choose_target(daemon, force, tty, expected):
    assert choose_target("/var/log/pyfpm.log", daemon, force, tty) == expected
    assert choose_target("stderr", daemon, force, tty) == "stderr"
