"""A fleet of pyfpm hosts behind one nginx, built by the tests themselves (issue 18).

Each host is a network namespace of its own with one end of a veth pair (10.213.K.2), the
other end in this namespace (10.213.K.1), and a pyfpm master started inside it listening on
10.213.K.2:9000. nginx runs here with conf/nginx/fleet.conf as shipped, its addresses and
port replaced by the test's. Cutting a host's link is `ip link set down` on this side. Loads
go to nginx on loopback and from it to these namespaces only; every namespace and link is
removed at the end (and any left by a test run that was killed, at the start).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import harness
from tests.conftest import FASTCGI_PARAMS, find_program, free_port, pyfpm_config, wait_port

SHIPPED = Path(__file__).resolve().parent.parent / "conf" / "nginx" / "fleet.conf"
PORT = 9000
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
    """Remove the namespaces of fleets whose test run was killed (their veths go with them)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in re.findall(r"^(%s\S+)" % PREFIX, listed, re.M):
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@dataclass
class Host:
    index: int
    tmp: Path
    server: harness.Server | None = None

    @property
    def ns(self) -> str:
        return "%sh%d" % (PREFIX, self.index)

    @property
    def link(self) -> str:
        """The veth end in the test's namespace."""
        return "%sr%d" % (PREFIX, self.index)

    @property
    def address(self) -> str:
        return "10.213.%d.2:%d" % (self.index, PORT)

    @property
    def name(self) -> str:
        return "h%d" % self.index

    def config(self) -> str:
        # raw_app answers with a list, sent with its end in one write as a Django response
        # is: a host killed mid-request has sent all of a response or none of it, and nginx
        # sends again what it had no answer to. (The validator's iterator would have each
        # chunk sent as it comes, PEP 3333, and a kill between the last and the end cut the
        # response after nginx had passed its start on.)
        return pyfpm_config(self.tmp, listen=self.address, workers=2, app="wsgi_app:raw_app",
                            extra="pm.status_path = /fpm-status\nping.path = /fpm-ping\n"
                                  "env[FLEET_HOST] = %s" % self.name)

    def start(self) -> "Host":
        """Start (or start again) this host's pyfpm master in its namespace."""
        self.server = harness.Server(self.config(), self.tmp,
                                     command=["ip", "netns", "exec", self.ns, sys.executable,
                                              "-m", "fpm"]).start()
        return self

    def kill(self) -> None:
        """The host dies: SIGKILL to its master and every worker."""
        self.server.stop()


class Fleet:
    """Hosts added with add(); nginx() starts the front (or reloads it with every host)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.hosts: list[Host] = []
        self.front: subprocess.Popen | None = None
        self.port = 0
        self.keep_conn_off = False

    def add(self) -> Host:
        index = len(self.hosts) + 1
        host = Host(index, self.tmp / ("h%d" % index))
        host.tmp.mkdir()
        self.hosts.append(host)
        ip("netns", "add", host.ns)
        ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
        ip("addr", "add", "10.213.%d.1/24" % index, "dev", host.link)
        ip("link", "set", host.link, "up")
        ip("-n", host.ns, "addr", "add", "10.213.%d.2/24" % index, "dev", "eth0")
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
        ip("link", "set", host.link, "up" if up else "down")

    # --- the front ------------------------------------------------------------------------

    def nginx_config(self) -> str:
        """conf/nginx/fleet.conf with this fleet's hosts and port, in a main config."""
        site = SHIPPED.read_text()
        servers = re.findall(r"^    server 192\.0\.2\.\d+:9000 (.*);$", site, re.M)
        assert servers, "conf/nginx/fleet.conf lists no upstream server"
        lines = "".join("    server %s %s;\n" % (h.address, servers[0]) for h in self.hosts)
        site = re.sub(r"(?:^    server 192\.0\.2\.\d+:9000 .*;\n)+", lines, site, flags=re.M)
        site = site.replace("listen 80;", "listen 127.0.0.1:%d;" % self.port)
        if self.keep_conn_off:
            site = site.replace("fastcgi_keep_conn on;", "fastcgi_keep_conn off;")
        site = site.replace("include fastcgi_params;", "include %s;" % FASTCGI_PARAMS)
        return ("worker_processes 1;\ndaemon off;\nuser root;\npid {t}/nginx.pid;\n"
                "error_log {t}/error.log notice;\nevents {{ worker_connections 1024; }}\n"
                "http {{\n    access_log off;\n    client_body_temp_path {t}/body;\n"
                "    fastcgi_temp_path {t}/fastcgi;\n{site}}}\n").format(t=self.tmp, site=site)

    def nginx(self) -> int:
        """Start nginx in front of every host, or reload it (HUP) with the hosts added since;
        its port."""
        conf = self.tmp / "nginx.conf"
        if self.front is None:
            self.port = free_port()
            conf.write_text(self.nginx_config())
            self.front = subprocess.Popen(
                [find_program("nginx"), "-p", str(self.tmp), "-e", str(self.tmp / "error.log"),
                 "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                start_new_session=True)
            wait_port(self.port, self.front, 10, "nginx")
        else:
            # Done once the previous workers are gone: until then one may still take a
            # client's connection, and close it (idle, between two requests) as it ends.
            previous = harness.children_of(self.front.pid)
            conf.write_text(self.nginx_config())
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

    def close(self) -> None:
        if self.front is not None:
            harness.kill_group(self.front)
        for host in self.hosts:
            if host.server is not None:
                host.server.stop()
            subprocess.run(["ip", "netns", "del", host.ns], capture_output=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
                os.path.exists("/sys/class/net/" + h.link) for h in self.hosts):
            time.sleep(0.05)
