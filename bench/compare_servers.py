"""The servers bench/compare.py runs side by side: each FastCGI backend (pyfpm, PHP-FPM, uWSGI,
flup) and each HTTP one (gunicorn, Granian twice) with 2 workers on a unix socket or
127.0.0.1, and the one nginx in front of them all.

Every process is started in its own process group and stopped by killing that group, so a
backend's workers never outlive the harness. A backend that cannot start is kept with the
reason (``.error``) rather than raised: the report names it and the other servers run on."""

from __future__ import annotations

import glob
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

from djangobench import page as django_page
from fpm import client
from tests import harness
from tests.conftest import free_port

BENCH = Path(__file__).resolve().parent
PEERS = BENCH / "peers"
HELLO_PHP = PEERS / "hello.php"
FASTCGI_PARAMS = Path("/etc/nginx/fastcgi_params")
FASTCGI_SERVERS = ("pyfpm", "php-fpm", "uwsgi", "flup")
# What Python users pick instead (issue 17), behind nginx's proxy_pass: gunicorn's sync
# workers; Granian's WSGI interface with its default blocking threads (backlog 1024 / 2
# workers / 2 = 256 per worker) and with 1 per worker, as many at a time as 2 sync workers.
HTTP_SERVERS = ("gunicorn", "granian", "granian-1t")
KEEPALIVE = ("granian", "granian-1t")  # nginx keeps idle connections to these (gunicorn's
# sync workers close every connection after its response: no keep-alive to keep)
SERVERS = FASTCGI_SERVERS + HTTP_SERVERS
# pyfpm from another checkout (compare.py --base DIR), for a before/after in one run: pyfpm's
# config, app, command and signals (software()), only the fpm package differs. Not in
# SERVERS (--servers all is the peers): it runs when named.
BASE = "pyfpm-base"
START_TIMEOUT = 20.0
BIG = 102400  # bytes hello.php and hello_wsgi.py answer for a path ending in /big
COUNTED = "counted"  # the path whose requests nginx logs per client connection (keep_conn on)

# What an instance of a server serves (Backend.variant): "hello" (bench/peers/hello_wsgi.py
# or hello.php), "django" (bench/djangobench, not for PHP-FPM), "recycle" (hello, with
# workers recycled every MAX_REQUESTS requests where the server can, and for the process
# managers pm = ondemand, idle workers stopped after IDLE_TIMEOUT_S).
VARIANTS = ("hello", "django", "recycle")
APPS = {"hello": ("hello_wsgi", "app", PEERS), "django": ("djangobench.wsgi", "application", BENCH)}
MAX_REQUESTS = 50
IDLE_TIMEOUT_S = 1

# How each server reloads (the signal the recycle scenario sends) and recycles its workers.
RELOAD_SIGNAL = {"pyfpm": signal.SIGUSR2, "php-fpm": signal.SIGUSR2, "uwsgi": signal.SIGHUP,
                 "flup": signal.SIGHUP, "gunicorn": signal.SIGHUP, "granian": signal.SIGHUP,
                 "granian-1t": signal.SIGHUP}
RECYCLING = {
    "pyfpm": f"USR2; pm = ondemand (idle {IDLE_TIMEOUT_S} s), pm.max_requests = {MAX_REQUESTS}",
    "php-fpm": f"USR2; pm = ondemand (idle {IDLE_TIMEOUT_S} s), pm.max_requests = {MAX_REQUESTS}",
    "uwsgi": f"HUP (graceful reload); max-requests = {MAX_REQUESTS}",
    "flup": f"HUP (run() returns, run again: the socket is closed and bound anew); "
            f"maxRequests = {MAX_REQUESTS}",
    "gunicorn": f"HUP (new workers, the old ones finish); --max-requests {MAX_REQUESTS}",
    "granian": "HUP (workers reloaded); no per-request recycling (only --workers-lifetime, "
               "at least 60 s, or --workers-max-rss)",
}
RECYCLING["granian-1t"] = RECYCLING["granian"]


