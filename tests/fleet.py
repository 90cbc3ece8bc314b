"""A fleet of pyfpm hosts behind one nginx, built by the tests themselves (issue 18).

Each host is a network namespace of its own with one end of a veth pair (10.213.K.2), the
other end in this namespace (10.213.K.1), and a pyfpm master started inside it listening on
10.213.K.2:9000. nginx runs here with conf/nginx/fleet.conf as shipped, its addresses and
port replaced by the test's. Cutting a host's link is `ip link set down` on its side. Loads
go to nginx on loopback and from it to these namespaces only; every namespace and link is
removed at the end (and any left by a test run that was killed, at the start).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import harness
from tests.conftest import (FASTCGI_PARAMS, find_program, free_port, nginx_main, pool_section,
                            pyfpm_config, start_nginx, wait_port)

CONF = Path(__file__).resolve().parent.parent / "conf"
SHIPPED = CONF / "nginx" / "fleet.conf"
METRICS = CONF / "prometheus" / "nginx-metrics.conf"  # run as shipped inside each host
PROMETHEUS = CONF / "prometheus" / "prometheus.yml"
RULES = CONF / "prometheus" / "pyfpm.rules.yml"
DASHBOARD = CONF / "prometheus" / "dashboard.md"
PORT = 9000
# www's pm.status_listen port and the metrics server's, as nginx-metrics.conf has them.
STATUS_PORT = int(re.search(r"^ +fastcgi_pass 127\.0\.0\.1:(\d+);$", METRICS.read_text(), re.M)[1])
METRICS_PORT = int(re.search(r"^ +listen (\d+);$", METRICS.read_text(), re.M)[1])
PREFIX = "pff"  # every namespace and interface of a fleet starts with it


def unavailable() -> str | None:
    """Why this machine cannot build a fleet, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    probe = PREFIX + "probe"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    for argv in (["netns", "add", probe], ["netns", "exec", probe, "true"]):
        done = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            subprocess.run(["ip", "netns", "del", probe], capture_output=True)
            return "ip %s failed: %s" % (" ".join(argv[:2]), done.stderr.strip())
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError("ip %s: %s" % (" ".join(args), done.stderr.strip()))


