"""Script mode (fpm.scripts): PHP's cgi.fix_pathinfo split, the SCRIPT_NAME/PATH_INFO a script
gets, limit_extensions, and the per-worker compiled-script cache, run in-process."""
import dataclasses
import errno
import io
import os
import stat
import sys
import urllib.parse

import pytest

from fpm import config, scripts


# --- locate: PHP's cgi.fix_pathinfo=1 walk ---------------------------------------------------

FILE = os.stat_result((stat.S_IFREG | 0o644,) + (0,) * 9)
DIR = os.stat_result((stat.S_IFDIR | 0o755,) + (0,) * 9)


def fake_stat(tree):
    """os.stat over ``tree`` ({path: FILE or DIR}): ENOTDIR below a file, ENOENT elsewhere;
    every call is recorded in .calls."""
    def stat_fn(path):
        stat_fn.calls.append(path)
        if path in tree:
            return tree[path]
        parts = path.split("/")
        for i in range(2, len(parts)):
            if tree.get("/".join(parts[:i])) is FILE:
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
    stat_fn.calls = []
    return stat_fn


TREE = {"/srv": DIR, "/srv/www": DIR, "/srv/www/app.py": FILE, "/srv/www/sub": DIR,
        "/srv/www/sub/index.py": FILE, "/srv/www/up.jpg": FILE, "/srv/www/dir.py": DIR}


@pytest.mark.parametrize("filename, expected", [
    ("/srv/www/app.py", ("/srv/www/app.py", "")),
    ("/srv/www/app.py/a/b", ("/srv/www/app.py", "/a/b")),
    ("/srv/www/app.py/", ("/srv/www/app.py", "/")),
    ("/srv/www/sub/index.py/x.py", ("/srv/www/sub/index.py", "/x.py")),
    ("/srv/www/up.jpg/evil.py", ("/srv/www/up.jpg", "/evil.py")),  # limit_extensions' job
    ("/srv/www/missing.py", None),
    ("/srv/www/missing.py/a", None),
    ("/srv/www/dir.py", None),  # a directory is not a script
    ("/srv/www/dir.py/a", None),
    ("/srv/www/sub/../app.py", None),  # '..' is refused, as PHP's is_valid_path does
    ("/srv/www/app.py/../app.py", None),
    ("srv/www/app.py", None),  # not absolute
    ("", None),
    ("/srv/www/app.py\0/a", None),
])
def test_locate_splits_like_php_fix_pathinfo(filename, expected):
    found = scripts.locate(filename, fake_stat(TREE))
    assert (found and found[:2]) == expected


def test_locate_stops_at_the_first_missing_component():
    """ENOENT means every existing component is a directory, so no shorter prefix can be the
    script: a long bogus path costs one stat, not one per component."""
    stat_fn = fake_stat(TREE)
    assert scripts.locate("/srv/www/nothing" + "/x" * 500, stat_fn) is None
    assert len(stat_fn.calls) == 1
    stat_fn = fake_stat(TREE)
    assert scripts.locate("/srv/www/app.py/a/b/c", stat_fn)[:2] == ("/srv/www/app.py", "/a/b/c")
    assert stat_fn.calls == ["/srv/www/app.py/a/b/c", "/srv/www/app.py/a/b", "/srv/www/app.py/a",
                             "/srv/www/app.py"]


# --- SCRIPT_NAME and PATH_INFO ---------------------------------------------------------------

def unsplit(uri):
    """What nginx sends without fastcgi_split_path_info (stock fastcgi_params): SCRIPT_NAME is
    $fastcgi_script_name, the decoded path, and there is no PATH_INFO. The worker leaves both
    as sent in script mode."""
    return {"REQUEST_URI": uri,
            "SCRIPT_NAME": urllib.parse.unquote(uri.partition("?")[0], "latin-1")}


