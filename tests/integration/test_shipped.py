"""The shipped files as an operator uses them: each configuration passes `pyfpm -t` as root;
the systemd unit and the init script run the pyfpm the README installs; every nginx block of
README.md and conf/nginx loads into the nginx `apt-get install nginx` gives (its own
nginx.conf and default site, rebuilt in a temp dir from the real Debian files) and carries a
request to a real pyfpm; streamed responses pass through as they are produced."""
import os
import re
import shlex
import shutil
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import (find_program, free_port, nginx_main, pool_section, pyfpm_config,
                            require, wait_port)
from tests.harness import Server, kill_group, run_fpm

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
README = ROOT / "README.md"
DEBIAN = Path("/etc/nginx")  # read only: the layout is rebuilt in a temp dir


def fences(text: str, lang: str) -> list[str]:
    """The ```lang blocks of a Markdown text, also those indented in a list item."""
    return [textwrap.dedent(body) for indent, body in
            re.findall(r"^( *)```%s\n(.*?)^\1```" % lang, text, re.M | re.S)]


# --- the configurations -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["pyfpm.conf", "pyfpm.toml", "pool.d/www.conf"])
def test_shipped_configuration_passes_test_as_root(name):
    """As PHP-FPM's www.conf, the shipped pool names its user: `-t` as root, without -R."""
    require("root", os.geteuid() == 0, "-t as root is what this checks; run the suite as root")
    out = run_fpm("-t", "-y", str(CONF / name), allow_root=False)
    assert out.returncode == 0, out.stderr
    assert out.stderr.rstrip().endswith("configuration file %s test is successful" % (CONF / name))


