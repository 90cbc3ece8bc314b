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
