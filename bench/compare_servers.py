"""The servers bench/compare.py runs side by side: each FastCGI backend (pyfpm, PHP-FPM, uWSGI,
flup) with 2 workers on a unix socket or 127.0.0.1, and the one nginx in front of them all.

Every process is started in its own process group and stopped by killing that group, so a
backend's workers never outlive the harness. A backend that cannot start is kept with the
reason (``.error``) rather than raised: the report names it and the other servers run on."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fpm import client
from tests import harness
from tests.conftest import free_port

PEERS = Path(__file__).resolve().parent / "peers"
HELLO_PHP = PEERS / "hello.php"
FASTCGI_PARAMS = Path("/etc/nginx/fastcgi_params")
SERVERS = ("pyfpm", "php-fpm", "uwsgi", "flup")
START_TIMEOUT = 20.0
BIG = 102400  # bytes hello.php and hello_wsgi.py answer for a path ending in /big
COUNTED = "counted"  # the path whose requests nginx logs per client connection (keep_conn on)


def expected_answer(path: str) -> bytes | int:
    """What a backend answers on ``path`` (hello, post with a 1 MiB body, big, counted): the
    body, or for big its length."""
    return {"post": b"1048576", "big": BIG}.get(path, b"Hello world\n")


def find(name: str) -> str | None:
    """An executable on PATH or in /usr/sbin (Debian's nginx and php-fpm live there)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def php_fpm_binary() -> str | None:
    found = sorted(glob.glob("/usr/sbin/php-fpm*"))
    return find("php-fpm") or (found[-1] if found else None)


def command(server: str, conf: Path, address: str) -> list[str] | str:
    """The argv that runs ``server`` in the foreground, or why it cannot run here."""
    if server == "pyfpm":  # this checkout's fpm package, as the test suite runs it
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
        try:
            import flup.server.fcgi_fork  # noqa: F401
        except ImportError:
            return f"flup is not installed for {sys.executable}"
        return [sys.executable, str(PEERS / "flup_server.py"), address]
    raise ValueError(server)


CONFIGS = {"pyfpm": "pyfpm.conf", "php-fpm": "php-fpm.conf", "uwsgi": "uwsgi.ini"}


@dataclass
class Backend:
    """One FastCGI server instance: ``server`` on ``transport`` ("unix" or "tcp")."""
    server: str
    transport: str
    tmp: Path
    address: str = ""
    proc: subprocess.Popen | None = None
    error: str | None = None
    poll: float = 0.05  # seconds between the FastCGI requests that wait for a first answer
    ready_s: float | None = None  # from Popen to the first hello-world answer
    answered_at: float = 0.0  # time.monotonic() of the last answer wait_answering saw
    fresh_memory: dict | None = None  # idle workers' memory right after the start

    @property
    def key(self) -> str:
        return f"{self.server}/{self.transport}"

    @property
    def log(self) -> Path:
        return self.tmp / "output.log"

    def start(self) -> "Backend":
        """Start and wait for a first FastCGI response; on failure set ``.error``."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.address = (str(self.tmp / "fcgi.sock") if self.transport == "unix"
                        else f"127.0.0.1:{free_port()}")
        conf = self.tmp / CONFIGS.get(self.server, "none")
        if self.server in CONFIGS:
            template = (PEERS / CONFIGS[self.server]).read_text()
            conf.write_text(template.format(listen=self.address, tmp=self.tmp, peers=PEERS))
        argv = command(self.server, conf, self.address)
        if isinstance(argv, str):
            self.error = argv
            return self
        env = harness.fpm_env() if self.server == "pyfpm" else None
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

    def wait_answering(self, timeout: float) -> tuple[float, str | None]:
        """Poll with FastCGI hello-world requests, straight to the socket, until one is
        answered: (seconds it took, None), or (seconds, why not) after ``timeout`` or if the
        server exited. (flup's parent can be left without children for seconds.)"""
        start = time.monotonic()
        last = "no answer"
        while (now := time.monotonic()) - start < timeout:
            if self.proc.poll() is not None:
                return time.monotonic() - start, f"exited with code {self.proc.returncode}"
            try:
                response = client.request(self.address, "/hello", timeout=2,
                                          params={"SCRIPT_FILENAME": str(HELLO_PHP)})
                if response.status == 200 and response.body.startswith(b"Hello world"):
                    self.answered_at = time.monotonic()
                    return self.answered_at - start, None
                last = f"answered {response.status} {response.body[:80]!r}"
            except (OSError, client.FastCGIError) as e:  # refused, ENOENT: not listening yet
                last = f"{type(e).__name__}: {e}"
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


def startup_ms(server: str, tmp: Path, poll: float = 0.002) -> float | str:
    """Start ``server`` fresh on a unix socket in its own directory and process group: ms
    from Popen to its first hello-world answer over FastCGI (polled every ``poll`` s), or
    why it did not answer. Stopped and its directory removed before returning."""
    backend = Backend(server, "unix", tmp, poll=poll)
    try:
        backend.start()
    finally:
        backend.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return backend.error or backend.ready_s * 1000


@dataclass
class Nginx:
    """The one nginx (worker_processes 1) in front of every backend: location
    ``/<server>/<transport>/<off|on>/`` passes to that backend with that fastcgi_keep_conn;
    ``/<server>/<transport>/on/counted`` is the same, but logged per client connection."""
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
                name = f"{b.server}_{b.transport}_{keep}".replace("-", "_")
                # keep_conn on: nginx caches up to 16 idle upstream connections for 1 s, so
                # none is still held to a worker when the next cell for that server starts.
                cache = (" keepalive 16; keepalive_requests 1000000; keepalive_timeout 1s;"
                         if keep == "on" else "")
                upstreams.append(f"    upstream {name} {{ server {target};{cache} }}")
                prefix = f"/{b.server}/{b.transport}/{keep}/"
                to_backend = (f"include {FASTCGI_PARAMS}; fastcgi_param SCRIPT_FILENAME "
                              f"{HELLO_PHP}; fastcgi_keep_conn {keep}; fastcgi_pass {name};")
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

    def url(self, backend: Backend, keep: str, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{backend.server}/{backend.transport}/{keep}/{path}"

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
