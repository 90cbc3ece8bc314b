"""Listening, seen from the outside: a pool on several addresses (kept across a reload),
POSIX ACLs on its unix socket, and listen.allowed_clients with CIDR ranges.

(listen.owner, listen.group and listen.mode on the socket file: test_master.py.)
"""
import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

import harness
from fpm import acl
from fpm import client as fc
from tests.conftest import make_account, pyfpm_config

TS = r"\[\d{2}-[A-Z][a-z]{2}-\d{4} \d{2}:\d{2}:\d{2}\]"

def config(listen: str, pool: str = "") -> str:
    """One worker; ``listen``: the pool's listen lines."""
    return pyfpm_config(listen=None, workers=1, mode="", log_level="",
                        global_="error_log = stderr", extra=listen + "\n" + pool)


HELLO = fc.encode_request(fc.build_params("/hello"))


def server(tmp, listen, pool="", **values):
    return harness.Server(config(listen=listen, pool=pool), tmp, **values)


def answer(data: bytes) -> fc.Response:
    return fc.Response.from_records(fc.iter_records(data), 1)


def exchange(family: int, source: str, address) -> bytes | None:
    """Send one request from ``source`` to ``address``: the raw response, or None when the
    connection is closed without one (reset or plain EOF)."""
    with socket.socket(family) as sock:
        sock.settimeout(5)
        sock.bind((source, 0))
        sock.connect(address)
        data = b""
        try:
            sock.sendall(HELLO)
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionError:
            return None
    return data or None


# --- several addresses per pool -------------------------------------------------------------

def test_one_pool_serves_on_each_of_its_addresses_and_keeps_them_across_a_reload(tmp_path):
    listen = "listen = {sock}\nlisten[] = 127.0.0.1:{port}\nlisten[] = {tmp}/second.sock"
    pool = "listen.mode = 0666\nlisten.backlog = 7\npm.status_path = /fpm-status"
    with server(tmp_path, listen, pool) as srv:
        port = srv.values["port"]
        addresses = [str(tmp_path / "fpm.sock"), "127.0.0.1:%d" % port,
                     str(tmp_path / "second.sock")]
        # One worker answers on all three: it polls every socket of its pool.
        for address in addresses:
            assert fc.request(address, "/hello").body == b"hello world"
        # The status page's queue size is the sum over the pool's sockets.
        status = fc.request(addresses[1], "/fpm-status").body.decode()
        assert re.search(r"^listen queue len:\s+21$", status, re.M), status

        mark = srv.mark()
        srv.signal(signal.SIGUSR2)
        srv.wait_log(r"NOTICE: ready to handle connections$", 10, since=mark)
        log = srv.log_text()[mark:]
        inherited = re.findall(r'NOTICE: using inherited socket fd=\d+, "(.*)"$', log, re.M)
        assert sorted(inherited) == sorted(addresses)
        for address in addresses:
            assert fc.request(address, "/hello").body == b"hello world"


def test_socket_activation_gives_each_address_its_socket(tmp_path):
    """systemd passes one socket of a pool with two addresses: that one is used, the other
    bound by pyfpm, and both serve."""
    activated = socket.socket(socket.AF_UNIX)
    activated.bind(str(tmp_path / "activated.sock"))
    activated.listen()
    listen = "listen[] = 127.0.0.1:{port}\nlisten[] = %s" % (tmp_path / "activated.sock")
    srv = harness.ActivatedServer(config(listen=listen), tmp_path, sockets=[activated],
                                  names=["www"])
    try:
        srv.start()
        tcp = "127.0.0.1:%d" % srv.values["port"]
        text = srv.log_text()
        assert ('NOTICE: [pool www] using inherited socket fd=3, "%s" from systemd'
                % (tmp_path / "activated.sock")) in text
        assert "NOTICE: [pool www] systemd passed no socket for '%s'; binding it" % tcp in text
        for address in (tcp, str(tmp_path / "activated.sock")):
            assert fc.request(address, "/hello").body == b"hello world"
    finally:
        srv.stop()
        activated.close()


def test_test_mode_shows_each_address(tmp_path):
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(config(listen="listen[] = %s/a.sock\nlisten[] = 127.0.0.1:9000"
                                  % tmp_path, pool=""))
    done = harness.run_fpm("-tt", "-y", str(conf))
    assert done.returncode == 0, done.stderr
    assert re.findall(r"NOTICE: \tlisten(?:\[\])? = (.*)$", done.stderr, re.M) == [
        "%s/a.sock" % tmp_path, "127.0.0.1:9000"]


