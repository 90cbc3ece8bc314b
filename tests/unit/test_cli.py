"""fpm.cli without a running master: usage, version, -t and -tt, the embedded default."""
import re

import pytest

from fpm import __version__
from fpm.cli import main

GOOD = """\
[global]
error_log = stderr

[www]
listen = {listen}
pm = static
pm.max_children = 2
app = fpm.demo:app
"""


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
    assert main(["-t", "-y", str(conf)]) == 0
    err = capfd.readouterr().err
    assert re.fullmatch(r"\[.{20}\] NOTICE: configuration file %s test is successful\n"
                        % re.escape(str(conf)), err)


def test_test_dump(tmp_path, capfd):
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(GOOD.format(listen="127.0.0.1:9000"))
    assert main(["-tt", "-y", str(conf)]) == 0
    err = capfd.readouterr().err
    assert "NOTICE: [global]\n" in err and "NOTICE: \tpm.max_children = 2\n" in err
    assert err.rstrip().endswith("test is successful")


def test_test_failure(tmp_path, capfd):
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(GOOD.format(listen="127.0.0.1:9000").replace("= 2", "= 0"))
    assert main(["-t", "-y", str(conf)]) == 78
    lines = capfd.readouterr().err.splitlines()
    assert "pm.max_children" in lines[0] and " ERROR: " in lines[0]
    assert lines[-1].endswith("ERROR: FPM initialization failed")


def test_test_checks_socket_owner(tmp_path, capfd):
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(GOOD.format(listen=tmp_path / "www.sock") + "listen.owner = no-such-user\n")
    assert main(["-t", "-y", str(conf)]) == 78
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
    assert main(["-F", "-y", str(conf)]) == 78
    err = capfd.readouterr().err
    assert "failed to open error log file '%s/missing/dir/fpm.log': No such file or directory (2)" \
        % tmp_path in err