def software(server: str) -> str:
    """The server whose config, command and signals ``server`` takes: pyfpm for BASE."""
    return "pyfpm" if server == BASE else server


def serves(server: str, variant: str) -> bool:
    """Whether ``server`` has an instance for ``variant`` (PHP-FPM runs no Django)."""
    return not (variant == "django" and server == "php-fpm")


def protocol(server: str) -> str:
    return "http" if server in HTTP_SERVERS else "fastcgi"


def answer_ok(what: str, status: int, data: bytes) -> bool:
    """Whether a backend answered ``what`` (hello, slow, post with a 1 MiB body, big,
    counted, django) as it should: hello world; the body's length; 100 KiB; the Django page
    with one <li> per item of djangobench/page.py."""
    if status != 200:
        return False
    if what == "big":
        return len(data) == BIG
    if what == "django":
        return (django_page.TITLE.encode() in data and data.rstrip().endswith(b"</html>")
                and data.count(b"<li") == len(django_page.ITEMS))
    return data == (b"1048576" if what == "post" else b"Hello world\n")


def find(name: str) -> str | None:
    """An executable on PATH or in /usr/sbin (Debian's nginx and php-fpm live there)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def php_fpm_binary() -> str | None:
    found = sorted(glob.glob("/usr/sbin/php-fpm*"))
    return find("php-fpm") or (found[-1] if found else None)


def importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def command(server: str, conf: Path, address: str, variant: str = "hello") -> list[str] | str:
    """The argv that runs ``server`` in the foreground, or why it cannot run here."""
    module, name, directory = APPS["django" if variant == "django" else "hello"]
    target = f"{module}:{name}"
    recycle = variant == "recycle"
    server = software(server)
    if server == "pyfpm":  # the fpm package of pyfpm_env()'s checkout, as the test suite runs it
        return harness.COMMAND + ["-F", "-O", "-R", "-y", str(conf)]
    if server == "php-fpm":
        binary = php_fpm_binary()
        return [binary, "-F", "-R", "-y", str(conf)] if binary else "php-fpm is not installed"
    if server == "uwsgi":
        binary = find("uwsgi-core") or find("uwsgi")
        if not binary:
            return "uwsgi-core is not installed"
        if not os.path.exists("/usr/lib/uwsgi/plugins/python3_plugin.so"):
            return "uwsgi-plugin-python3 is not installed"
        return [binary, "--ini", str(conf)]
    if server == "flup":
        if not importable("flup.server.fcgi_fork"):
            return f"flup is not installed for {sys.executable}"
        return [sys.executable, str(PEERS / "flup_server.py"), address, target, str(directory),
                str(MAX_REQUESTS if recycle else 0)]
    unix = address.startswith("/")
    host, _, port = address.rpartition(":")
    if server == "gunicorn":
        if not importable("gunicorn"):
            return f"gunicorn is not installed for {sys.executable}"
        # --preload: the app imported before the fork, as pyfpm, uWSGI and flup do here
        return ([sys.executable, "-m", "gunicorn", "--workers", "2", "--worker-class", "sync",
                 "--preload", "--backlog", "511", "--chdir", str(directory),
                 "--bind", f"unix:{address}" if unix else address]
                + (["--max-requests", str(MAX_REQUESTS)] if recycle else []) + [target])
    if server in ("granian", "granian-1t"):
        if not importable("granian"):
            return f"granian is not installed for {sys.executable}"
        # Granian spawns its workers fresh (no preload); its backlog stays at the default,
        # which sets its default number of blocking threads.
        return ([sys.executable, "-m", "granian", "--interface", "wsgi", "--workers", "2",
                 "--working-dir", str(directory), "--no-access-log", "--log-level", "warning"]
                + (["--blocking-threads", "1"] if server == "granian-1t" else [])
                + (["--uds", address] if unix
                   else ["--host", host, "--port", port]) + [target])
    raise ValueError(server)


CONFIGS = {"pyfpm": "pyfpm.conf", "php-fpm": "php-fpm.conf", "uwsgi": "uwsgi.ini"}


def config_text(server: str, variant: str, listen: str, tmp: Path) -> str:
    """``server``'s config from its template in bench/peers, for ``variant``: the app, the
    process manager (pyfpm, PHP-FPM) and what the variant adds."""
    module, name, directory = APPS["django" if variant == "django" else "hello"]
    if variant == "recycle":
        pm = (f"pm = ondemand\npm.max_children = 2\npm.process_idle_timeout = {IDLE_TIMEOUT_S}s"
              f"\npm.max_requests = {MAX_REQUESTS}")
        extra = f"max-requests = {MAX_REQUESTS}"
    else:
        pm, extra = "pm = static\npm.max_children = 2", ""
    if variant == "django":  # Debian's uWSGI plugin is the system Python's: Django from ours
        extra = f"pythonpath = {sysconfig.get_paths()['purelib']}"
    return (PEERS / CONFIGS[software(server)]).read_text().format(
        listen=listen, tmp=tmp, module=module, callable=name, app_dir=directory, pm=pm,
        extra=extra)


def pyfpm_env(root: Path | None) -> dict[str, str]:
    """The environment pyfpm runs in: the fpm package of this checkout (``root`` None, as
    the test suite runs it) or of ``root`` (BASE) first on PYTHONPATH."""
    if root is None:
        return harness.fpm_env()
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root)] + ([path] if path else []))}


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (gunicorn's and Granian's, when they listen on one)."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def http_get(address: str, path: str, timeout: float) -> tuple[int, bytes]:
    """One GET straight to an HTTP server at ``address`` (a socket path or HOST:PORT)."""
    if address.startswith("/"):
        conn = UnixHTTPConnection(address, timeout)
    else:
        host, _, port = address.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": "127.0.0.1"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class Backend:
    """One instance of ``server`` on ``transport`` ("unix" or "tcp") serving ``variant``
    (VARIANTS)."""
    server: str
    transport: str
    tmp: Path
    variant: str = "hello"
    address: str = ""
    proc: subprocess.Popen | None = None
    error: str | None = None
    poll: float = 0.05  # seconds between the requests that wait for a first answer
    ready_s: float | None = None  # from Popen to the first hello-world answer
    answered_at: float = 0.0  # time.monotonic() of the last answer wait_answering saw
    fresh_memory: dict | None = None  # idle workers' memory right after the start
    root: Path | None = None  # the pyfpm checkout BASE runs (compare.py --base)

    @property
    def label(self) -> str:
        """The server, and the variant when it is not hello world: nginx's location prefix."""
        return self.server if self.variant == "hello" else f"{self.server}-{self.variant}"

    @property
    def key(self) -> str:
        return f"{self.label}/{self.transport}"

    @property
    def protocol(self) -> str:
        return protocol(self.server)

    @property
    def log(self) -> Path:
        return self.tmp / "output.log"

    def start(self) -> "Backend":
        """Start and wait for a first FastCGI response; on failure set ``.error``."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.address = (str(self.tmp / "fcgi.sock") if self.transport == "unix"
                        else f"127.0.0.1:{free_port()}")
        conf = self.tmp / CONFIGS.get(software(self.server), "none")
        if software(self.server) in CONFIGS:
            conf.write_text(config_text(self.server, self.variant, self.address, self.tmp))
        argv = command(self.server, conf, self.address, self.variant)
        if isinstance(argv, str):
            self.error = argv
            return self
        env = pyfpm_env(self.root) if software(self.server) == "pyfpm" else None
        with open(self.log, "wb") as log:
            started = time.monotonic()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         cwd=self.tmp, env=env, start_new_session=True)
        self.error = self._wait_ready()
        self.ready_s = None if self.error else self.answered_at - started
        if self.error:
            self.stop()
        return self

    def _wait_ready(self) -> str | None:
        waited, why = self.wait_answering(START_TIMEOUT)
        return why and f"{why}: {self.log_tail()}"

    def ask(self, what: str) -> tuple[int, bytes]:
        """One GET of /``what`` straight to the socket, in the server's protocol."""
        if self.protocol == "http":
            return http_get(self.address, "/" + what, timeout=2)
        response = client.request(self.address, "/" + what, timeout=2,
                                  params={"SCRIPT_FILENAME": str(HELLO_PHP)})
        return response.status, response.body

    def wait_answering(self, timeout: float) -> tuple[float, str | None]:
        """Poll with requests for the variant's page (hello world, or Django's), straight to
        the socket, until one is answered: (seconds it took, None), or (seconds, why not)
        after ``timeout`` or if the server exited. (flup's parent can be left without
        children for seconds.)"""
        start = time.monotonic()
        last = "no answer"
        what = "django" if self.variant == "django" else "hello"
        while (now := time.monotonic()) - start < timeout:
            if self.proc.poll() is not None:
                return time.monotonic() - start, f"exited with code {self.proc.returncode}"
            try:
                status, body = self.ask(what)
                if answer_ok(what, status, body):
                    self.answered_at = time.monotonic()
                    return self.answered_at - start, None
                last = f"answered {status} {body[:80]!r}"
            except (OSError, client.FastCGIError, http.client.HTTPException) as e:
                last = f"{type(e).__name__}: {e}"  # refused, ENOENT: not listening yet
            time.sleep(max(0.0, self.poll - (time.monotonic() - now)))
        return time.monotonic() - start, f"no hello-world response after {timeout:g} s ({last})"

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        extra = [self.tmp / "php-fpm.log", self.tmp / "uwsgi.log"]
        for path in extra:
            if path.exists():
                text += path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.error is None and self.proc.poll() is None

    def master(self) -> int:
        """The pid of the process that owns the workers (flup's parent, the masters)."""
        return self.proc.pid

    def workers(self) -> list[int]:
        return harness.children_of(self.master())

    def pids(self) -> list[int]:
        return [self.master(), *self.workers()]

    def stop(self) -> None:
        if self.proc is not None:
            harness.kill_group(self.proc, grace=1.0)


