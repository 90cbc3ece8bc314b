"""Where a pool's modules come from: the standard library and site-packages first, then
python_path, then chdir; never the directory pyfpm was started from (unless a pool names it)
nor the console script's bin/ directory. A start directory holding json.py, wave.py and
socket.py that leave a marker file is never imported, by the master (with preload, as root)
or by any worker (as root or as a pool user), whether pyfpm runs as ``python -m fpm`` or as
its console script."""
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

import harness
from fpm import client
from tests.conftest import make_account, make_jail, pyfpm_config

# Each leaves a marker named after itself and the importing pid, then fails loudly.
HIJACK = """\
import os
open(os.path.join({markers!r}, "{name}-%d" % os.getpid()), "w").close()
raise ImportError("the start directory's {name}.py was imported")
"""

APP = """\
import json
import socket
import sys


def app(environ, start_response):
    import wave  # first imported here, in the worker
    body = json.dumps({"path": sys.path, "json": json.__file__, "socket": socket.__file__,
                       "wave": wave.__file__}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
"""

CONFIG = pyfpm_config(listen="{tmp}/www.sock", app="probe_app:app", python_path="{app}",
                      extra="{extra}")

STDLIB = os.path.join(sysconfig.get_path("stdlib"), "")


@pytest.fixture(scope="module")
def base():
    """A world-readable directory: start/ (the hijacking modules), app/ (the app), markers/
    (world-writable, where a hijacking module would leave its mark), and jail/, a chroot
    holding the standard library, the app at /app and the same start/ and markers/ at the
    same paths as outside (a worker's inherited sys.path names host paths)."""
    root = Path(tempfile.mkdtemp(prefix="pyfpm-imports-"))
    root.chmod(0o755)
    jail = make_jail(root / "jail")
    for top in (root, jail / root.relative_to("/")):
        for name in ("start", "app", "markers"):
            (top / name).mkdir(parents=True)
        (top / "markers").chmod(0o777)
        for name in ("json", "wave", "socket"):
            (top / "start" / (name + ".py")).write_text(
                HIJACK.format(markers=str(root / "markers"), name=name))
        (top / "app" / "probe_app.py").write_text(APP)
    (jail / "app").symlink_to(root / "app")  # /app inside the jail
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def markers(base):
    return [*(base / "markers").iterdir(),
            *(base / "jail" / base.relative_to("/") / "markers").iterdir()]


def serve_and_ask(base, tmp, extra="", command=harness.COMMAND, allow_root=True,
                  app=None):
    server = harness.Server(CONFIG, tmp, cwd=base / "start", command=command,
                            allow_root=allow_root, base=base, extra=extra,
                            app=app or base / "app")
    try:
        server.start()
        response = client.request(server.address, "/")
        assert response.status == 200, (response.body, server.log_text())
        return json.loads(response.body)
    finally:
        server.stop()


def assert_standard(base, seen, app=None, last=None):
    assert markers(base) == []
    for name in ("json", "socket", "wave"):
        assert seen[name].startswith(STDLIB), (name, seen[name])
    start = str(base / "start")
    assert "" not in seen["path"] and start not in seen["path"]
    assert not any(p.endswith("/bin") for p in seen["path"]), seen["path"]
    # The standard library first; the pool's python_path after everything installed.
    stdlib = [i for i, p in enumerate(seen["path"]) if os.path.join(p, "").startswith(STDLIB)
              and "-packages" not in p]
    assert stdlib and seen["path"].index(str(app or base / "app")) > max(stdlib)
    assert seen["path"][-1] == (last or str(app or base / "app"))


@pytest.mark.parametrize("preload", ["no", "yes"])
def test_the_start_directory_is_never_imported_as_root(base, tmp_path, preload):
    assert_standard(base, serve_and_ask(base, tmp_path, "preload = %s" % preload))


def test_the_start_directory_is_never_imported_by_a_pool_user(base, tmp_path):
    # In a jail, whose standard library the user can read wherever the host's is.
    with make_account(base, "home") as account:
        seen = serve_and_ask(base, tmp_path, "user = %s\nchroot = %s/jail"
                             % (account.name, base), allow_root=False, app="/app")
    assert_standard(base, seen, app="/app", last="/")  # a jail's default chdir


def test_the_console_scripts_directory_is_not_on_the_path(base, tmp_path):
    script = Path(sys.executable).parent / "pyfpm"
    if not script.exists():
        pytest.skip("no pyfpm console script beside %s (not installed with pip)" % sys.executable)
    seen = serve_and_ask(base, tmp_path, "preload = yes", command=[str(script)])
    assert_standard(base, seen)
    assert str(script.parent) not in seen["path"]


def test_chdir_is_searched_after_python_path(base, tmp_path):
    """chdir is the app's own directory: on the path, last."""
    seen = serve_and_ask(base, tmp_path, "chdir = %s/markers" % base)
    assert seen["path"][-2:] == [str(base / "app"), str(base / "markers")]


def test_a_start_directory_the_pool_names_comes_after_the_standard_library(base, tmp_path):
    """Naming it is the operator's choice: it is searched where python_path is, after
    everything installed, so its json.py still never shadows the standard library's."""
    start = str(base / "start")
    seen = serve_and_ask(base, tmp_path, "preload = yes", app="%s:%s" % (base / "app", start))
    assert seen["path"][-2:] == [str(base / "app"), start]
    assert markers(base) == []
    assert all(seen[name].startswith(STDLIB) for name in ("json", "socket", "wave")), seen
