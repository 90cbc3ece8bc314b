"""fpm._worker.split_paths: the SCRIPT_NAME / PATH_INFO an app pool's app gets, from the params
each web server really sends (captured from Debian 12's nginx, Apache mod_proxy_fcgi, lighttpd,
Caddy and h2o; README: "PATH_INFO and mount")."""

import pytest

from fpm._worker import split_paths


def split(mount, **params):
    environ = dict(params)
    split_paths(environ, mount)
    return environ.get("SCRIPT_NAME"), environ.get("PATH_INFO")


# What each server sends for GET /flask/user/ada with the app behind the prefix /flask.
UNDER_FLASK = {
    "nginx location /flask/": dict(SCRIPT_NAME="/flask/user/ada", REQUEST_URI="/flask/user/ada",
                                   DOCUMENT_URI="/flask/user/ada"),
    "apache ProxyPass /flask": dict(SCRIPT_NAME="/flask/user/ada", REQUEST_URI="/flask/user/ada"),
    "apache SetHandler in <Location /flask>": dict(SCRIPT_NAME="/flask", PATH_INFO="/user/ada",
                                                   REQUEST_URI="/flask/user/ada"),
    "lighttpd fastcgi.server /flask": dict(SCRIPT_NAME="/flask", PATH_INFO="/user/ada",
                                           REQUEST_URI="/flask/user/ada"),
    # lighttpd splits at the first '/' after its prefix
    "lighttpd fastcgi.server /flask/": dict(SCRIPT_NAME="/flask/user", PATH_INFO="/ada",
                                            REQUEST_URI="/flask/user/ada"),
    "caddy reverse_proxy /flask*": dict(SCRIPT_NAME="", PATH_INFO="/flask/user/ada",
                                        REQUEST_URI="/flask/user/ada", DOCUMENT_URI=""),
    # handle_path strips the prefix before the fastcgi transport sees the path
    "caddy handle_path /flask/*": dict(SCRIPT_NAME="", PATH_INFO="/user/ada",
                                       REQUEST_URI="/flask/user/ada", DOCUMENT_URI=""),
    "h2o paths /flask": dict(SCRIPT_NAME="", PATH_INFO="/flask/user/ada",
                             REQUEST_URI="/flask/user/ada"),
}


@pytest.mark.parametrize("params", UNDER_FLASK.values(), ids=UNDER_FLASK.keys())
def test_every_server_gives_the_mount_split(params):
    assert split("/flask", **params) == ("/flask", "/user/ada")


@pytest.mark.parametrize("params,expected", [
    (dict(SCRIPT_NAME="", PATH_INFO="/flask", REQUEST_URI="/flask"), ("/flask", "")),
    (dict(SCRIPT_NAME="", PATH_INFO="/flask/", REQUEST_URI="/flask/"), ("/flask", "/")),
    (dict(SCRIPT_NAME="/flask/", REQUEST_URI="/flask/"), ("/flask", "/")),
    (dict(SCRIPT_NAME="/flask", REQUEST_URI="/flask?x=1"), ("/flask", "")),
], ids=["h2o-bare", "h2o-slash", "nginx-slash", "nginx-bare-query"])
def test_the_mount_itself(params, expected):
    assert split("/flask", **params) == expected


def test_percent_encoding_and_query_come_from_request_uri():
    """PATH_INFO is decoded (each UTF-8 byte one latin-1 character), the query left out."""
    caddy = dict(SCRIPT_NAME="", PATH_INFO="/flask/a b/caf\u00c3\u00a9",
                 REQUEST_URI="/flask/a%20b/caf%C3%A9?x=1&y=%20", QUERY_STRING="x=1&y=%20")
    assert split("/flask", **caddy) == ("/flask", "/a b/caf\u00c3\u00a9")


def test_an_encoded_slash_is_a_slash():
    """As every one of the five servers decodes %2F in what it sends."""
    assert split("/flask", SCRIPT_NAME="", PATH_INFO="/flask/a/b",
                 REQUEST_URI="/flask/a%2Fb") == ("/flask", "/a/b")


def test_absolute_form_request_uri():
    assert split("/flask", SCRIPT_NAME="/flask/x", REQUEST_URI="http://example.com/flask/x?y=1") \
        == ("/flask", "/x")


def test_without_request_uri_the_sent_split_is_joined_first():
    assert split("/flask", SCRIPT_NAME="", PATH_INFO="/flask/x") == ("/flask", "/x")
    assert split("/flask", SCRIPT_NAME="/flask/a", PATH_INFO="/b") == ("/flask", "/a/b")
    assert split("/flask", SCRIPT_NAME="/flask/x", DOCUMENT_URI="/flask/x") == ("/flask", "/x")


@pytest.mark.parametrize("params,expected", [
    # a path that only starts with the mount's letters is outside it
    (dict(SCRIPT_NAME="", PATH_INFO="/flaskx", REQUEST_URI="/flaskx"), ("", "/flaskx")),
    (dict(SCRIPT_NAME="/flaskx", REQUEST_URI="/flaskx"), ("", "/flaskx")),
    (dict(SCRIPT_NAME="/other/x", REQUEST_URI="/other/x"), ("", "/other/x")),
    # nginx fastcgi_split_path_info for another location: its split stands
    (dict(SCRIPT_NAME="/split", PATH_INFO="/environ", REQUEST_URI="/split/environ"),
     ("/split", "/environ")),
], ids=["h2o-prefix-letters", "nginx-prefix-letters", "nginx-elsewhere", "nginx-split-elsewhere"])
def test_paths_outside_the_mount_keep_the_rule_without_it(params, expected):
    assert split("/flask", **params) == expected


@pytest.mark.parametrize("params,expected", [
    (dict(SCRIPT_NAME="/user/ada", REQUEST_URI="/user/ada?x=1"), ("", "/user/ada")),
    (dict(SCRIPT_NAME="/", REQUEST_URI="/"), ("", "/")),
    (dict(SCRIPT_NAME="", PATH_INFO="/user/ada", REQUEST_URI="/user/ada"), ("", "/user/ada")),
    # lighttpd at "/" without fix-root-scriptname: sent, so kept (README says to set it)
    (dict(SCRIPT_NAME="/user", PATH_INFO="/ada", REQUEST_URI="/user/ada"), ("/user", "/ada")),
    (dict(SCRIPT_NAME="/index.py", PATH_INFO="", REQUEST_URI="/index.py"), ("/index.py", "")),
], ids=["nginx", "nginx-root", "caddy-h2o", "lighttpd-root", "empty-path-info"])
def test_without_mount_a_sent_path_info_is_kept(params, expected):
    assert split("", **params) == expected


def test_other_params_are_left_alone():
    environ = dict(SCRIPT_NAME="", PATH_INFO="/flask/x", REQUEST_URI="/flask/x?q=1",
                   QUERY_STRING="q=1", SCRIPT_FILENAME="/srv")
    split_paths(environ, "/flask")
    assert environ == dict(SCRIPT_NAME="/flask", PATH_INFO="/x", REQUEST_URI="/flask/x?q=1",
                           QUERY_STRING="q=1", SCRIPT_FILENAME="/srv")
