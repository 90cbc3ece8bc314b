"""fpm.unix without a master: the root rule and user lookups, the worker's environment, what
a worker does when the master is not root, and the [global] limits."""
import ast
import grp
import os
import pwd
import resource
import shutil
import tempfile
from pathlib import Path

import pytest

from fpm import config, unix

POOL = """\
[{name}]
listen = 127.0.0.1:{port}
pm = static
pm.max_children = 1
{extra}
"""


def load(*pools, global_=""):
    """A Config of pools given as (name, extra lines)."""
    text = "[global]\n%s\n" % global_ + "".join(
        POOL.format(name=name, port=9000 + i, extra=extra) for i, (name, extra) in enumerate(pools))
    return config.loads(text)


def pool(extra="", name="www"):
    return load((name, extra)).pools[0]


class Log:
    def __init__(self):
        self.lines = []

    def log(self, level, msg):
        self.lines.append((level, msg))

    def notice(self, msg):
        self.log("notice", msg)

    def error(self, msg):
        self.log("error", msg)


NOBODY = pwd.getpwnam("nobody")
NOGROUP = grp.getgrgid(NOBODY.pw_gid).gr_name


# --- check_pools: what the master refuses to start ----------------------------------------------

def test_root_master_needs_a_user_or_R():
    c = load(("www", ""), ("api", "user = nobody"))
    errors, notices = unix.check_pools(c, allow_root=False, euid=0)
    assert errors == ["[pool www] user has not been defined; set 'user' or start pyfpm with -R "
                      "to let workers run as root"]
    assert notices == []
    assert unix.check_pools(c, allow_root=True, euid=0) == ([], [])


@pytest.mark.parametrize("extra, why", [
    ("user = root", "user = 'root' is uid 0"),
    ("user = 0", "user = '0' is uid 0"),
    ("user = nobody\ngroup = root", "group = 'root' is gid 0"),
    ("user = nobody\ngroup = 0", "group = '0' is gid 0"),
    ("user = 4242424", "uid 4242424 has no passwd entry, so no primary group; set 'group'"),
])
def test_root_ids_need_R(extra, why):
    c = load(("www", extra))
    assert unix.check_pools(c, allow_root=False, euid=0)[0] == [
        "[pool www] please specify user and group other than root (%s), or start pyfpm with -R"
        % why]
    assert unix.check_pools(c, allow_root=True, euid=0) == ([], [])


def test_unknown_user_and_group_are_errors_even_with_R():
    c = load(("www", "user = aaaaaa"), ("api", "user = nobody\ngroup = no-such-group-x"))
    for allow_root in (False, True):
        assert unix.check_pools(c, allow_root, euid=0)[0] == [
            "[pool www] cannot get uid for user 'aaaaaa'",
            "[pool api] cannot get gid for group 'no-such-group-x'"]


def test_not_root_ignores_identity_directives_with_a_notice_each():
    c = load(("www", "user = aaaaaa\ngroup = nogroup\nchroot = /\nprocess.priority = 5\n"
                     "rlimit_files = 2048"), ("api", ""))
    errors, notices = unix.check_pools(c, allow_root=False, euid=1000)
    assert errors == []  # not even the unknown user: it is never looked up
    assert notices == [("notice", "[pool www] '%s' directive is ignored when FPM is not running "
                                  "as root" % d) for d in ("user", "group", "chroot",
                                                           "process.priority")]


# --- resolve: whom a worker becomes ------------------------------------------------------------

def test_resolve_takes_names_and_numbers():
    ident = unix.resolve(pool("user = nobody"))
    assert (ident.uid, ident.gid, ident.entry.pw_name) == (NOBODY.pw_uid, NOBODY.pw_gid, "nobody")
    assert ident.groups == tuple(os.getgrouplist("nobody", NOBODY.pw_gid))
    ident = unix.resolve(pool("user = %d\ngroup = %s" % (NOBODY.pw_uid, NOGROUP)))
    assert (ident.uid, ident.gid, ident.entry.pw_dir) == (NOBODY.pw_uid, NOBODY.pw_gid,
                                                          NOBODY.pw_dir)
    # A bare uid needs no passwd entry; it then keeps only its gid as groups.
    ident = unix.resolve(pool("user = 4242424\ngroup = 4343"))
    assert (ident.uid, ident.gid, ident.entry, ident.groups) == (4242424, 4343, None, (4343,))
    assert unix.resolve(pool("")) == unix.Identity(None, None, None, ())


# --- worker_environ: the worker's environment --------------------------------------------------

MASTER_ENV = {"PATH": "/usr/bin:/bin", "USER": "root", "HOME": "/root", "LANG": "C.UTF-8"}


def test_clear_env_leaves_only_env_and_the_user():
    env = unix.worker_environ(pool("env[APP_MODE] = prod\nenv[PATH] = $PATH\n"
                                   "env[MISSING] = $NOT_SET_IN_MASTER"), NOBODY, MASTER_ENV)
    assert env == {"APP_MODE": "prod", "PATH": "/usr/bin:/bin", "MISSING": "",
                   "USER": "nobody", "HOME": NOBODY.pw_dir}


