"""Fixtures shared by the integration tests: a real pyfpm master, a real nginx in front of it,
and an HTTP helper. Every process runs in its own process group and is killed at teardown."""

import contextlib
import dataclasses
import grp
import http.client
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fpm import scoreboard

TESTS = Path(__file__).resolve().parent
APPS = TESTS / "apps"
FASTCGI_PARAMS = Path("/etc/nginx/fastcgi_params")
# The test apps import by module name, as a pool's `app = module:callable` does; tests/ itself
# is on the path too, so that test modules can `import harness`.
sys.path[:0] = [str(TESTS), str(APPS)]


def in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(what, found, hint):
    """A peer the test needs: skip locally with the reason, but fail under CI, where the test
    command is meant to have installed it."""
    if found:
        return
    reason = f"{what} not available ({hint})"
    if what in unpackaged():
        pytest.skip(f"{what}: not packaged by this distribution (scripts/install-test-deps)")
    if in_ci():
        pytest.fail(f"{reason}; CI must not skip it", pytrace=False)
    pytest.skip(reason)


def unpackaged() -> set[str]:
    """What scripts/install-test-deps found no package of on this distribution."""
    try:
        return set((TESTS.parent / ".unpackaged").read_text().split())
    except FileNotFoundError:
        return set()


DEFAULT_ADDRESS = ("127.0.0.1", 9000)  # fpm/default.conf's listen: the embedded default


def require_default_address():
    """Skip a test of the embedded default configuration where its address is taken."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(DEFAULT_ADDRESS)
        except OSError:
            pytest.skip("%s:%d, the embedded configuration's address, is in use here"
                        % DEFAULT_ADDRESS)


def find_program(name):
    """A peer's executable; Debian puts nginx in /usr/sbin, which a non-root PATH may lack."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    require(name, found, "run scripts/install-test-deps")
    return found


# --- throwaway pool users and a chroot with this interpreter's standard library --------------

@dataclasses.dataclass
class Account:
    """A user made for a test module by make_account()."""
    name: str
    uid: int
    gid: int  # its own group (useradd --user-group)
    extra_gid: int  # a supplementary group it is a member of
    extra: str
    home: Path
    base: Path  # the world-readable directory it was made in, for the test's apps and dirs

    @property
    def app_dir(self) -> Path:
        return self.base / "app"


@contextlib.contextmanager
def make_account(base: Path, home: str = "home"):
    """A new user with its own group, one supplementary group and its home at ``base/home``;
    removed with both groups on exit (useradd, userdel). Skips (fails under CI) unless root."""
    require("root", os.geteuid() == 0, "these tests start pyfpm as root; run them as root")
    tools = {name: find_program(name) for name in ("useradd", "userdel", "groupadd", "groupdel")}
    name = "pyfpmt" + uuid.uuid4().hex[:8]
    extra = name + "x"
    try:
        subprocess.run([tools["groupadd"], extra], check=True, capture_output=True)
        subprocess.run([tools["useradd"], "--user-group", "--create-home", "--home-dir",
                        str(base / home), "--groups", extra, "--shell", "/usr/sbin/nologin",
                        name], check=True, capture_output=True)
        entry = pwd.getpwnam(name)
        yield Account(name, entry.pw_uid, entry.pw_gid, grp.getgrnam(extra).gr_gid, extra,
                      base / home, base)
    finally:
        subprocess.run([tools["userdel"], "--remove", name], capture_output=True)
        subprocess.run([tools["groupdel"], name], capture_output=True)  # if userdel left it
        subprocess.run([tools["groupdel"], extra], capture_output=True)


# What a jail needs besides the app: this interpreter's standard library at the same path,
# for the modules a worker imports after chroot. The big parts no app needs stay out.
STDLIB_SKIP = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip",
               "lib2to3", "pydoc_data"}


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def make_jail(root: Path) -> Path:
    """A chroot at ``root`` holding this interpreter's standard library at its host path
    (hard links when possible, so it takes a fraction of a second)."""
    stdlib = Path(os.__file__).parent
    shutil.copytree(stdlib, root / stdlib.relative_to("/"), copy_function=_link_or_copy,
                    ignore=lambda d, names: [n for n in names if n in STDLIB_SKIP
                                             or n.startswith("config-")])
    return root


def blank_slot(**fields):
    """A scoreboard slot as the master reads a fresh one (every field of the C struct, zero),
    with ``fields`` set."""
    board = scoreboard.Board("test", 1)
    try:
        return scoreboard.Slot(**{**vars(board.read(0)), **fields})
    finally:
        board.close()


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout, what, host="127.0.0.1"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on {port}")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} not listening on {host}:{port} after {timeout} s")


# --- pyfpm ---------------------------------------------------------------------------------