def sweep() -> None:
    """Remove what fleets whose test run was killed (or failed midway) left: the processes
    in their namespaces (which keep a namespace and its veth alive), the namespaces, and
    any veth left here."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in re.findall(r"^(%s\S+)" % PREFIX, listed, re.M):
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                              text=True).stdout.split()
        for pid in map(int, pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    for link in os.listdir("/sys/class/net"):
        if link.startswith(PREFIX):
            subprocess.run(["ip", "link", "del", link], capture_output=True)


# Binds a listening socket in the namespace it runs in and sends it to the unix socket
# argv[3]: the socket systemd would hold for the host (Host.activate).
BIND = """\
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4096)
to = socket.socket(socket.AF_UNIX)
to.connect(sys.argv[3])
socket.send_fds(to, [b"fd"], [s.fileno()])
"""


@dataclass
class Host:
    index: int
    tmp: Path
    server: harness.Server | None = None
    sockets: list[socket.socket] = field(default_factory=list)  # held as systemd holds them
    pools: tuple[str, ...] = ("www",)  # see pool_address()

    @property
    def ns(self) -> str:
        return "%sh%d" % (PREFIX, self.index)

    @property
    def link(self) -> str:
        """The veth end in the test's namespace."""
        return "%sr%d" % (PREFIX, self.index)

    @property
    def ip(self) -> str:
        """Its address, in its namespace."""
        return "10.213.%d.2" % self.index

    @property
    def peer_ip(self) -> str:
        """The address of the link's end here: nginx and Prometheus come from it."""
        return "10.213.%d.1" % self.index

    @property
    def address(self) -> str:
        return self.pool_address(0)

    def pool_address(self, i: int) -> str:
        """Where pools[i] listens: www on PORT, each other on a port of its own."""
        return "%s:%d" % (self.ip, PORT + 100 * i)

    @staticmethod
    def status_port(i: int) -> int:
        """pools[i]'s pm.status_listen port (on 127.0.0.1)."""
        return STATUS_PORT + i

    @property
    def name(self) -> str:
        return "h%d" % self.index

    def config(self) -> str:
        # raw_app answers with a list, sent with its end in one write as a Django response
        # is: a host killed mid-request has sent all of a response or none of it, and nginx
        # sends again what it had no answer to. (The validator's iterator would have each
        # chunk sent as it comes, PEP 3333, and a kill between the last and the end cut the
        # response after nginx had passed its start on.)
        # The status and ping as conf/pool.d/www.conf suggests, on a listener of their own
        # (conf/prometheus/nginx-metrics.conf passes to it), and the front alone let in
        # (with 127.0.0.1, for that listener), as the README's guide says.
        pages = ("pm.status_path = /status\nping.path = /ping\npm.status_listen = 127.0.0.1:%d\n"
                 "listen.allowed_clients = %s, 127.0.0.1\n")
        return pyfpm_config(self.tmp, listen=self.address, workers=2, app="wsgi_app:raw_app",
                            extra=pages % (self.status_port(0), self.peer_ip)
                            + "env[FLEET_HOST] = %s" % self.name) + \
            "".join("\n" + pool_section(pool, listen=self.pool_address(i),
                                        workers=1, app="wsgi_app:raw_app",
                                        extra=pages % (self.status_port(i), self.peer_ip))
                    for i, pool in enumerate(self.pools[1:], 1))

    def start(self) -> "Host":
        """Start (or start again) this host's pyfpm master in its namespace: as systemd
        starts a socket-activated service once activate() was called."""
        command = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "fpm"]
        if self.sockets:
            self.server = harness.ActivatedServer(self.config(), self.tmp, command=command,
                                                  sockets=self.sockets, names=["www"])
        else:
            self.server = harness.Server(self.config(), self.tmp, command=command)
        self.server.start()
        return self

    def activate(self) -> None:
        """Its listening socket bound once, in its namespace, and passed to each master it
        starts from now on (LISTEN_FDS), as systemd's pyfpm.socket does; stop it first."""
        for sock in self.sockets:
            sock.close()
        path = self.tmp / "bind.sock"
        with socket.socket(socket.AF_UNIX) as waiting:
            waiting.bind(str(path))
            waiting.listen(1)
            waiting.settimeout(10)
            subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-c", BIND,
                            self.ip, str(PORT), str(path)],
                           check=True, timeout=10)
            conn, _ = waiting.accept()
            with conn:
                _, fds, _, _ = socket.recv_fds(conn, 16, 1)
        path.unlink()
        self.sockets = [socket.socket(fileno=fds[0])]

    def kill(self) -> None:
        """The host dies: SIGKILL to its master and every worker."""
        self.server.stop()

    def metrics_nginx(self) -> subprocess.Popen:
        """nginx in this host's namespace with conf/prometheus/nginx-metrics.conf as shipped,
        its allow list opened to the fleet's addresses (Prometheus scrapes from 10.213.K.1);
        listening at METRICS_PORT soon."""
        site = re.sub(r"\b192\.0\.2\.\d+\b", "10.213.0.0/16", METRICS.read_text())
        # Each other pool's locations, as the file says to add them: www's, renamed.
        www = "".join(re.findall(r"^    location = /(?:metrics|ping)/www \{\n.*?^    \}\n",
                                 site, re.M | re.S))
        assert www.count("location") == 2, "nginx-metrics.conf: www's two locations expected"
        more = "".join("\n" + www.replace("/www", "/" + pool).replace(
            "127.0.0.1:%d" % self.status_port(0), "127.0.0.1:%d" % self.status_port(i))
            for i, pool in enumerate(self.pools[1:], 1))
        end = site.rindex("}")  # the server's
        site = site[:end] + more + site[end:]
        tmp = self.tmp / "metrics"
        tmp.mkdir(exist_ok=True)
        return start_nginx(tmp, nginx_main(tmp, site), ["ip", "netns", "exec", self.ns])


