"""`mount` behind each web server: a Flask app under /flask gets SCRIPT_NAME = /flask and
PATH_INFO = the rest, and builds its URLs under /flask, whatever split the server sent
(README: "PATH_INFO and mount"). Each server runs with its usual way of passing a prefix (or
the whole site) to FastCGI."""

import contextlib

import pytest

import webservers

# id: (server, the server's routes for the prefix /flask)
MOUNTED = {
    "nginx": ("nginx", None),  # conftest's nginx: `location /` with the stock fastcgi_params
    "apache-proxypass": ("apache", 'ProxyPass "/flask" "fcgi://{backend}"'),
    "apache-sethandler": ("apache", """\
<Location "/flask">
    SetHandler "proxy:fcgi://{backend}"
</Location>"""),
    "lighttpd": ("lighttpd", """\
fastcgi.server = ( "/flask" => (( "host" => "{backend_host}", "port" => {backend_port},
                                  "check-local" => "disable" )) )"""),
    # a prefix with its slash: lighttpd splits at the next '/' (SCRIPT_NAME /flask/paths)
    "lighttpd-slash": ("lighttpd", """\
fastcgi.server = ( "/flask/" => (( "host" => "{backend_host}", "port" => {backend_port},
                                   "check-local" => "disable" )) )"""),
    # SCRIPT_NAME "" and the whole path in PATH_INFO
    "caddy": ("caddy", """\
	reverse_proxy /flask* {backend} {
		transport fastcgi
	}"""),
    # PATH_INFO without the prefix, which only REQUEST_URI still has
    "caddy-handle-path": ("caddy", """\
	handle_path /flask/* {
		reverse_proxy {backend} {
			transport fastcgi
		}
	}"""),
    "h2o": ("h2o", """\
      "/flask":
        fastcgi.connect:
          host: {backend_host}
          port: {backend_port}
          type: tcp"""),
}

# id: (server, the server's routes for the whole site)
ROOT = {
    "nginx": ("nginx", None),
    "apache": ("apache", 'ProxyPass "/" "fcgi://{backend}/"'),
    # without fix-root-scriptname lighttpd sends SCRIPT_NAME /paths, PATH_INFO /a/b
    "lighttpd": ("lighttpd", """\
fastcgi.server = ( "/" => (( "host" => "{backend_host}", "port" => {backend_port},
                             "check-local" => "disable", "fix-root-scriptname" => "enable" )) )"""),
    "caddy": ("caddy", """\
	reverse_proxy {backend} {
		transport fastcgi
	}"""),
    "h2o": ("h2o", """\
      "/":
        fastcgi.connect:
          host: {backend_host}
          port: {backend_port}
          type: tcp"""),
}


@pytest.fixture
def front(request, tmp_path_factory):
    """Factory: front(server, routes, backend) → a running web server with .get()."""
    with contextlib.ExitStack() as stack:
        def start(server, routes, backend):
            if server == "nginx":
                return request.getfixturevalue("nginx")(backend)
            return stack.enter_context(webservers.start(server, tmp_path_factory.mktemp(server),
                                                        backend, routes))
        yield start


def get(web, path, status=200):
    r = web.get(path)
    log = web.log_text() if hasattr(web, "log_text") else web.error_log()
    assert r.status == status, f"{path}: {r.status} {r.body[:500]!r}\n--- server log ---\n{log}"
    return r


@pytest.mark.parametrize("server,routes", MOUNTED.values(), ids=MOUNTED.keys())
def test_flask_under_mount(pyfpm, front, server, routes):
    fpm = pyfpm(listen="tcp", app="flask_app:app", mount="/flask")
    web = front(server, routes, fpm.address)
    assert get(web, "/flask/paths/a/b?x=1").json() == {
        "script_name": "/flask", "path_info": "/paths/a/b", "rest": "a/b",
        "url": "/flask/paths/a/b", "args": {"x": "1"}}
    # PEP 3333: the UTF-8 bytes of the path, each one latin-1 character; Flask decodes them
    assert get(web, "/flask/paths/caf%C3%A9%20au%20lait").json() == {
        "script_name": "/flask", "path_info": "/paths/caf\u00c3\u00a9 au lait",
        "rest": "caf\u00e9 au lait", "url": "/flask/paths/caf%C3%A9%20au%20lait", "args": {}}
    assert get(web, "/flask/").body == b"flask index"
    get(web, "/flask/nowhere", 404)


@pytest.mark.parametrize("server,routes", ROOT.values(), ids=ROOT.keys())
def test_flask_at_the_root(pyfpm, front, server, routes):
    fpm = pyfpm(listen="tcp", app="flask_app:app")
    web = front(server, routes, fpm.address)
    assert get(web, "/paths/a/b?x=1").json() == {
        "script_name": "", "path_info": "/paths/a/b", "rest": "a/b", "url": "/paths/a/b",
        "args": {"x": "1"}}
    assert get(web, "/").body == b"flask index"
    get(web, "/nowhere", 404)