@pytest.mark.parametrize("environ, tail, expected", [
    # fastcgi_split_path_info + fastcgi_param PATH_INFO $fastcgi_path_info: used as sent
    ({"SCRIPT_NAME": "/app.py", "PATH_INFO": "/a/b", "REQUEST_URI": "/app.py/a/b?x=1"}, "",
     ("/app.py", "/a/b")),
    ({"SCRIPT_NAME": "/app.py", "PATH_INFO": "", "REQUEST_URI": "/app.py"}, "",
     ("/app.py", "")),
    # no split: SCRIPT_FILENAME ends with the path info, which fix_pathinfo takes off
    (unsplit("/app.py/a/b?x=1"), "/a/b", ("/app.py", "/a/b")),
    (unsplit("/app.py"), "", ("/app.py", "")),
    (unsplit("/app.py/a%20b"), "/a b", ("/app.py", "/a b")),  # decoded, as $uri is
    # `/` served by fastcgi_index index.py: the script is the site's root
    (unsplit("/"), "", ("", "/")),
    (unsplit("/sub/"), "", ("/sub", "/")),
])
def test_script_name_and_path_info_per_pep_3333(environ, tail, expected):
    name, info = environ["SCRIPT_NAME"], environ.get("PATH_INFO", "")
    assert scripts.url_paths(name, info, tail) == expected


def test_path_info_of_a_split_that_still_needed_fix_pathinfo():
    """nginx split off /c, and /a/b was no file either: both make up PATH_INFO."""
    assert scripts.url_paths("/app.py/a/b", "/c", "/a/b") == ("/app.py", "/a/b/c")


def test_script_name_from_document_root_when_it_does_not_end_with_the_tail():
    assert scripts.url_paths("/elsewhere", "", "/a", "/srv/www/app.py", "/srv/www/") == \
        ("/app.py", "/a")


@pytest.mark.parametrize("script, extensions, ok", [
    ("/w/a.py", (".py",), True), ("/w/a.txt", (".py",), False), ("/w/a.txt", (), True),
    ("/w/a.pyw", (".py", ".pyw"), True), ("/w/apy", (".py",), False),
])
def test_limit_extensions_is_a_suffix_match(script, extensions, ok):
    assert scripts.allowed(script, extensions) is ok


# --- ScriptApp, in-process -------------------------------------------------------------------

class Log:
    """The worker's log(level, text), keeping what it was told."""

    def __init__(self):
        self.lines = []

    def __call__(self, level, text):
        self.lines.append((level, text))


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def pool(**kwargs):
    return dataclasses.replace(config.PoolConfig(name="www", listen="/tmp/x.sock"), **kwargs)


@pytest.fixture
def clean_modules(monkeypatch):
    """The app puts script modules in sys.modules and may chdir; undo both after the test."""
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(".")


def call(app, filename, uri=None, **environ):
    uri = uri or "/" + os.path.basename(filename)
    env = {**unsplit(uri), "SCRIPT_FILENAME": filename, "wsgi.errors": io.StringIO(), **environ}
    started = []
    body = b"".join(app(env, lambda status, headers: started.append(status)))
    return started[0], body, env


VERSION = "VERSION = %r\ndef application(environ, start_response):\n" \
          "    start_response('200 OK', [])\n    return [VERSION.encode()]\n"


def write(path, version):
    path.write_text(VERSION % version)


def test_a_script_is_compiled_once_and_revalidated_after_revalidate_freq(tmp_path, clean_modules):
    clock = Clock()
    app = scripts.ScriptApp(pool(script_revalidate_freq=2), Log(), clock=clock)
    script = tmp_path / "v.py"
    write(script, "one")
    assert call(app, str(script))[:2] == ("200 OK", b"one")
    write(script, "two, longer")
    clock.now += 1.9
    assert call(app, str(script))[1] == b"one"  # within revalidate_freq: not looked at
    clock.now += 0.2
    assert call(app, str(script))[1] == b"two, longer"
    script.unlink()
    clock.now += 2
    status, body, env = call(app, str(script))
    assert (status, body) == ("404 Not Found", b"File not found.\n")
    assert env["wsgi.errors"].getvalue() == "Primary script unknown\n"


def test_validate_timestamps_no_keeps_the_compiled_code(tmp_path, clean_modules):
    clock = Clock()
    app = scripts.ScriptApp(pool(script_validate_timestamps=False, script_revalidate_freq=0),
                            Log(), clock=clock)
    script = tmp_path / "v.py"
    write(script, "one")
    assert call(app, str(script))[1] == b"one"
    write(script, "two, longer")
    clock.now += 60
    assert call(app, str(script))[1] == b"one"


