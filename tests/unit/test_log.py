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


# --- log_limit: PHP-FPM's rule for the master's own messages ---------------------------------

def test_a_message_longer_than_log_limit_but_within_2048_bytes_is_written_whole():
    line = b"x" * 1500
    assert fpm_log.limit_line(line, 1024) == line


def test_a_message_over_2048_bytes_is_cut_to_log_limit_ending_in_dots():
    out = format_message("notice", "y" * 3000, 0, limit=1024)
    assert len(out) == 1024 and out.endswith(b"yyy...\n")
    out = format_message("notice", "y" * 3000, 0, limit=4096)  # the buffer caps it
    assert len(out) == 2048 and out.endswith(b"...\n")


def test_a_syserror_line_reaching_log_limit_is_cut():
    log_line = format_message("error", "z" * 600 + ": Address already in use (98)", 0,
                              limit=600, syserror=True)
    assert len(log_line) == 600 and log_line.endswith(b"zzz...\n")
    short = format_message("error", "bind: Address already in use (98)", 0, limit=600,
                           syserror=True)
    assert short.endswith(b"ERROR: bind: Address already in use (98)\n")


def test_cutting_never_splits_a_utf8_character():
    out = format_message("notice", "é" * 2000, 0, limit=1024)
    assert out.endswith(b"...\n") and len(out) <= 1024
    out.decode("utf-8")  # whole characters only


def test_limit_applies_to_each_line_of_a_traceback(tmp_path):
    path = tmp_path / "fpm.log"
    log = Logger(str(path), limit=512)
    log.error("first\n" + "w" * 3000 + "\nlast")
    lines = path.read_text().splitlines()
    assert [LINE.match(x) is not None for x in lines] == [True, True, True]
    assert len(lines[1]) == 511 and lines[1].endswith("...") and lines[2].endswith("last")


def test_syserror_uses_the_limit(tmp_path):
    path = tmp_path / "fpm.log"
    Logger(str(path), limit=512).syserror("a" * 500, errno.EADDRINUSE)
    (line,) = path.read_text().splitlines()
    assert len(line) == 511 and line.endswith("aaa...")


# --- syslog ----------------------------------------------------------------------------------

def test_syslog_prefix_is_the_level_only():
    assert fpm_log.prefix("warning", 0, for_syslog=True) == b"[WARNING] "
    assert format_message("notice", "fpm is running, pid 1", 0, for_syslog=True) == \
        b"[NOTICE] fpm is running, pid 1\n"


def test_syslog_priority_is_the_message_level():
    import syslog
    assert fpm_log.PRIORITIES == {"debug": syslog.LOG_DEBUG, "notice": syslog.LOG_NOTICE,
                                  "warning": syslog.LOG_WARNING, "error": syslog.LOG_ERR,
                                  "alert": syslog.LOG_ALERT}


def test_every_php_fpm_facility_is_known():
    import syslog
    assert set(fpm_log.FACILITIES) == {
        "auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news", "syslog",
        "user", "uucp", "local0", "local1", "local2", "local3", "local4", "local5", "local6",
        "local7"}
    assert fpm_log.FACILITIES["ftp"] == 11 << 3
    assert fpm_log.FACILITIES["local3"] == syslog.LOG_LOCAL3


def test_syslog_lines_reach_dev_log_with_ident_facility_and_priority(dev_log):
    import syslog
    log = Logger("syslog", "notice", ident="pyfpm-test", facility="local3")
    log.debug("hidden")
    log.error("bad thing\nsecond line")
    log.notice("fine")
    got = [dev_log.recv(4096).decode() for _ in range(3)]
    pid = os.getpid()
    assert [re.sub(r"^(<\d+>)\w{3} [ \d]\d \d\d:\d\d:\d\d ", r"\1", g) for g in got] == [
        "<%d>pyfpm-test[%d]: [ERROR] bad thing" % (syslog.LOG_LOCAL3 | syslog.LOG_ERR, pid),
        "<%d>pyfpm-test[%d]: [ERROR] second line" % (syslog.LOG_LOCAL3 | syslog.LOG_ERR, pid),
        "<%d>pyfpm-test[%d]: [NOTICE] fine" % (syslog.LOG_LOCAL3 | syslog.LOG_NOTICE, pid)]
    syslog.closelog()


def test_syslog_echoes_file_shaped_lines_to_stderr_while_starting(dev_log, capfd):
    import syslog
    log = Logger("syslog", "notice", echo_stderr=True)
    log.warning("starting")
    assert dev_log.recv(4096).decode().endswith("]: [WARNING] starting")
    assert LINE.match(capfd.readouterr().err)
    syslog.closelog()


# --- the master's log files -----------------------------------------------------------------

def test_open_log_file_appends_creates_0600_and_closes_on_exec(tmp_path):
    import fcntl
    path = tmp_path / "access.log"
    path.write_text("kept\n")
    fd = fpm_log.open_log_file(str(path))
    try:
        os.write(fd, b"added\n")
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND
    finally:
        os.close(fd)
    assert path.read_text() == "kept\nadded\n"
    fd = fpm_log.open_log_file(str(tmp_path / "new.log"))
    os.close(fd)
    assert stat.S_IMODE((tmp_path / "new.log").stat().st_mode) == 0o600


@pytest.mark.parametrize("path, number", [
    ("/dev/stderr", 2), ("/dev/stdout", 1), ("/proc/self/fd/2", 2), ("/proc/self/fd/1/", 1),
    ("/dev/fd/7", 7), ("/dev/stdin/x", None), ("/proc/self/fd/two", None),
    ("/proc/self/fd/", None), ("/var/log/pyfpm/access.log", None), ("/dev/null", None),
])
def test_stream_fd_knows_the_paths_of_the_processs_own_descriptors(path, number):
    assert fpm_log.stream_fd(path) == number
