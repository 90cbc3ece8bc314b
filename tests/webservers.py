"""The web servers besides nginx that the integration tests put in front of pyfpm: Apache
(mod_proxy_fcgi), lighttpd, Caddy and h2o. Each runs from its own config in a temp dir, bound
to 127.0.0.1 on a free port, with its state and logs there too (no admin endpoint, nothing
under /var), in its own process group, killed at the end.

    with webservers.start("caddy", tmp, "127.0.0.1:9000", ROUTES) as front:
        front.get("/flask/")

``routes`` is the server's own text that sends requests to the FastCGI backend: ``{backend}``
(host:port), ``{backend_host}`` and ``{backend_port}`` are filled in. TCP, so that servers
whose workers drop root can reach it.
"""

import contextlib
import dataclasses
import os
import subprocess
import tempfile
from pathlib import Path

import harness
from tests.conftest import find_program, free_port, http_request, wait_port

APACHE = """\
ServerRoot {tmp}
DefaultRuntimeDir {tmp}
PidFile {tmp}/httpd.pid
ErrorLog {tmp}/error.log
LogLevel warn
LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
LoadModule proxy_module /usr/lib/apache2/modules/mod_proxy.so
LoadModule proxy_fcgi_module /usr/lib/apache2/modules/mod_proxy_fcgi.so
# Apache will not serve as root; its children only need to reach pyfpm over TCP.
User nobody
Group nogroup
ServerName localhost
Listen 127.0.0.1:{port}
DocumentRoot {www}
<Directory />
    AllowOverride None
</Directory>
{routes}
"""

LIGHTTPD = """\
server.bind = "127.0.0.1"
server.port = {port}
server.document-root = "{www}"
server.pid-file = "{tmp}/lighttpd.pid"
server.errorlog = "{tmp}/error.log"
server.upload-dirs = ( "{tmp}" )
server.modules = ( "mod_fastcgi" )
{routes}
"""

CADDY = """\
{{
	admin off
	auto_https off
	storage file_system {tmp}/data
}}
http://127.0.0.1:{port} {{
	bind 127.0.0.1
{routes}
}}
"""

H2O = """\
user: root
error-log: {tmp}/error.log
hosts:
  "127.0.0.1:{port}":
    listen:
      host: 127.0.0.1
      port: {port}
    paths:
{routes}
"""


# name: (program, config template, its arguments)
SERVERS = {
    "apache": ("apache2", APACHE, ["-d", "{tmp}", "-f", "{conf}", "-DFOREGROUND"]),
    "lighttpd": ("lighttpd", LIGHTTPD, ["-D", "-f", "{conf}"]),
    "caddy": ("caddy", CADDY, ["run", "--adapter", "caddyfile", "--config", "{conf}"]),
    "h2o": ("h2o", H2O, ["-c", "{conf}"]),
}


@dataclasses.dataclass
class WebServer:
    name: str
    port: int
    tmp: Path

    def log_text(self):
        """What the server logged (its error log and its own output)."""
        logs = (self.tmp / "error.log", self.tmp / "out.log")
        return "\n".join(p.read_text(errors="replace") for p in logs if p.exists())

    def get(self, path, **kwargs):
        return http_request(self.port, "GET", path, **kwargs)


@contextlib.contextmanager
def start(name, tmp, backend, routes):
    """Run web server ``name`` in front of ``backend`` with ``routes`` until the block ends."""
    program, template, args = SERVERS[name]
    binary = find_program(program)
    tmp = Path(tmp)
    port = free_port()
    conf = tmp / "server.conf"
    host, _, backend_port = backend.rpartition(":")
    for key, value in (("backend", backend), ("backend_host", host), ("backend_port", backend_port)):
        routes = routes.replace("{%s}" % key, value)
    argv = [binary] + [a.format(tmp=tmp, conf=conf) for a in args]
    # Caddy keeps its autosaved config and certificates under $HOME and $XDG_*: here, not /root.
    env = {**os.environ, "HOME": str(tmp), "XDG_CONFIG_HOME": str(tmp / "config"),
           "XDG_DATA_HOME": str(tmp / "data")}
    server = WebServer(name, port, tmp)
    # An empty document root the server's workers can search, as /var/www is: Apache splits
    # SCRIPT_NAME where its walk through it stops (pytest's temp dirs are 0700).
    with tempfile.TemporaryDirectory(prefix="pyfpm-www-") as www:
        os.chmod(www, 0o755)
        text = template.format(tmp=tmp, www=www, port=port, routes=routes)
        conf.write_text(text)
        with open(tmp / "out.log", "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    cwd=tmp, env=env, start_new_session=True)
        try:
            try:
                wait_port(port, proc, 10, name)
            except RuntimeError as e:
                raise RuntimeError(f"{e}\n--- {name} config ---\n{text}--- {name} log ---\n"
                                   f"{server.log_text()}") from None
            yield server
        finally:
            harness.kill_group(proc)