def test_prometheus_scrape_config_and_rules_pass_promtool():
    """conf/prometheus as shipped (tests/integration/test_fleet.py runs it in a fleet)."""
    promtool = shutil.which("promtool")
    require("prometheus", promtool, "Debian's prometheus package has promtool")
    out = subprocess.run([promtool, "check", "config", str(CONF / "prometheus/prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    rules = len(re.findall(r"^ +- record: ", (CONF / "prometheus/pyfpm.rules.yml").read_text(),
                           re.M))
    assert "SUCCESS: %d rules found" % rules in out.stdout, out.stdout


def test_metrics_server_block_passes_nginx_t(tmp_path):
    """conf/prometheus/nginx-metrics.conf loads (the fleet test serves it where the machine
    allows network namespaces)."""
    site = (CONF / "prometheus/nginx-metrics.conf").read_text()
    site = re.sub(r"^    listen 9253;$", "    listen 127.0.0.1:%d;" % free_port(), site, flags=re.M)
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_main(tmp_path, site))
    out = subprocess.run([find_program("nginx"), "-t", "-p", str(tmp_path), "-e",
                          str(tmp_path / "error.log"), "-c", str(conf)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert not re.search(r"\[(warn|emerg)\]", out.stderr), out.stderr


# --- systemd unit, init script and README agree -----------------------------------------------

def unit_values(key: str) -> list[str]:
    lines = (CONF / "pyfpm.service").read_text().splitlines()
    return [line.split("=", 1)[1] for line in lines if line.startswith(key + "=")]


def readme_commands() -> list[list[str]]:
    """Every command of the README's sh blocks, split at && as the shell runs them."""
    commands = []
    for block in fences(README.read_text(), "sh"):
        for line in block.splitlines():
            commands += [shlex.split(part) for part in line.split("&&") if part.strip()]
    return commands


def installed_by_readme() -> dict[str, Path]:
    """{installed path: shipped file} for the README's `cp [-r] conf/... DEST/` commands."""
    installed = {}
    for argv in readme_commands():
        if argv[:1] != ["cp"]:
            continue
        *sources, dest = [a for a in argv[1:] if not a.startswith("-")]
        for source in sources:
            shipped = ROOT / source
            files = sorted(shipped.rglob("*")) if shipped.is_dir() else [shipped]
            for f in files:
                rel = f.relative_to(shipped.parent)
                installed[os.path.join(dest, str(rel))] = f
    return installed


def test_unit_and_init_script_run_the_pyfpm_the_readme_installs():
    venvs = [argv[3] for argv in readme_commands() if argv[:3] == ["python3", "-m", "venv"]]
    assert len(venvs) == 1, venvs
    pyfpm = venvs[0] + "/bin/pyfpm"
    assert [argv[:2] for argv in readme_commands() if argv[:1] == [venvs[0] + "/bin/pip"]] == \
        [[venvs[0] + "/bin/pip", "install"]]
    [start] = [shlex.split(v) for v in unit_values("ExecStart")]
    test = shlex.split(unit_values("ExecReload")[0])
    assert start[0] == test[0] == pyfpm
    init = (CONF / "init.d/pyfpm").read_text()
    assert re.search(r"^PYFPM=\$\{PYFPM:-(\S+)\}$", init, re.M)[1] == pyfpm
    # The configuration the unit runs is the one the README copies into place.
    installed = installed_by_readme()
    config = start[start.index("--fpm-config") + 1]
    assert installed[config] == CONF / "pyfpm.conf"
    assert re.search(r"^PYFPM_CONF=\$\{PYFPM_CONF:-(\S+)\}$", init, re.M)[1] == config
    assert installed["/etc/systemd/system/pyfpm.service"] == CONF / "pyfpm.service"


def test_unit_documentation_is_what_the_operator_has():
    """No web site of its own: Documentation= names the annotated files the README installs."""
    [docs] = unit_values("Documentation")
    installed = installed_by_readme()
    for uri in docs.split():
        scheme, _, path = uri.partition(":")
        assert scheme == "file" and path in installed, uri
        assert "; Default Value" in installed[path].read_text()


# --- nginx: the Debian default with our blocks dropped in -------------------------------------

# A URI for each regex location (prefix locations are asked at their prefix), and what the
# answer must hold.
REGEX_EXAMPLES = {
    r"~ [^/]\.py(/|$)": ("GET", "/hello.py/a/b", b"Hello from /hello.py, PATH_INFO /a/b"),
    r"~ ^/(status|ping)$": ("GET", "/ping", b"pong"),
}
SCRIPT = b'''\
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello from %s, PATH_INFO %s" % (environ["SCRIPT_NAME"].encode(),
                                               environ["PATH_INFO"].encode())]
'''
BODY = b"x" * 1000
# Pool www (site_app) and pool scripts (script mode); harness.Server fills in {tmp}.
POOLS = pyfpm_config(log_level="", listen="{tmp}/www.sock", mode="", app="site_app:app",
                     extra="pm.status_path = /status\nping.path = /ping\n"
                           "security.request_body_file_dirs = {tmp}/nginx/body") + "\n" + \
    pool_section("scripts", listen="{tmp}/scripts.sock", workers=1, mode="", app=None,
                 python_path=None)


def nginx_blocks() -> list:
    """Every nginx block, README's ```nginx fences and conf/nginx's files, as (where, text)."""
    blocks = [("README.md block %d" % i, text)
              for i, text in enumerate(fences(README.read_text(), "nginx"), 1)]
    blocks += [(str(path.relative_to(ROOT)), path.read_text())
               for path in sorted((CONF / "nginx").glob("*.conf"))]
    return [pytest.param(where, text, id=where) for where, text in blocks]


def active(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def locations(text: str) -> list[str]:
    return [" ".join(filter(None, m)) for m in
            re.findall(r"^\s*location\s+(?:(=|~\*?|\^~)\s+)?(\S+)\s*\{", active(text), re.M)]


def is_http_level(text: str) -> bool:
    return re.search(r"^\s*(server|upstream)\s*\{", active(text), re.M) is not None


def test_every_nginx_block_says_the_same_of_fastcgi_keep_conn():
    """README and conf/nginx once disagreed. They say on, with the upstream's keepalive (the
    README says why): every location that passes to the upstream turns it on, none off."""
    for p in nginx_blocks():
        where, text = p.values
        text = active(text)
        passes = len(re.findall(r"\bfastcgi_pass\s+pyfpm\s*;", text))
        kept = re.findall(r"\bfastcgi_keep_conn\s+(\w+)\s*;", text)
        assert kept == ["on"] * passes, (where, kept, passes)
        if "upstream pyfpm" in text:
            assert re.search(r"^\s*keepalive\s+\d+\s*;", text, re.M), where


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One pyfpm for the module: pool www (site_app) and pool scripts (script mode)."""
    tmp = tmp_path_factory.mktemp("site")
    (tmp / "www").mkdir()
    (tmp / "www/hello.py").write_bytes(SCRIPT)
    (tmp / "nginx").mkdir()
    server = Server(POOLS, tmp)
    server.start()
    yield server
    server.stop()


def debian_nginx(tmp: Path, port: int, site: Server, drop_in: str) -> Path:
    """Debian's /etc/nginx copied to tmp/etc/nginx (what `apt-get install nginx` leaves: its
    nginx.conf, sites-enabled/default, conf.d/, the params files), with ``drop_in`` as
    conf.d/pyfpm.conf; the nginx.conf to run. What this machine must not share is rewritten:
    paths into tmp, port 80 to ``port``, pyfpm's addresses to ``site``'s, and the worker
    user to root (the temp dirs are closed to www-data). No module is loaded: dynamic
    modules are extra packages."""
    require(str(DEBIAN / "sites-available/default"), (DEBIAN / "sites-available/default").exists(),
            "Debian's nginx-common ships it")
    etc = tmp / "etc/nginx"
    shutil.copytree(DEBIAN, etc, symlinks=False, ignore=shutil.ignore_patterns(
        "modules-enabled", "sites-enabled", "conf.d"))
    for name in ("modules-enabled", "sites-enabled", "conf.d"):
        (etc / name).mkdir()
    shutil.copy(DEBIAN / "sites-available/default", etc / "sites-enabled/default")
    (etc / "conf.d/pyfpm.conf").write_text(drop_in)
    # Test plumbing, not Debian's: nginx's temp files (request bodies) in tmp.
    (etc / "conf.d/00-temp-paths.conf").write_text("".join(
        "%s_temp_path %s/nginx/%s;\n" % (kind, site.tmp if kind == "client_body" else tmp,
                                         "body" if kind == "client_body" else kind)
        for kind in ("client_body", "fastcgi", "proxy", "uwsgi", "scgi")))
    (tmp / "log").mkdir()
    (tmp / "nginx").mkdir()
    www, scripts = "unix:%s/www.sock" % site.tmp, "unix:%s/scripts.sock" % site.tmp
    for path in [etc / "nginx.conf", *etc.glob("conf.d/*.conf"), etc / "sites-enabled/default"]:
        text = path.read_text()
        text = text.replace("/etc/nginx/", "%s/" % etc).replace("/var/log/nginx/", "%s/log/" % tmp)
        text = text.replace("/run/nginx.pid", "%s/nginx.pid" % tmp)
        if os.geteuid() == 0:
            text = re.sub(r"^user www-data;$", "user root;", text, flags=re.M)
        text = re.sub(r"(\blisten\s+(?:\[::\]:)?)80\b", r"\g<1>%d" % port, text)
        text = re.sub(r"unix:/run/pyfpm/(\w+)\.sock",
                      lambda m: scripts if m[1] == "scripts" else www, text)
        text = text.replace("127.0.0.1:9000", www).replace("/srv/www", str(site.tmp / "www"))
        text = re.sub(r"\b192\.0\.2\.\d+:9000\b", www, text)  # conf/nginx/fleet.conf's hosts
        path.write_text(text)
    return etc / "nginx.conf"


def with_fragment(fragment: str) -> str:
    """conf/nginx/pyfpm.conf with ``fragment`` (locations) at the end of its server { }."""
    text = (CONF / "nginx/pyfpm.conf").read_text()
    end = text.rstrip().rindex("}")
    return text[:end] + fragment + text[end:]


class RunningNginx:
    def __init__(self, binary: str, conf: Path, tmp: Path, port: int):
        self.tmp, self.port = tmp, port
        self.argv = [binary, "-e", str(tmp / "log/error.log"), "-c", str(conf)]
        self.proc = None

    def test(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv + ["-t"], capture_output=True, text=True, timeout=30)

    def __enter__(self):
        self.proc = subprocess.Popen(self.argv + ["-g", "daemon off;"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, self.proc, 10, "nginx")
        return self

    def __exit__(self, *exc):
        kill_group(self.proc)

    def errors(self) -> list[str]:
        log = (self.tmp / "log/error.log").read_text(errors="replace")
        return [line for line in log.splitlines()
                if re.search(r"\[(warn|error|crit|alert|emerg)\]", line)]


def http(port: int, method: str, uri: str, body: bytes = b"", host: str = "localhost") -> bytes:
    """One HTTP/1.1 request; the raw response."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n%s"
                  % (method.encode(), uri.encode(), host.encode(), len(body), body))
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def hidden(text: str, location: str) -> bool:
    """The location only answers 404 (a page of pyfpm's kept from the internet)."""
    return re.search(r"^\s*location\s+%s\s*\{\s*return\s+404;\s*\}" % re.escape(location),
                     active(text), re.M) is not None


def example(location: str) -> tuple[str, str, bytes]:
    if location.startswith("~"):
        assert location in REGEX_EXAMPLES, \
            "no example request for nginx location %r: add one to REGEX_EXAMPLES" % location
        return REGEX_EXAMPLES[location]
    uri = location.split()[-1]
    return "POST", uri, b"site: POST %s, body %d bytes" % (uri.encode(), len(BODY))


@pytest.mark.parametrize("where, block", nginx_blocks())
def test_nginx_block_loads_into_debian_default_and_reaches_pyfpm(site, tmp_path, where, block):
    binary = find_program("nginx")
    assert locations(block), "%s has no location" % where
    drop_in = block if is_http_level(block) else with_fragment(block)
    port = free_port()
    nginx = RunningNginx(binary, debian_nginx(tmp_path, port, site, drop_in), tmp_path, port)
    check = nginx.test()
    assert check.returncode == 0, check.stderr
    assert not re.search(r"\[(warn|emerg)\]", check.stderr), check.stderr
    with nginx:
        for location in locations(block):
            if hidden(block, location):
                status = http(port, "GET", location.split()[-1]).split(b"\r\n", 1)[0]
                assert status == b"HTTP/1.1 404 Not Found", (where, location, status)
                continue
            method, uri, expected = example(location)
            response = http(port, method, uri, BODY if method == "POST" else b"")
            status = response.split(b"\r\n", 1)[0]
            assert status == b"HTTP/1.1 200 OK", (where, location, response[:500])
            assert expected in response, (where, location, response[:2000])
        # Debian's default site still answers every other name.
        other = http(port, "GET", "/", host="other.example")
        assert re.match(rb"HTTP/1.1 (200|404) ", other) and b"site: " not in other, other
    assert nginx.errors() == []


# --- streamed responses -----------------------------------------------------------------------

def arrivals(port: int, uri: str, lines: int) -> list[float]:
    """Seconds from sending the request until each ``line i`` arrived through nginx."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        start = time.monotonic()
        s.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                  % uri.encode())
        seen, data = [], b""
        while len(seen) < lines:
            chunk = s.recv(65536)
            assert chunk, "the response ended after %d of %d lines: %r" % (len(seen), lines, data)
            data += chunk
            while len(seen) < lines and b"line %d\n" % len(seen) in data:
                seen.append(time.monotonic() - start)
    return seen


PAUSE = 0.6


@pytest.mark.parametrize("uri", ["/events/stream?n=3&pause=%g" % PAUSE,
                                 "/stream?n=3&pause=%g&accel=no" % PAUSE],
                         ids=["fastcgi_buffering-off", "X-Accel-Buffering-no"])
def test_streamed_response_arrives_line_by_line(site, tmp_path, uri):
    """Through the shipped conf/nginx/pyfpm.conf: each line reaches the client when the app
    yields it, not when the response ends."""
    port = free_port()
    conf = debian_nginx(tmp_path, port, site, (CONF / "nginx/pyfpm.conf").read_text())
    with RunningNginx(find_program("nginx"), conf, tmp_path, port) as nginx:
        seen = arrivals(port, uri, 3)
    assert seen[0] < PAUSE * 0.8, seen
    assert all(later - earlier > PAUSE * 0.6 for earlier, later in zip(seen, seen[1:])), seen
    assert nginx.errors() == []


def test_without_either_nginx_holds_a_stream_back(site, tmp_path):
    """Why the README asks for one of them: with nginx's buffering on, the lines of the same
    stream reach the client together, at its end. (With fastcgi_keep_conn on, as shipped,
    the nginx here passed them on as they came; with it off, its default, it does not.)"""
    port = free_port()
    shipped = (CONF / "nginx/pyfpm.conf").read_text()
    conf = debian_nginx(tmp_path, port, site,
                        shipped.replace("fastcgi_keep_conn on;", "fastcgi_keep_conn off;"))
    with RunningNginx(find_program("nginx"), conf, tmp_path, port):
        seen = arrivals(port, "/stream?n=3&pause=%g" % PAUSE, 3)
    assert seen[0] > PAUSE * 1.5 and seen[-1] - seen[0] < PAUSE * 0.5, seen