class Fleet:
    """Hosts added with add(); nginx() starts the front (or reloads it with every host)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.hosts: list[Host] = []
        self.front: subprocess.Popen | None = None
        self.port = 0
        self.keep_conn_off = False
        self.helpers: list[subprocess.Popen] = []  # the hosts' metrics nginx, Prometheus

    def add(self) -> Host:
        index = len(self.hosts) + 1
        host = Host(index, self.tmp / ("h%d" % index))
        host.tmp.mkdir()
        self.hosts.append(host)
        ip("netns", "add", host.ns)
        ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
        ip("addr", "add", host.peer_ip + "/24", "dev", host.link)
        ip("link", "set", host.link, "up")
        ip("-n", host.ns, "addr", "add", host.ip + "/24", "dev", "eth0")
        ip("-n", host.ns, "link", "set", "eth0", "up")
        ip("-n", host.ns, "link", "set", "lo", "up")
        return host.start()

    def keep_conn(self, on: bool) -> None:
        """fastcgi_keep_conn as shipped (on), or off: each request on a connection of its
        own (nginx reloaded if it runs)."""
        self.keep_conn_off = not on
        if self.front is not None:
            self.nginx()

    def set_link(self, host: Host, up: bool) -> None:
        """The host's own interface down (or up), as its cable cut: what nginx sends there
        is lost. Not this side's end: its route would go with it, and what nginx sends
        then take the default route (here, to a proxy that answers HTTP)."""
        ip("-n", host.ns, "link", "set", "eth0", "up" if up else "down")

    # --- the front ------------------------------------------------------------------------

    def nginx_config(self) -> str:
        """conf/nginx/fleet.conf with this fleet's hosts and port."""
        site = SHIPPED.read_text()
        servers = re.findall(r"^    server 192\.0\.2\.\d+:9000 (.*);$", site, re.M)
        assert servers, "conf/nginx/fleet.conf lists no upstream server"
        lines = "".join("    server %s %s;\n" % (h.address, servers[0]) for h in self.hosts)
        site = re.sub(r"(?:^    server 192\.0\.2\.\d+:9000 .*;\n)+", lines, site, flags=re.M)
        site = site.replace("listen 80;", "listen 127.0.0.1:%d;" % self.port)
        if self.keep_conn_off:
            site = site.replace("fastcgi_keep_conn on;", "fastcgi_keep_conn off;")
        site = site.replace("include fastcgi_params;", "include %s;" % FASTCGI_PARAMS)
        return site

    def nginx(self) -> int:
        """Start nginx in front of every host, or reload it (HUP) with the hosts added since;
        its port."""
        if self.front is None:
            self.port = free_port()
            self.front = start_nginx(self.tmp, nginx_main(self.tmp, self.nginx_config()))
            wait_port(self.port, self.front, 10, "nginx")
        else:
            # Done once the previous workers are gone: until then one may still take a
            # client's connection, and close it (idle, between two requests) as it ends.
            previous = harness.children_of(self.front.pid)
            (self.tmp / "nginx.conf").write_text(nginx_main(self.tmp, self.nginx_config()))
            self.front.send_signal(signal.SIGHUP)
            harness.wait_for("nginx to reload (its previous workers to exit)",
                             lambda: not any(map(harness.alive, previous)), 10)
        return self.port

    def error_log(self) -> str:
        path = self.tmp / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def upstream_errors(self) -> list[str]:
        return [line for line in self.error_log().splitlines()
                if re.search(r"\[(error|crit|alert|emerg)\]", line)]

    def watch(self, pools: tuple[str, ...]) -> "Prometheus":
        """Every host started again with ``pools`` (www first), each host's metrics nginx,
        and Prometheus here scraping them with conf/prometheus/prometheus.yml and its rules
        as shipped (1 s intervals)."""
        for host in self.hosts:
            host.pools = pools
            host.kill()
            host.start()
        for host in self.hosts:  # each kept before it is waited for: close() ends it
            self.helpers.append(host.metrics_nginx())
            wait_port(METRICS_PORT, self.helpers[-1], 10, "%s's metrics nginx" % host.name,
                      host=host.ip)
        prometheus = Prometheus(self.tmp / "prometheus",
                                ["%s:%d" % (h.ip, METRICS_PORT) for h in self.hosts], pools)
        self.helpers.append(prometheus.proc)
        prometheus.wait_ready()
        return prometheus

    def close(self) -> None:
        for proc in [self.front, *self.helpers]:
            if proc is not None:
                harness.kill_group(proc)
        for host in self.hosts:
            if host.server is not None:
                host.server.stop()
            subprocess.run(["ip", "netns", "del", host.ns], capture_output=True)
            for sock in host.sockets:
                sock.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
                os.path.exists("/sys/class/net/" + h.link) for h in self.hosts):
            time.sleep(0.05)


