"""fpm.cli without a running master: usage, version, -t and -tt, -R, the embedded default.

The configurations set no pool ``user``, so as root they need -R, as on the command line.
"""
import os
import re

import pytest

from fpm import __version__
from fpm import cli
from fpm.cli import main
from tests.conftest import pyfpm_config

GOOD = pyfpm_config(listen="{listen}", app="fpm.demo:app", python_path=None, mode="",
                    log_level="", global_="error_log = stderr")


def test_version(capfd):
    assert main(["--version"]) == 0
    assert capfd.readouterr().out.startswith("pyfpm %s (Python 3." % __version__)


@pytest.mark.parametrize("argv", [["extra"], ["-x"], ["-F", "-D"], ["-y"]])
def test_usage_errors_exit_64(argv, capfd):
    assert main(argv) == 64
    assert "usage: pyfpm" in capfd.readouterr().err


def test_help_exits_0(capfd):
    assert main(["-h"]) == 0
    assert "-tt" in capfd.readouterr().out


def test_test_ok(tmp_path, capfd):
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(GOOD.format(listen=tmp_path / "www.sock"))
    assert main(["-R", "-t", "-y", str(conf)]) == 0
    err = capfd.readouterr().err
    assert re.fullmatch(r"\[.{20}\] NOTICE: configuration file %s test is successful\n"
                        % re.escape(str(conf)), err)


def test_test_dump(tmp_path, capfd):
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(GOOD.format(listen="127.0.0.1:9000"))
    assert main(["-R", "-tt", "-y", str(conf)]) == 0
    err = capfd.readouterr().err
    assert "NOTICE: [global]\n" in err and "NOTICE: \tpm.max_children = 2\n" in err
    assert err.rstrip().endswith("test is successful")


def test_test_failure(tmp_path, capfd):
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(GOOD.format(listen="127.0.0.1:9000").replace("= 2", "= 0"))
    assert main(["-R", "-t", "-y", str(conf)]) == 78
    lines = capfd.readouterr().err.splitlines()
    assert "pm.max_children" in lines[0] and " ERROR: " in lines[0]
    assert lines[-1].endswith("ERROR: FPM initialization failed")


def test_test_checks_socket_owner(tmp_path, capfd):
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(GOOD.format(listen=tmp_path / "www.sock") + "listen.owner = no-such-user\n")
    assert main(["-R", "-t", "-y", str(conf)]) == 78
    assert "ERROR: [pool www] cannot get uid for user 'no-such-user'" in capfd.readouterr().err


def test_missing_file(tmp_path, capfd):
    assert main(["-t", "-y", str(tmp_path / "nope.conf")]) == 78
    assert "nope.conf" in capfd.readouterr().err


def test_missing_prefix(tmp_path, capfd):
    assert main(["-t", "-p", str(tmp_path / "nope")]) == 78
    assert "the global prefix '%s' does not exist or is not a directory" % (tmp_path / "nope") \
        in capfd.readouterr().err


def test_embedded_default(capfd):
    assert main(["-tt"]) == 0
    err = capfd.readouterr().err
    for line in ("\tlisten = 127.0.0.1:9000", "\tpm = static", "\tpm.max_children = 2",
                 "\tapp = fpm.demo:app", "\tdaemonize = no", "\terror_log = stderr"):
        assert "NOTICE: %s\n" % line in err
    assert "configuration file (embedded) test is successful" in err


def test_unwritable_error_log(tmp_path, capfd):
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(GOOD.format(listen="127.0.0.1:9000").replace(
        "error_log = stderr", "error_log = %s/missing/dir/fpm.log" % tmp_path))
    assert main(["-R", "-F", "-y", str(conf)]) == 78
    err = capfd.readouterr().err
    assert "failed to open error log file '%s/missing/dir/fpm.log': No such file or directory (2)" \
        % tmp_path in err


def test_help_lists_R(capfd):
    assert main(["-h"]) == 0
    assert "-R, --allow-to-run-as-root" in capfd.readouterr().out


def as_euid(monkeypatch, euid):
    """What the checks see as the master's effective uid, whoever runs the tests."""
    monkeypatch.setattr(os, "geteuid", lambda: euid)


def test_root_without_user_needs_R(tmp_path, capfd, monkeypatch):
    as_euid(monkeypatch, 0)
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(GOOD.format(listen=tmp_path / "www.sock"))
    assert main(["-t", "-y", str(conf)]) == 78
    lines = [line[23:] for line in capfd.readouterr().err.splitlines()]
    assert lines == ["ERROR: [pool www] user has not been defined; set 'user' or start pyfpm "
                     "with -R to let workers run as root", "ERROR: FPM initialization failed"]
    # The start itself refuses the same way, before the master runs.
    monkeypatch.setattr(cli, "serve", lambda *a, **k: pytest.fail("the master was started"))
    assert main(["-F", "-y", str(conf)]) == 78
    assert "user has not been defined" in capfd.readouterr().err
    assert not (tmp_path / "www.sock").exists()
    assert main(["-R", "-t", "-y", str(conf)]) == 0


def test_unknown_user_fails_the_test(tmp_path, capfd, monkeypatch):
    as_euid(monkeypatch, 0)
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(GOOD.format(listen=tmp_path / "www.sock") + "user = aaaaaa\n")
    assert main(["-R", "-t", "-y", str(conf)]) == 78
    lines = [line[23:] for line in capfd.readouterr().err.splitlines()]
    assert lines == ["ERROR: [pool www] cannot get uid for user 'aaaaaa'",
                     "ERROR: FPM initialization failed"]


def test_not_root_the_test_notes_ignored_directives(tmp_path, capfd, monkeypatch):
    as_euid(monkeypatch, 1000)
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(GOOD.format(listen=tmp_path / "www.sock") + "user = aaaaaa\n")
    assert main(["-t", "-y", str(conf)]) == 0
    lines = [line[23:] for line in capfd.readouterr().err.splitlines()]
    assert lines == ["NOTICE: [pool www] 'user' directive is ignored when FPM is not running "
                     "as root", "NOTICE: configuration file %s test is successful" % conf]


def test_embedded_default_as_root_implies_R_and_says_so(capfd, monkeypatch):
    as_euid(monkeypatch, 0)
    assert main(["-t"]) == 0
    lines = [line[23:] for line in capfd.readouterr().err.splitlines()]
    assert lines[0] == ("WARNING: the embedded demo configuration runs its pool as root; use -y "
                        "with a configuration that sets 'user' for anything but a try-out")
    assert lines[-1] == "NOTICE: configuration file (embedded) test is successful"
    as_euid(monkeypatch, 1000)
    assert main(["-t"]) == 0
    assert "WARNING" not in capfd.readouterr().err
