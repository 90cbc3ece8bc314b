"""fpm.apps.load with a virtualenv: its packages come first, a venv of another Python is named."""
import sys
import uuid

import pytest

from fpm import apps

HERE = "%d.%d" % sys.version_info[:2]


@pytest.fixture
def clean_path(monkeypatch):
    """load() changes sys.path and the working directory; undo both after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(".")


def make_venv(root, version, module):
    packages = root / "lib" / ("python" + version) / "site-packages"
    packages.mkdir(parents=True)
    (packages / (module + ".py")).write_text(
        "def app(environ, start_response):\n    return [b'from the venv']\n")
    (root / "more").mkdir()
    (root / "more" / (module + "_extra.py")).write_text("VALUE = 42\n")
    (packages / "more.pth").write_text(str(root / "more") + "\n")
    return packages


def test_virtualenv_site_packages_and_pth_come_first(tmp_path, clean_path):
    module = "venv_app_%s" % uuid.uuid4().hex
    packages = make_venv(tmp_path / "venv", HERE, module)
    try:
        app = apps.load(module + ":app", chdir=str(tmp_path), virtualenv=str(tmp_path / "venv"))
        assert app(None, None) == [b"from the venv"]
        # the working directory, then the venv's packages and what its .pth file adds
        assert sys.path[:3] == [str(tmp_path), str(packages), str(tmp_path / "venv" / "more")]
        assert __import__(module + "_extra").VALUE == 42  # the .pth file's directory
    finally:
        sys.modules.pop(module, None)
        sys.modules.pop(module + "_extra", None)


def test_python_path_comes_before_the_virtualenv(tmp_path, clean_path):
    module = "venv_app_%s" % uuid.uuid4().hex
    packages = make_venv(tmp_path / "venv", HERE, module)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / (module + ".py")).write_text(
        "def app(environ, start_response):\n    return [b'from python_path']\n")
    try:
        app = apps.load(module + ":app", python_path=(str(tmp_path / "src"),),
                        virtualenv=str(tmp_path / "venv"))
        assert app(None, None) == [b"from python_path"]
        assert sys.path.index(str(tmp_path / "src")) < sys.path.index(str(packages))
    finally:
        sys.modules.pop(module, None)


def test_a_virtualenv_of_another_python_names_both_versions(tmp_path, clean_path):
    make_venv(tmp_path / "venv", "3.99", "whatever")
    with pytest.raises(apps.AppLoadError) as e:
        apps.load("whatever:app", virtualenv=str(tmp_path / "venv"))
    assert str(e.value).startswith("virtualenv '%s' was made for Python 3.99, but pyfpm runs "
                                   "Python %s (%s); recreate it with python%s -m venv"
                                   % (tmp_path / "venv", HERE, sys.executable, HERE))


def test_a_directory_that_is_no_virtualenv(tmp_path, clean_path):
    with pytest.raises(apps.AppLoadError, match=r"^virtualenv '%s' has no lib/python%s/"
                                                r"site-packages directory; is it a virtualenv\?$"
                                                % (tmp_path, HERE)):
        apps.load("whatever:app", virtualenv=str(tmp_path))
    with pytest.raises(apps.AppLoadError, match=r"^virtualenv '%s' is not a directory$"
                                                % (tmp_path / "nope")):
        apps.load("whatever:app", virtualenv=str(tmp_path / "nope"))