# HTTP to loopback and the fleet's namespaces, never through a proxy the environment names.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Prometheus:
    """Debian's prometheus on a loopback port, scraping ``pools`` on ``targets`` with the
    shipped scrape config and rules, every second; query() asks its HTTP API."""

    def __init__(self, tmp: Path, targets: list[str], pools: tuple[str, ...]):
        tmp.mkdir()
        text = PROMETHEUS.read_text()
        shipped = re.findall(r"^      - targets: \[(.*)\]\n(?:^ {8}.*\n)*?^ {10}__metrics_path__: "
                             r"/metrics/www\n", text, re.M)
        assert len(shipped) == 1, "conf/prometheus/prometheus.yml: www's one group expected"
        group = re.search(r"^      - targets: .*?/metrics/www\n", text, re.M | re.S)[0]
        listed = ", ".join('"%s"' % t for t in targets)
        # A group per pool, as the file says to add them: www's, renamed.
        text = text.replace(group, "".join(
            group.replace(shipped[0], listed).replace("/metrics/www", "/metrics/" + pool)
            for pool in pools))
        text = re.sub(r"^(  (?:scrape|evaluation)_interval:) 15s$", r"\1 1s", text, flags=re.M)
        (tmp / "prometheus.yml").write_text(text)
        shutil.copy(RULES, tmp / RULES.name)
        self.port = free_port()
        self.log = tmp / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [find_program("prometheus"), "--config.file", str(tmp / "prometheus.yml"),
                 "--storage.tsdb.path", str(tmp / "data"), "--web.listen-address",
                 "127.0.0.1:%d" % self.port], stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def wait_ready(self) -> None:
        harness.wait_for("prometheus to be ready (%s)" % self.log, self._ready, 30, every=0.1)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError("prometheus exited with code %s:\n%s"
                               % (self.proc.returncode, self.log.read_text(errors="replace")))
        try:
            with DIRECT.open("http://127.0.0.1:%d/-/ready" % self.port, timeout=2):
                return True
        except OSError:  # refused, or 503 while it starts
            return False

    def query(self, expr: str) -> list[dict]:
        """The instant vector ``expr`` gives now: [{"metric": labels, "value": float}];
        RuntimeError with Prometheus's words when it fails."""
        url = "http://127.0.0.1:%d/api/v1/query?%s" % (self.port,
                                                      urllib.parse.urlencode({"query": expr}))
        try:
            with DIRECT.open(url, timeout=10) as r:
                answer = json.load(r)
        except urllib.error.HTTPError as e:
            answer = json.load(e)
        if answer["status"] != "success":
            raise RuntimeError("prometheus: %s: %s" % (expr, answer.get("error")))
        return [{"metric": s["metric"], "value": float(s["value"][1])}
                for s in answer["data"]["result"]]