def test_an_address_given_twice_is_refused(tmp_path):
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(config(listen="listen = 127.0.0.1:9000\nlisten[] = 127.0.0.1:9000",
                                  pool=""))
    done = harness.run_fpm("-t", "-y", str(conf))
    assert done.returncode == 78
    assert "[pool www] listen: address '127.0.0.1:9000' is already used by pool 'www'" \
        in done.stderr


# --- listen.allowed_clients -----------------------------------------------------------------

def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host, allowed, source, served", [
    ("127.0.0.1", "127.0.0.2", "127.0.0.1", False),
    ("127.0.0.1", "127.0.0.0/8", "127.0.0.1", True),
    ("127.0.0.1", "10.0.0.0/8, 127.0.0.1", "127.0.0.1", True),
    ("[::1]", "::1", "::1", True),
    ("[::1]", "fd00::/8", "::1", False),
])
def test_allowed_clients(tmp_path, host, allowed, source, served):
    if ":" in source and not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    listen = "listen = %s:{port}" % host
    with server(tmp_path, listen, "listen.allowed_clients = %s" % allowed) as srv:
        srv.wait_idle(1)
        data = exchange(family, source, (host.strip("[]"), srv.values["port"]))
        line = (r"^%s WARNING: \[pool www\] child \d+: Connection disallowed: IP address '%s' "
                r"has been dropped\.$" % (TS, re.escape(source)))
        if served:
            assert answer(data).body == b"hello world"
            assert not re.search(line, srv.log_text(), re.M)
        else:
            assert data is None, "a disallowed client got an answer"
            srv.wait_log(line)
            # The worker lives on and serves the next allowed client... of which there is
            # none here; it is still idle, not dead.
            assert srv.wait_idle(1)


def test_allowed_clients_on_a_dual_stack_port_match_ipv4_clients(tmp_path):
    if not socket.has_dualstack_ipv6() or not has_ipv6_loopback():
        pytest.skip("no dual-stack IPv6 here")
    with server(tmp_path, "listen = {port}", "listen.allowed_clients = 127.0.0.1, ::1") as srv:
        srv.wait_idle(1)
        port = srv.values["port"]
        assert answer(exchange(socket.AF_INET, "127.0.0.1", ("127.0.0.1", port))).status == 200
        assert answer(exchange(socket.AF_INET6, "::1", ("::1", port))).status == 200
        # An IPv4 client arrives as ::ffff:127.0.0.3 and is named as PHP-FPM names it.
        assert exchange(socket.AF_INET, "127.0.0.3", ("127.0.0.1", port)) is None
        srv.wait_log(r"Connection disallowed: IP address '127\.0\.0\.3' has been dropped\.$")


def test_allowed_clients_leave_the_unix_socket_of_a_mixed_pool_open(tmp_path):
    listen = "listen[] = 127.0.0.1:{port}\nlisten[] = {sock}"
    with server(tmp_path, listen, "listen.allowed_clients = 10.0.0.0/8") as srv:
        srv.wait_idle(1)
        assert fc.request(str(tmp_path / "fpm.sock"), "/hello").body == b"hello world"
        assert exchange(socket.AF_INET, "127.0.0.1", ("127.0.0.1", srv.values["port"])) is None


def test_an_invalid_allowed_client_stops_the_start(tmp_path):
    srv = server(tmp_path, "listen = 127.0.0.1:{port}", "listen.allowed_clients = 10.0.0.0/33")
    try:
        srv.start(wait_ready=False)
        assert srv.wait_exit() == 78
    finally:
        srv.stop()
    assert "listen.allowed_clients: invalid value '10.0.0.0/33' (expected IPv4 or IPv6 " \
           "addresses or CIDR ranges separated by commas, e.g. 127.0.0.1, 10.0.0.0/8, ::1, " \
           "fd00::/8; '10.0.0.0/33' is not one)" in srv.log_text()


# --- listen.acl_users / listen.acl_groups ---------------------------------------------------