def startup_ms(server: str, tmp: Path, poll: float = 0.002, root: Path | None = None
               ) -> float | str:
    """Start ``server`` fresh on a unix socket in its own directory and process group: ms
    from Popen to its first hello-world answer (polled every ``poll`` s), or
    why it did not answer. Stopped and its directory removed before returning. ``root``:
    Backend.root."""
    backend = Backend(server, "unix", tmp, poll=poll, root=root)
    try:
        backend.start()
    finally:
        backend.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return backend.error or backend.ready_s * 1000


@dataclass
class Nginx:
    """The one nginx (worker_processes 1) in front of every backend: location
    ``/<label>/<transport>/<off|on>/`` passes to that backend (Backend.label: the server, and
    the variant if not hello world) with that fastcgi_keep_conn; ``…/on/counted`` is the
    same, but logged per client connection. An HTTP server gets its usual front under both
    prefixes, keep_conn being FastCGI's: proxy_pass, to Granian with upstream keepalive."""
    tmp: Path
    backends: list[Backend]
    port: int = 0
    proc: subprocess.Popen | None = None
    log_offset: int = field(default=0)
    conns_offset: int = field(default=0)

    @property
    def error_log(self) -> Path:
        return self.tmp / "nginx-error.log"

    @property
    def conns_log(self) -> Path:
        return self.tmp / "conns.log"

    def config(self) -> str:
        upstreams, locations = [], []
        for b in self.backends:
            target = f"unix:{b.address}" if b.transport == "unix" else b.address
            for keep in ("off", "on"):
                name = f"{b.label}_{b.transport}_{keep}".replace("-", "_")
                upstreams.append(f"    upstream {name} {{ server {target};"
                                 f"{upstream_cache(b.server, keep)} }}")
                prefix = f"/{b.label}/{b.transport}/{keep}/"
                to_backend = pass_to(b.server, keep, name)
                locations.append(f"        location {prefix} {{ {to_backend} }}")
                if keep == "on":  # buffered: one write per 64 KiB, at most 1 s late
                    locations.append(
                        f"        location = {prefix}{COUNTED} {{ access_log {self.conns_log} "
                        f"conns buffer=64k flush=1s; {to_backend} }}")
        return (PEERS / "nginx.conf").read_text().format(
            tmp=self.tmp, port=self.port, upstreams="\n".join(upstreams),
            locations="\n".join(locations))

    def start(self) -> "Nginx":
        binary = find("nginx")
        if not binary:
            raise RuntimeError("nginx is not installed (scripts/install-bench-deps)")
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = self.tmp / "nginx.conf"
        conf.write_text(self.config())
        self.proc = subprocess.Popen([binary, "-p", str(self.tmp), "-e", str(self.error_log),
                                      "-c", str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with code {self.proc.returncode}: "
                                   f"{self.error_log.read_text(errors='replace')[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx not listening on 127.0.0.1:{self.port} after 10 s")
                time.sleep(0.02)

    def url(self, backend: Backend, keep: str, what: str) -> str:
        return f"http://127.0.0.1:{self.port}{self.path(backend, keep, what)}"

    @staticmethod
    def path(backend: Backend, keep: str, what: str) -> str:
        return f"/{backend.label}/{backend.transport}/{keep}/{what}"

    def pids(self) -> list[int]:
        return [self.proc.pid, *harness.children_of(self.proc.pid)]

    def new_errors(self) -> list[str]:
        """The error-level lines nginx logged since the last call."""
        lines, self.log_offset = _new_lines(self.error_log, self.log_offset)
        return [line for line in lines if "[error]" in line or "[crit]" in line or "[alert]" in line]

    def new_counted(self) -> list[str]:
        """The lines of the per-connection log written since the last call (nginx writes
        them at most 1 s after the request: wait before reading)."""
        lines, self.conns_offset = _new_lines(self.conns_log, self.conns_offset)
        return lines

    def stop(self) -> None:
        if self.proc is not None:
            harness.kill_group(self.proc, grace=1.0)


def upstream_cache(server: str, keep: str) -> str:
    """What an upstream block adds: idle connections nginx keeps to the server, for FastCGI
    with keep_conn on, always for Granian: up to 16 for 1 s, so none is still held to a
    worker when the next cell for that server starts."""
    keeps = keep == "on" if protocol(server) == "fastcgi" else server in KEEPALIVE
    return " keepalive 16; keepalive_requests 1000000; keepalive_timeout 1s;" if keeps else ""


def pass_to(server: str, keep: str, upstream: str) -> str:
    """A location's directives that pass its requests to ``upstream``: FastCGI with nginx's
    stock params and ``keep`` as fastcgi_keep_conn; HTTP with the client's Host (Django checks
    it; nginx would send the upstream's name) and, to a keepalive upstream, HTTP/1.1 without
    `Connection: close`, as nginx's documentation has it for upstream keepalive."""
    if protocol(server) == "fastcgi":
        return (f"include {FASTCGI_PARAMS}; fastcgi_param SCRIPT_FILENAME {HELLO_PHP}; "
                f"fastcgi_keep_conn {keep}; fastcgi_pass {upstream};")
    kept = ('proxy_http_version 1.1; proxy_set_header Connection ""; '
            if server in KEEPALIVE else "")
    return f"proxy_set_header Host $host; {kept}proxy_pass http://{upstream};"


def _new_lines(path: Path, offset: int) -> tuple[list[str], int]:
    """The whole lines of ``path`` after ``offset``, and the offset after them (a line nginx
    is still writing is read next time); none if the file is not there yet."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    return data[:end].decode(errors="replace").splitlines(), offset + end
