"""Script mode through real nginx: a pool without `app` runs the .py file SCRIPT_FILENAME names,
with PHP-FPM's answers (404 "File not found.", 403 "Access denied.") and log lines, nginx's
stock PHP-style locations translated to .py, and the per-worker compiled-script cache."""
import re
import shutil
import tempfile
from pathlib import Path

import pytest

import harness
from fpm import client
from tests.conftest import APPS, FASTCGI_PARAMS, make_account, pyfpm_config

DOCROOT = APPS / "scripts"
CHILD = r"\[pool www\] child \d+: "

def config(workers, extra=""):
    """A pool in script mode (no app)."""
    return pyfpm_config(listen="{sock}", workers=workers, app=None, python_path=None,
                        log_level="", global_="error_log = stderr", extra=extra)


# Debian's snippets/fastcgi-php.conf with .php → .py, minus its try_files (which would have
# nginx answer a missing script itself): PATH_INFO as nginx splits it.
SPLIT = """\
        root {www};
        location ~ [^/]\\.py(/|$) {{
            fastcgi_split_path_info ^(.+?\\.py)(/.*)$;
            include {params};
            fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
            fastcgi_param PATH_INFO $fastcgi_path_info;
            fastcgi_index index.py;
            fastcgi_pass pyfpm;
        }}
"""

# The plain fastcgi.conf way: no split, SCRIPT_FILENAME holds the path info, which pyfpm takes
# off as PHP's cgi.fix_pathinfo=1 does.
PLAIN = """\
        root {www};
        location ~ \\.py(/|$) {{
            include {params};
            fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
            fastcgi_pass pyfpm;
        }}
"""

VERSION = "def application(environ, start_response):\n" \
          "    start_response('200 OK', [('Content-Type', 'text/plain')])\n" \
          "    return [%r]\n"


def sock(server):
    return str(server.values["sock"])


def request(server, uri, script):
    """One FastCGI request straight to the pool, with SCRIPT_FILENAME = ``script``."""
    return client.request(sock(server), uri, params={"SCRIPT_FILENAME": str(script)})


@pytest.fixture
def www(tmp_path):
    """A copy of tests/apps/scripts to serve (and edit)."""
    root = tmp_path / "www"
    shutil.copytree(DOCROOT, root)
    return root


@pytest.fixture
def site(pyfpm, nginx, www):
    """Factory: site(layout=SPLIT, workers=2, extra=pool lines) → (nginx, pyfpm)."""
    def start(layout=SPLIT, workers=2, extra=""):
        server = pyfpm(config(workers, extra))
        front = nginx(sock(server), locations=layout.format(www=www, params=FASTCGI_PARAMS))
        return front, server
    return start


@pytest.mark.parametrize("layout", [SPLIT, PLAIN], ids=["split_path_info", "fix_pathinfo"])
def test_a_script_gets_its_url_split_into_script_name_and_path_info(site, www, layout):
    front, _ = site(layout)
    r = front.get("/app.py/a/b?x=1")
    assert r.status == 200, r.body
    env = r.json()
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == ("/app.py", "/a/b", "x=1")
    assert env["SCRIPT_FILENAME"] == str(www / "app.py")
    assert env["module"] == "pyfpm-script:" + str(www / "app.py")  # shadows no real module
    assert env["sibling"] == "sibling" and env["dir_on_path"] is False
    env = front.get("/app.py").json()
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app.py", "")


def test_a_missing_script_is_404_and_nginx_logs_primary_script_unknown(site, www):
    front, _ = site()
    front.expected_errors.append(r'FastCGI sent in stderr: "Primary script unknown"')
    (www / "dir.py").mkdir()
    for path in ("/missing.py", "/missing.py/a/b", "/dir.py"):
        r = front.get(path)
        assert (r.status, r.body) == (404, b"File not found.\n"), path
    assert front.error_log().count('FastCGI sent in stderr: "Primary script unknown"') == 3


def test_a_file_outside_limit_extensions_is_403_with_php_fpms_notice(site, www):
    """The classic: an upload named in a .py URL by fix_pathinfo must not run as Python."""
    front, server = site(PLAIN)
    message = ("Access to the script '%s' has been denied (see security.limit_extensions)"
               % (www / "readme.txt"))
    front.expected_errors.append(re.escape('FastCGI sent in stderr: "%s"' % message))
    r = front.get("/readme.txt/x.py")
    assert (r.status, r.body) == (403, b"Access denied.\n")
    server.wait_log(r"NOTICE: " + CHILD + re.escape(message) + "$")
    assert message in front.error_log()


def test_an_edited_script_is_recompiled_with_revalidate_freq_0(site, www):
    front, _ = site(extra="script.revalidate_freq = 0", workers=1)
    (www / "v.py").write_text(VERSION % b"one")
    assert front.get("/v.py").body == b"one"
    (www / "v.py").write_text(VERSION % b"two, longer")
    assert front.get("/v.py").body == b"two, longer"