@pytest.fixture(scope="module")
def account():
    base = Path(tempfile.mkdtemp(prefix="pyfpm-acl-"))
    base.chmod(0o755)  # the socket's directory must be reachable by the users under test
    try:
        with make_account(base) as made:
            yield made
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def run_dir(account):
    """A fresh directory everybody may traverse, for the socket."""
    path = Path(tempfile.mkdtemp(dir=account.base))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def request_as(uid: int, gid: int, groups: list[int], path: str) -> bytes | int:
    """One request on the unix socket ``path`` from a child process running as ``uid``:
    the raw response, or the errno connect() failed with."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, connect, report; never return into pytest
        code = 1
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                try:
                    sock.connect(path)
                except OSError as e:
                    os.write(write_end, b"E%d" % e.errno)
                else:
                    sock.sendall(HELLO)
                    data = b"R"
                    while chunk := sock.recv(65536):
                        data += chunk
                    os.write(write_end, data)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        out = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return int(out[1:]) if out[:1] == b"E" else out[1:]


NOBODY = 65534


@pytest.mark.parametrize("directive", ["listen.acl_users", "listen.acl_groups"])
def test_acl_lets_its_user_or_group_in_and_no_one_else(tmp_path, account, run_dir, directive):
    sock = run_dir / "www.sock"
    name = account.name if directive == "listen.acl_users" else account.extra
    pool = ("listen.mode = 0600\nlisten.owner = nobody\nlisten.group = nogroup\n"
            "%s = %s" % (directive, name))
    with server(tmp_path, "listen = %s" % sock, pool) as srv:
        srv.wait_idle(1)
        log = srv.log_text()
        assert re.search(r"WARNING: \[pool www\] ACL set, listen\.owner = 'nobody' is ignored$",
                         log, re.M), log
        assert re.search(r"WARNING: \[pool www\] ACL set, listen\.group = 'nogroup' is ignored$",
                         log, re.M), log
        st = sock.stat()
        assert (st.st_uid, st.st_gid) == (0, 0), "listen.owner/group must not apply with an ACL"
        # mode 0600 plus the ACL: the group bits show the mask, rw
        assert stat.S_IMODE(st.st_mode) == 0o660
        tag, wanted = (acl.USER, account.uid) if directive == "listen.acl_users" \
            else (acl.GROUP, account.extra_gid)
        assert (tag, acl.READ | acl.WRITE, wanted) in acl.read(str(sock))
        if shutil.which("getfacl"):
            out = subprocess.run(["getfacl", "-c", str(sock)], capture_output=True, text=True,
                                 check=True).stdout.split()
            kind = "user" if directive == "listen.acl_users" else "group"
            assert "%s:%s:rw-" % (kind, name) in out and "mask::rw-" in out

        groups = [account.gid, account.extra_gid]
        assert answer(request_as(account.uid, account.gid, groups, str(sock))).body \
            == b"hello world"
        assert request_as(NOBODY, NOBODY, [], str(sock)) == errno.EACCES


def test_unknown_acl_user_fails_the_check(tmp_path):
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(config(listen="listen = %s/www.sock" % tmp_path,
                                  pool="listen.acl_users = nobody, no-such-user-x"))
    done = harness.run_fpm("-t", "-y", str(conf))
    assert done.returncode == 78
    assert "ERROR: [pool www] listen.acl_users: cannot get uid for user 'no-such-user-x'" \
        in done.stderr


@contextlib.contextmanager
def ramfs(where: Path):
    """A file system without extended attributes, so without ACLs."""
    where.mkdir()
    done = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a ramfs here (needs root): %s" % done.stderr.decode().strip())
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)


def test_acl_on_a_file_system_without_acls_fails_the_start(tmp_path):
    with ramfs(tmp_path / "ramfs") as where:
        srv = server(tmp_path, "listen = %s/www.sock" % where, "listen.acl_users = nobody")
        try:
            srv.start(wait_ready=False)
            assert srv.wait_exit() == 78
        finally:
            srv.stop()
        assert not (where / "www.sock").exists()
    log = srv.log_text()
    assert ("ERROR: [pool www] listen.acl_users: unable to set the POSIX ACL of the socket "
            "'%s/www.sock': Operation not supported (%d); the file system holding it does not "
            "support POSIX ACLs" % (where, errno.EOPNOTSUPP)) in log
    assert "ERROR: FPM initialization failed" in log
