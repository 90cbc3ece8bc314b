"""fpm.apps: a pool's search path (standard library, virtualenv, site-packages, python_path,
chdir), and load() with a virtualenv; a venv of another Python is named."""
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


STDLIB = apps._STDLIB[0].rstrip("/")
SITE = apps._SITE[0].rstrip("/")


def test_search_path_puts_the_standard_library_first_and_the_pools_directories_last():
    base = ["/from/PYTHONPATH", "", apps._STDLIB_ZIP, STDLIB, STDLIB + "/lib-dynload", SITE]
    assert apps.search_path(base, ["/venv/site-packages", "/venv/pth"], ("/src", "/lib"),
                            "/srv/app") == [
        "/from/PYTHONPATH", apps._STDLIB_ZIP, STDLIB, STDLIB + "/lib-dynload",
        "/venv/site-packages", "/venv/pth", SITE, "/src", "/lib", "/srv/app"]


def test_search_path_names_each_directory_once_and_never_the_working_directory():
    base = ["", STDLIB, SITE]
    assert apps.search_path(base, [], ("/src", SITE, "/src"), "/src") == [STDLIB, SITE, "/src"]
    assert apps.search_path(base, [], (), None) == [STDLIB, SITE]


def test_virtualenv_site_packages_and_pth_come_after_the_standard_library(tmp_path, clean_path):
    module = "venv_app_%s" % uuid.uuid4().hex
    packages = make_venv(tmp_path / "venv", HERE, module)
    try:
        app = apps.load(module + ":app", chdir=str(tmp_path), virtualenv=str(tmp_path / "venv"))
        assert app(None, None) == [b"from the venv"]
        venv = sys.path.index(str(packages))
        assert sys.path[venv:venv + 2] == [str(packages), str(tmp_path / "venv" / "more")]
        assert all(apps._is_stdlib_entry(p) for p in sys.path[:venv] if p.startswith(STDLIB))
        assert sys.path[-1] == str(tmp_path)  # chdir, last
        assert __import__(module + "_extra").VALUE == 42  # the .pth file's directory
    finally:
        sys.modules.pop(module, None)
        sys.modules.pop(module + "_extra", None)


def test_the_virtualenv_comes_before_python_path(tmp_path, clean_path):
    module = "venv_app_%s" % uuid.uuid4().hex
    packages = make_venv(tmp_path / "venv", HERE, module)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / (module + ".py")).write_text(
        "def app(environ, start_response):\n    return [b'from python_path']\n")
    try:
        app = apps.load(module + ":app", python_path=(str(tmp_path / "src"),),
                        virtualenv=str(tmp_path / "venv"))
        assert app(None, None) == [b"from the venv"]
        assert sys.path.index(str(packages)) < sys.path.index(str(tmp_path / "src"))
    finally:
        sys.modules.pop(module, None)


def test_an_app_missing_from_the_path_says_where_it_was_looked_for(tmp_path, clean_path,
                                                                  monkeypatch):
    (tmp_path / "here_only.py").write_text("application = None\n")
    monkeypatch.chdir(tmp_path)
    sys.path.insert(0, "")  # as `python -c` would have it
    with pytest.raises(apps.AppLoadError, match=r"No module named 'here_only'; it is looked for "
                                                r"in the standard library, site-packages, "
                                                r"python_path and chdir, never in the directory "
                                                r"pyfpm was started from$"):
        apps.load("here_only")  # in the working directory, which no pool named


def test_an_import_error_of_several_lines_is_said_on_one(tmp_path, clean_path):
    """Its message goes into -t's warning and the status page's app error: one line each
    (the worker logs the traceback as well)."""
    name = "multi_" + uuid.uuid4().hex[:8]
    (tmp_path / (name + ".py")).write_text(
        "raise RuntimeError('settings are missing:\\n  DATABASE_URL\\n\\n  SECRET_KEY\\n')\n")
    with pytest.raises(apps.AppLoadError) as e:
        apps.load(name, python_path=(str(tmp_path),))
    assert str(e.value) == ("cannot import module '%s' for app '%s': RuntimeError: settings are "
                            "missing: | DATABASE_URL | SECRET_KEY" % (name, name))


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