def pyfpm_config(tmp=None, *, log_level="notice", global_="", pool="www", listen="unix",
                 **section) -> str:
    """The tests' one configuration builder: a [global] section (global_section) and one
    pool (pool_section; add more with it). ``listen`` is "unix" (``tmp/<pool>.sock``), "tcp"
    (a free port) or as pool_section takes it. The error log is the default, stderr, which
    the harness captures for .log_text()."""
    if listen == "unix":
        listen = str(tmp / f"{pool}.sock")
    elif listen == "tcp":
        listen = f"127.0.0.1:{free_port()}"
    return global_section(log_level, global_) + "\n" + pool_section(pool, listen=listen, **section)


def global_section(log_level="notice", lines="") -> str:
    """[global]: ``log_level`` (falsy: no line), then ``lines``."""
    return "\n".join(filter(None, ["[global]", log_level and f"log_level = {log_level}",
                                   lines.rstrip("\n")])) + "\n"


def pool_section(pool="www", *, listen, app="wsgi_app:app", workers=2, pm="static", mode="0666",
                 python_path=APPS, mount="", extra="") -> str:
    """A pool serving a test app. ``listen`` is an address, which may be one of
    harness.Server's placeholders ({sock}, {tmp}/..., 127.0.0.1:{port}); a falsy ``listen``
    (the pool's listen lines are in ``extra``), ``pm``, ``workers``, ``app``, ``mode``,
    ``python_path`` or ``mount`` leaves its line out. ``extra``: the pool's other lines."""
    lines = [f"[{pool}]", listen and f"listen = {listen}", mode and f"listen.mode = {mode}",
             pm and f"pm = {pm}", workers and f"pm.max_children = {workers}",
             app and f"app = {app}",
             python_path and f"python_path = {python_path}", mount and f"mount = {mount}",
             extra.rstrip("\n")]
    return "\n".join(filter(None, lines)) + "\n"


@pytest.fixture
def pyfpm(tmp_path_factory):
    """Factory: pyfpm(config_text) or pyfpm(listen=..., app=..., workers=..., mount=...) →
    a running harness.Server (.address, .log_text(), .wait_log())."""
    import harness  # tests/harness.py, imported here so that unit tests never depend on it
    servers = []

    def start(config=None, **kwargs):
        tmp = tmp_path_factory.mktemp("pyfpm")
        if config is None:
            config = pyfpm_config(tmp, **kwargs)
        server = harness.Server(config, tmp)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in reversed(servers):
        server.stop()


def fastcgi_address(address):
    """pyfpm's listen address as nginx's fastcgi_pass / upstream server wants it."""
    address = str(address)
    return f"unix:{address}" if address.startswith("/") else address


# --- nginx ---------------------------------------------------------------------------------

# The tests' every nginx: one worker, its files in {tmp}, around {site} (http-level blocks).
NGINX_MAIN = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log notice;
{user}
events {{ worker_connections 1024; }}

http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    fastcgi_temp_path {tmp}/fastcgi;
    proxy_temp_path {tmp}/proxy;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;

{site}}}
"""

SITE = """\
    client_max_body_size 20m;
    # 32 KiB of request headers: each line must fit one buffer, all of them the set.
    large_client_header_buffers 8 64k;
    fastcgi_read_timeout 30s;
    fastcgi_send_timeout 30s;

    upstream pyfpm {{
        server {upstream};
        keepalive 16;
    }}

    server {{
        listen 127.0.0.1:{port};
        server_name localhost;

        location / {{
            include {params};
{common}
        }}
        # TLS termination in front: HTTPS=on reaches the app as wsgi.url_scheme=https.
        location /tls/ {{
            include {params};
            fastcgi_param HTTPS on;
{common}
        }}
        # The documented alternative to `mount`: nginx splits the path itself.
        location /split/ {{
            fastcgi_split_path_info ^(/split)(/.*)$;
            include {params};
            fastcgi_param PATH_INFO $fastcgi_path_info;
{common}
        }}
{locations}
    }}