def test_clear_env_off_keeps_the_master_environment_under_env_and_the_user():
    env = unix.worker_environ(pool("clear_env = no\nenv[LANG] = fr_FR.UTF-8"), NOBODY, MASTER_ENV)
    assert env == {"PATH": "/usr/bin:/bin", "USER": "nobody", "HOME": NOBODY.pw_dir,
                   "LANG": "fr_FR.UTF-8"}


def test_env_user_and_home_win_over_the_pool_user():
    env = unix.worker_environ(pool("env[USER] = app\nenv[HOME] = /srv/app"), NOBODY, MASTER_ENV)
    assert env == {"USER": "app", "HOME": "/srv/app"}


def test_no_user_entry_sets_no_user_or_home():
    assert unix.worker_environ(pool("env[A] = 1"), None, MASTER_ENV) == {"A": "1"}
    assert unix.worker_environ(pool("clear_env = no"), None, MASTER_ENV) == MASTER_ENV


# --- apply in a worker whose master is not root ------------------------------------------------

def _in_child(func):
    """Run ``func`` in a forked child; what it returns (repr-able), or the exception's text."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            try:
                result = repr(("ok", func()))
            except Exception as e:
                result = repr(("raised", "%s: %s" % (type(e).__name__, e)))
            os.write(write_fd, result.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return ast.literal_eval(data.decode())


@pytest.fixture
def open_dir():
    """A directory anyone may enter (pytest's tmp_path is root's alone when run as root)."""
    path = Path(tempfile.mkdtemp(prefix="pyfpm-unit-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_apply_without_root_keeps_the_identity_and_applies_the_rest(open_dir):
    work, jail = open_dir / "work", open_dir / "jail"
    work.mkdir()
    (jail / work.relative_to("/")).mkdir(parents=True)  # chdir is checked inside the chroot
    p = pool("user = root\ngroup = root\nchroot = %s\nprocess.priority = -5\n"
             "chdir = %s\nenv[A] = 1\nrlimit_core = 0" % (jail, work))

    def child():
        if os.geteuid() == 0:  # become an ordinary user first, as a non-root master is
            os.setgroups([])
            os.setgid(NOBODY.pw_gid)
            os.setuid(NOBODY.pw_uid)
        before = os.nice(0)
        log = Log()
        unix.apply(p, log, allow_root=False)
        return (os.getuid(), os.getcwd(), dict(os.environ), os.nice(0) - before,
                resource.getrlimit(resource.RLIMIT_CORE), log.lines)

    status, result = _in_child(child)
    assert status == "ok", result
    uid, cwd, env, nice_change, core, lines = result
    assert uid == (NOBODY.pw_uid if os.geteuid() == 0 else os.getuid())
    # no chroot (chroot() would have failed), so chdir is the host's directory
    assert cwd == str(work) and nice_change == 0 and core == (0, 0) and lines == []
    me = pwd.getpwuid(uid)
    assert env == {"A": "1", "USER": me.pw_name, "HOME": me.pw_dir}


def test_apply_as_root_refuses_root_workers_without_R():
    if os.geteuid() != 0:
        pytest.skip("needs root: a non-root worker cannot become root anyway")
    status, text = _in_child(lambda: unix.apply(pool(""), Log(), allow_root=False))
    assert (status, text) == ("raised", "UnixError: [pool www] user has not been defined; set "
                              "'user' or start pyfpm with -R to let workers run as root")


def test_apply_logs_an_rlimit_it_cannot_set_and_goes_on():
    ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
    p = pool("rlimit_files = %d\nclear_env = no" % (ceiling + 1))

    def child():
        log = Log()
        before = resource.getrlimit(resource.RLIMIT_NOFILE)
        unix.apply(p, log, allow_root=True)
        return before, log.lines

    status, (before, lines) = _in_child(child)
    assert status == "ok"
    assert lines == [("error", "rlimit_files = %d: setrlimit(RLIMIT_NOFILE) failed: "
                               "not allowed to raise maximum limit; the limit stays at soft %d, "
                               "hard %d; the kernel allows at most %d (fs.nr_open)"
                      % (ceiling + 1, before[0], before[1], ceiling))]


# --- apply_global: the master's own limits -----------------------------------------------------

def test_global_rlimit_that_cannot_be_set_is_an_error():
    ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
    c = load(("www", ""), global_="rlimit_files = %d" % (ceiling + 1))
    with pytest.raises(unix.UnixError, match=r"^\[global\] rlimit_files = %d: setrlimit"
                                             r"\(RLIMIT_NOFILE\) failed: " % (ceiling + 1)):
        unix.apply_global(c.global_, Log())


def test_global_priority_without_root_is_a_notice():
    c = load(("www", ""), global_="process.priority = 5")
    log = Log()
    before = os.nice(0)
    unix.apply_global(c.global_, log, euid=1000)
    assert os.nice(0) == before
    assert log.lines == [("notice", "'process.priority' directive is ignored when FPM is not "
                                    "running as root")]


def test_global_limits_are_set():
    c = load(("www", ""), global_="rlimit_core = 0")

    def child():
        unix.apply_global(c.global_, Log())
        return resource.getrlimit(resource.RLIMIT_CORE)

    assert _in_child(child) == ("ok", (0, 0))