def test_the_cache_is_bounded_and_evicted_modules_leave_sys_modules(tmp_path, clean_modules,
                                                                    monkeypatch):
    monkeypatch.setattr(scripts, "CACHE_SIZE", 3)
    app = scripts.ScriptApp(pool(), Log(), clock=Clock())
    for i in range(5):
        write(tmp_path / f"s{i}.py", str(i))
        assert call(app, str(tmp_path / f"s{i}.py"))[1] == str(i).encode()
    assert len(app.code) == 3 and len(app.routes) == 3
    names = [n for n in sys.modules if n.startswith(scripts.MODULE_PREFIX)]
    assert sorted(names) == [scripts.MODULE_PREFIX + str(tmp_path / f"s{i}.py") for i in (2, 3, 4)]


def test_symlinked_paths_share_one_compiled_module(tmp_path, clean_modules):
    write(tmp_path / "real.py", "shared")
    (tmp_path / "link.py").symlink_to(tmp_path / "real.py")
    app = scripts.ScriptApp(pool(), Log(), clock=Clock())
    assert call(app, str(tmp_path / "real.py"))[1] == call(app, str(tmp_path / "link.py"))[1]
    assert list(app.code) == [str(tmp_path / "real.py")]


def test_module_name_cannot_shadow_and_the_directory_leaves_sys_path(tmp_path, clean_modules):
    (tmp_path / "json.py").write_text("raise RuntimeError('shadowed the json module')\n")
    (tmp_path / "helper.py").write_text("WORD = 'sibling'\n")
    (tmp_path / "page.py").write_text(
        "import helper\nNAME = __name__\n"
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [])\n    return [(NAME + ' ' + helper.WORD).encode()]\n")
    app = scripts.ScriptApp(pool(), Log(), clock=Clock())
    body = call(app, str(tmp_path / "page.py"))[1].decode()
    assert body == scripts.MODULE_PREFIX + str(tmp_path / "page.py") + " sibling"
    assert str(tmp_path) not in sys.path
    import json  # still the standard library's
    assert json.dumps([1]) == "[1]"


def test_refusals(tmp_path, clean_modules):
    (tmp_path / "notes.txt").write_text("secret\n")
    (tmp_path / "dir.py").mkdir()
    log = Log()
    app = scripts.ScriptApp(pool(), log, clock=Clock())
    status, body, env = call(app, str(tmp_path / "notes.txt/x.py"), "/notes.txt/x.py")
    assert (status, body) == ("403 Forbidden", b"Access denied.\n")
    message = ("Access to the script '%s' has been denied (see security.limit_extensions)"
               % (tmp_path / "notes.txt"))
    assert env["wsgi.errors"].getvalue() == message + "\n"
    assert log.lines == [("notice", message)]
    for path in (tmp_path / "dir.py", tmp_path / ".." / tmp_path.name / "notes.txt"):
        assert call(app, str(path))[:2] == ("404 Not Found", b"File not found.\n")
    relaxed = scripts.ScriptApp(pool(security_limit_extensions=()), log, clock=Clock())
    with pytest.raises(NameError):  # run as Python (the worker answers 500): allowed
        call(relaxed, str(tmp_path / "notes.txt"))


def test_a_script_without_application_is_a_500_that_says_how_to_fix_it(tmp_path, clean_modules):
    (tmp_path / "cgi.py").write_text("print('Content-Type: text/plain')\nprint()\nprint('hi')\n")
    log = Log()
    app = scripts.ScriptApp(pool(), log, clock=Clock())
    assert call(app, str(tmp_path / "cgi.py"))[:2] == ("500 Internal Server Error",
                                                      b"Internal Server Error\n")
    [(level, line)] = log.lines
    assert level == "error"
    assert "script '%s' defines no callable 'application'" % (tmp_path / "cgi.py") in line
    assert "def application(environ, start_response): ..." in line


def test_sys_exit_in_a_script_is_an_error_not_the_workers_exit(tmp_path, clean_modules):
    (tmp_path / "bye.py").write_text("import sys\nsys.exit(3)\n")
    app = scripts.ScriptApp(pool(), Log(), clock=Clock())
    with pytest.raises(scripts.ScriptError, match=r"called sys.exit\(3\)"):
        call(app, str(tmp_path / "bye.py"))
    assert scripts.MODULE_PREFIX + str(tmp_path / "bye.py") not in sys.modules