"""

COMMON = """\
            fastcgi_pass pyfpm;
            fastcgi_keep_conn {keep_conn};
            fastcgi_request_buffering {request_buffering};
            fastcgi_buffering {buffering};"""


def onoff(flag):
    return "on" if flag else "off"


@dataclasses.dataclass
class Nginx:
    """A running nginx: .port to send HTTP to, .error_log() for what it logged. At teardown
    any error line fails the test unless it matches one of .expected_errors (regexes)."""
    port: int
    tmp: Path
    proc: subprocess.Popen
    expected_errors: list = dataclasses.field(default_factory=list)

    def error_log(self):
        return (self.tmp / "error.log").read_text(errors="replace")

    def http_host(self):
        """The HTTP_HOST an app behind this nginx sees for a request to 127.0.0.1:.port. It
        depends on the distribution's fastcgi_params: Debian 12's sets it to `$host`, which
        drops the port; nginx 1.30's to `$host$is_request_port$request_port`, and Ubuntu
        24.04's leaves the client's Host header, port included."""
        m = re.search(r"^\s*fastcgi_param\s+HTTP_HOST\s+(\S+?);", FASTCGI_PARAMS.read_text(), re.M)
        return "127.0.0.1" if m and m[1] == "$host" else "127.0.0.1:%d" % self.port

    def upstream_errors(self):
        """Lines of level error or worse that the test did not expect."""
        return [line for line in self.error_log().splitlines()
                if re.search(r"\[(error|crit|alert|emerg)\]", line)
                and not any(re.search(p, line) for p in self.expected_errors)]

    def request(self, method, path, **kwargs):
        return http_request(self.port, method, path, **kwargs)

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)


def nginx_config(tmp, port, upstream, *, keep_conn=False, request_buffering=True, buffering=True,
                 locations=""):
    common = COMMON.format(keep_conn=onoff(keep_conn), request_buffering=onoff(request_buffering),
                           buffering=onoff(buffering))
    return nginx_main(tmp, SITE.format(port=port, upstream=fastcgi_address(upstream),
                                       params=FASTCGI_PARAMS, common=common, locations=locations))


def nginx_main(tmp, site: str) -> str:
    """A whole nginx configuration around ``site`` (its http-level blocks), files in tmp."""
    # As root, nginx's workers would run as nobody and could not reach pyfpm's socket or tmp.
    user = "user root;" if os.geteuid() == 0 else ""
    return NGINX_MAIN.format(tmp=tmp, user=user, site=site)


def start_nginx(tmp, config: str, prefix=()) -> subprocess.Popen:
    """nginx running ``config`` (written to tmp/nginx.conf), its logs in tmp/error.log, in a
    session of its own; ``prefix`` goes before its command line (ip netns exec)."""
    conf = Path(tmp) / "nginx.conf"
    conf.write_text(config)
    return subprocess.Popen([*prefix, find_program("nginx"), "-p", str(tmp),
                             "-e", str(Path(tmp) / "error.log"), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.fixture
def nginx(tmp_path_factory):
    """Factory: nginx(upstream_address, keep_conn=, request_buffering=, buffering=, locations=)
    → a running Nginx in front of that pyfpm address."""
    find_program("nginx")  # skip (or fail under CI) before anything starts
    require(str(FASTCGI_PARAMS), FASTCGI_PARAMS.exists(), "the stock file ships with nginx-common")
    running, servers = [], []

    def start(upstream, **options):
        tmp = tmp_path_factory.mktemp("nginx")
        port = free_port()
        proc = start_nginx(tmp, nginx_config(tmp, port, upstream, **options))
        running.append(proc)
        server = Nginx(port, tmp, proc)
        servers.append(server)
        try:
            wait_port(port, proc, 10, "nginx")
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n--- nginx error.log ---\n{server.error_log()}") from None
        return server

    yield start
    import harness
    for proc in reversed(running):
        harness.kill_group(proc)
    # Whatever the test checked, nginx must have found no fault with pyfpm on the way.
    problems = [line for server in servers for line in server.upstream_errors()]
    if problems:
        pytest.fail("nginx logged errors:\n" + "\n".join(problems), pytrace=False)


# --- HTTP ----------------------------------------------------------------------------------

@dataclasses.dataclass
class HTTPResult:
    status: int
    headers: list
    body: bytes
    seconds: float

    def header(self, name):
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)


def http_request(port, method, path, body=None, headers=None, chunked=False, timeout=30, conn=None):
    """One HTTP/1.1 request to 127.0.0.1:port (on `conn` if given, kept open for reuse).
    chunked=True sends `body` (an iterable of bytes) with Transfer-Encoding: chunked."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    start = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}), encode_chunked=chunked)
        resp = conn.getresponse()
        data = resp.read()
        return HTTPResult(resp.status, resp.getheaders(), data, time.monotonic() - start)
    finally:
        if own:
            conn.close()


@pytest.fixture
def served(pyfpm, nginx):
    """Factory for the common case: pyfpm with a test app behind nginx; returns (nginx, pyfpm).
    nginx options (keep_conn, request_buffering, buffering, locations) go to nginx, the rest to
    pyfpm."""
    nginx_keys = {"keep_conn", "request_buffering", "buffering", "locations"}

    def start(**kwargs):
        server = pyfpm(**{k: v for k, v in kwargs.items() if k not in nginx_keys})
        front = nginx(server.address, **{k: v for k, v in kwargs.items() if k in nginx_keys})
        return front, server

    return start


@pytest.fixture
def dev_log():
    """A datagram socket bound at /dev/log, as a syslog daemon's (5 s receive timeout);
    skipped when the path is taken (a real daemon's) or cannot be created."""
    if os.path.exists("/dev/log"):
        pytest.skip("/dev/log exists (a syslog daemon's): not replacing it")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.bind("/dev/log")
    except OSError as e:
        s.close()
        pytest.skip("cannot bind /dev/log: %s" % e)
    s.settimeout(5)
    try:
        yield s
    finally:
        os.unlink("/dev/log")
        s.close()