def test_preload_in_script_mode_imports_nothing_and_says_so(site):
    front, server = site(extra="preload = yes")
    server.wait_log(r"NOTICE: \[pool www\] preload: script mode has no app to import; each "
                    r"worker compiles the scripts it serves$")
    assert front.get("/app.py").status == 200


def test_validate_timestamps_no_keeps_running_the_old_code(site, www):
    front, _ = site(extra="script.validate_timestamps = no\nscript.revalidate_freq = 0",
                    workers=1)
    (www / "v.py").write_text(VERSION % b"one")
    assert front.get("/v.py").body == b"one"
    (www / "v.py").write_text(VERSION % b"two, longer")
    assert front.get("/v.py").body == b"one"
    (www / "v.py").unlink()  # a deleted script is gone at the next look-up all the same
    assert front.get("/v.py").status == 404
    front.expected_errors.append(r'FastCGI sent in stderr: "Primary script unknown"')


def test_a_script_without_application_is_500_and_the_log_says_how_to_wrap_it(site, www):
    front, server = site()
    r = front.get("/cgi_style.py")
    assert (r.status, r.body) == (500, b"Internal Server Error\n")
    server.wait_log(r"ERROR: " + CHILD + re.escape(
        "script '%s' defines no callable 'application': pyfpm serves WSGI scripts, not "
        "CGI-style scripts that print to stdout; wrap the code in def application(environ, "
        "start_response): ..." % (www / "cgi_style.py")) + "$")


def test_a_script_that_does_not_compile_or_import_is_500_with_its_traceback(site, www):
    front, server = site(workers=1)
    (www / "broken.py").write_text("def application(environ, start_response)\n    pass\n")
    (www / "raises.py").write_text("import no_such_module_here\n")
    assert front.get("/broken.py").status == 500
    server.wait_log(CHILD + r'the application raised an exception on "GET /broken\.py"'
                    r'(.|\n)*SyntaxError: expected \':\'')
    assert front.get("/raises.py").status == 500
    server.wait_log(r"(.|\n)*".join([CHILD + r'the application raised an exception on "GET '
                                     r'/raises\.py"', re.escape(str(www / "raises.py")),
                                     "ModuleNotFoundError: No module named "
                                     "'no_such_module_here'"]))
    (www / "broken.py").write_text(VERSION % b"fixed")  # no restart needed once it is fixed
    assert front.get("/broken.py").body == b"fixed"


def test_dotdot_in_script_filename_is_refused(site, www):
    """nginx normalizes URIs, but SCRIPT_FILENAME may be built from anything: PHP refuses '..'."""
    _, server = site()
    r = request(server, "/x.py", www / "sub" / ".." / "app.py")
    assert (r.status, r.body) == (404, b"File not found.\n")
    assert r.stderr == b"Primary script unknown\n"
    assert request(server, "/app.py", www / "app.py").status == 200


@pytest.fixture(scope="module")
def account():
    """A pool user, with a docroot in its world-readable base directory."""
    base = Path(tempfile.mkdtemp(prefix="pyfpm-scripts-"))
    base.chmod(0o755)
    shutil.copytree(DOCROOT, base / "www")
    (base / "www" / "private.py").write_text(VERSION % b"private")
    (base / "www" / "private.py").chmod(0o600)  # root's, unreadable to the pool user
    try:
        with make_account(base) as account:
            yield account
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_an_unreadable_script_is_403_and_logged(tmp_path, account):
    www = account.base / "www"
    with harness.Server(config(1, "user = %s" % account.name), tmp_path) as server:
        assert request(server, "/app.py", www / "app.py").status == 200
        r = request(server, "/private.py", www / "private.py")
        assert (r.status, r.body) == (403, b"Access denied.\n")
        message = "Unable to open primary script: %s (Permission denied)" % (www / "private.py")
        assert r.stderr == (message + "\n").encode()
        server.wait_log(r"ERROR: " + CHILD + re.escape(message) + "$")


def test_a_py_link_to_another_file_is_403_and_none_of_its_lines_is_logged(site, www, tmp_path):
    """A SyntaxError's traceback shows the line it met: a `.py` link to any file the pool
    user can read put that file's lines into the error log."""
    front, server = site(workers=1)
    secret = tmp_path / "secret.conf"
    secret.write_text("db_password = s3cr3t-value!\n")
    (www / "innocent.py").symlink_to(secret)
    (www / "alias.py").symlink_to(www / "app.py")  # a link to a script is served as the script
    message = ("Access to the script '%s' has been denied: it is a link to '%s' (see "
               "security.limit_extensions)" % (www / "innocent.py", secret))
    front.expected_errors.append(re.escape('FastCGI sent in stderr: "%s"' % message))
    r = front.get("/innocent.py")
    assert (r.status, r.body) == (403, b"Access denied.\n")
    server.wait_log(r"NOTICE: " + CHILD + re.escape(message) + "$")
    assert front.get("/alias.py").status == 200
    assert "s3cr3t" not in server.log_text()
