"""fpm.config and fpm.ini: what a user writing pyfpm.conf or pyfpm.toml sees."""
import dataclasses
import re
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from fpm import config, ini
from fpm.config import tomllib
from fpm.config import Config, ConfigError, GlobalConfig, PoolConfig

CONF = Path(__file__).resolve().parents[2] / "conf"

POOL = """\
[www]
listen = 127.0.0.1:9000
pm = static
pm.max_children = 3
"""


def ini_text(text):
    return textwrap.dedent(text).lstrip("\n")


def load_ini(text, path="/etc/pyfpm/pyfpm.conf", **kw):
    return config.loads(ini_text(text), path, "ini", **kw)


def load_toml(text, path="/etc/pyfpm/pyfpm.toml", **kw):
    return config.loads(ini_text(text), path, "toml", **kw)


def errors_of(text, fmt="ini", path="/etc/pyfpm/pyfpm.conf"):
    with pytest.raises(ConfigError) as info:
        config.loads(ini_text(text), path, fmt)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def one_error(text, fmt="ini", path="/etc/pyfpm/pyfpm.conf"):
    errors = errors_of(text, fmt, path)
    assert len(errors) == 1, errors
    return errors[0]


def make_venv(path):
    """The part of a venv pyfpm checks: site-packages for the running Python."""
    site = path / f"lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
    site.mkdir(parents=True)
    return site


def www(text):
    """The one pool of a config, read from `[www]` lines plus `text`."""
    (pool,) = load_ini(POOL + ini_text(text)).pools
    return pool


# --- the shipped files ---------------------------------------------------------------------

def test_shipped_ini_and_toml_load_and_agree():
    conf = config.load(str(CONF / "pyfpm.conf"))
    toml = config.load(str(CONF / "pyfpm.toml"))
    assert conf.path == str(CONF / "pyfpm.conf")
    assert [p.name for p in conf.pools] == ["www"]  # found through include=pool.d/*.conf
    assert conf.pools[0].listen == ("127.0.0.1:9000",)
    assert conf.pools[0].app == "fpm.demo:app"
    assert (conf.global_, conf.pools) == (toml.global_, toml.pools)
    assert conf.messages == () and toml.messages == ()


_DOCUMENTED = {  # a directive line, commented out or not: `;name = `, `#"name" = `, `env[X] = `
    "ini": re.compile(r"^;?([a-z_.]+)(?:\[[^\]]*\])?\s*=", re.M),
    "toml": re.compile(r"^#?\"?([a-z_.]+)\"?\s*=", re.M),
}


@pytest.mark.parametrize("name, section", [
    ("pyfpm.conf", "global"), ("pool.d/www.conf", "pool"),
    ("pyfpm.toml", "global"), ("pyfpm.toml", "pool")])
def test_shipped_files_document_every_directive(name, section):
    """Each file shows exactly the table's directives: none missing, none misspelt."""
    text = (CONF / name).read_text()
    if name == "pyfpm.toml":
        text = text.split("[pools.www]")[section == "pool"]
    found = set(_DOCUMENTED["toml" if name.endswith(".toml") else "ini"].findall(text))
    assert found == {d.name for d in config.DIRECTIVES if d.section == section}


def test_shipped_toml_examples_are_valid():
    """Every commented-out `#key = value` of pyfpm.toml, read as TOML, is a valid value."""
    section = "global"
    for line in (CONF / "pyfpm.toml").read_text().splitlines():
        if line.startswith("[pools."):
            section = "pool"
        if not _DOCUMENTED["toml"].match(line) or not line.startswith("#"):
            continue
        for name, key, value in config._flatten(tomllib.loads(line[1:]), section):
            d = config._TABLE[(section, name)]
            assert (key is not None) == bool(d.array) or (key is None and d.plain), line
            d.kind.parse(value)


def test_shipped_commented_examples_are_valid(tmp_path):
    """Un-commenting every `;name = value` example of the INI files still loads."""
    (tmp_path / "pool.d").mkdir()
    (tmp_path / "srv").mkdir()
    make_venv(tmp_path / "srv/.venv")
    for name in ("pyfpm.conf", "pool.d/www.conf"):
        lines = []
        for line in (CONF / name).read_text().splitlines():
            if line.startswith(";") and not line.startswith("; ") and "=" in line and \
                    not line.startswith(";;"):
                line = line[1:]
            lines.append(line.replace("/srv/myapp", str(tmp_path / "srv"))
                         .replace("/run/pyfpm", str(tmp_path)))
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    conf = config.load(str(tmp_path / "pyfpm.conf"))
    (pool,) = conf.pools
    # a later listen line replaces the first, listen[] adds to it
    assert pool.listen == (str(tmp_path / "www.sock"), "[::1]:9000")
    assert pool.mount == "/app"
    assert conf.global_.pid == str(tmp_path / "run/pyfpm.pid")


# --- the INI reader --------------------------------------------------------------------------

def test_comments_and_trailing_comments():
    pool = www("""
        ; a comment line
        app = app:application ; what runs
        mount = /shop;no space before the comment
    """)
    assert pool.app == "app:application"
    assert pool.mount == "/shop"


def test_quoted_values():
    doc = ini.parse(ini_text(r"""
        [www]
        a = "semi;colon kept" ; comment
        b = 'single ${HOME} \n literal'
        c = "quote \" backslash \\ dollar \${HOME} other \n"
        d = "  spaces kept  "
    """), environ={"HOME": "/root"})
    values = {e.name: e.value for e in doc.entries if e.name}
    assert values == {
        "a": "semi;colon kept",
        "b": r"single ${HOME} \n literal",
        "c": r"quote " + '" backslash \\ dollar ${HOME} other \\n',
        "d": "  spaces kept  ",
    }
    assert doc.errors == []


def test_reader_errors_name_file_and_line():
    doc = ini.parse(ini_text("""
        [www]
        listen = "unterminated
        just words
        x = "a" b
        [broken
        [ ]
        app = ${unclosed
    """), "/etc/p.conf")
    assert doc.errors == [
        "[/etc/p.conf:2] missing closing '\"'",
        "[/etc/p.conf:3] expected 'name = value' or '[section]', got 'just words'",
        "[/etc/p.conf:4] x: unexpected text after the closing quote: 'b'",
        "[/etc/p.conf:5] malformed section header '[broken' (expected [name])",
        "[/etc/p.conf:6] empty section name '[]'",
        "[/etc/p.conf:7] [pool www] app: invalid value '${unclosed' "
        "(unterminated '${' in '${unclosed')",
    ]


def test_entries_carry_file_line_section():
    doc = ini.parse("pid = x\n[WWW]\nlisten = 1\n[global]\nlog_level = debug\n[www]\npm=static\n",
                    "f.conf")
    assert doc.entries == [
        ini.Entry("f.conf", 1, None, "pid", "x"),
        ini.Entry("f.conf", 2, "WWW", "", ""),
        ini.Entry("f.conf", 3, "WWW", "listen", "1"),
        ini.Entry("f.conf", 5, None, "log_level", "debug"),
        ini.Entry("f.conf", 6, "WWW", "", ""),  # [www] re-opens [WWW], under its first name
        ini.Entry("f.conf", 7, "WWW", "pm", "static"),
    ]


def test_global_section_is_case_insensitive_and_pools_reopen():
    conf = load_ini("""
        [GLOBAL]
        log_level = debug
        [www]
        listen = 9000
        [other]
        listen = 9001
        pm = static
        pm.max_children = 1
        [WWW]
        pm = static
        pm.max_children = 2
    """)
    assert conf.global_.log_level == "debug"
    assert [(p.name, p.listen, p.pm_max_children) for p in conf.pools] == [
        ("www", ("9000",), 2), ("other", ("9001",), 1)]


def test_directive_names_are_case_insensitive():
    pool = www("PM.Max_Children = 7\nAPP = a:b\n")
    assert pool.pm_max_children == 7 and pool.app == "a:b"


def test_later_value_overrides_earlier():
    assert www("pm.max_children = 9\n").pm_max_children == 9


def test_pool_variable_is_replaced_in_every_value(tmp_path):
    (tmp_path / "run").mkdir()
    conf = load_ini("""
        [api]
        listen = run/$pool.sock
        pm = static
        pm.max_children = 1
        app = $pool.wsgi:app
        env[NAME] = "pool $pool"
    """, path=str(tmp_path / "pyfpm.conf"))
    (pool,) = conf.pools
    assert pool.listen == (str(tmp_path / "run/api.sock"),)
    assert pool.app == "api.wsgi:app"
    assert pool.env == (("NAME", "pool api"),)


def test_pool_variable_in_global_is_an_error():
    error = one_error("pid = /run/$pool.pid\n" + POOL)
    assert error == ("[/etc/pyfpm/pyfpm.conf:1] [global] pid: invalid value '/run/$pool.pid' "
                     "('$pool' can only be used in a pool section)")


def test_env_expansion(monkeypatch):
    monkeypatch.setenv("FPM_PORT", "9100")
    monkeypatch.setenv("FPM_EMPTY", "")
    monkeypatch.delenv("FPM_UNSET", raising=False)
    conf = load_ini("""
        [global]
        log_level = ${FPM_UNSET:-warning}
        [a]
        listen = 127.0.0.1:${FPM_PORT}
        pm = static
        pm.max_children = ${FPM_UNSET:-4}
        mount = "/x${FPM_UNSET}"
        app = "${FPM_EMPTY:-mod}:app"
    """)
    assert conf.global_.log_level == "warning"
    (pool,) = conf.pools
    assert pool.listen == ("127.0.0.1:9100",)
    assert pool.pm_max_children == 4
    assert pool.mount == "/x"  # an unset variable is empty, as in PHP
    assert pool.app == "mod:app"  # :- also covers an empty variable


def test_env_expansion_errors_name_the_value():
    error = one_error(POOL + "app = ${1BAD}\n")
    assert error == ("[/etc/pyfpm/pyfpm.conf:5] [pool www] app: invalid value '${1BAD}' "
                     "(invalid variable name '1BAD' in '${1BAD}')")


def test_env_default_may_hold_a_semicolon(monkeypatch):
    monkeypatch.delenv("FPM_UNSET", raising=False)
    assert www("mount = ${FPM_UNSET:-/a;b} ; comment\n").mount == "/a;b"


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"),
                                      blacklist_characters='"\\$\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029'),
               max_size=40))
def test_double_quoted_values_round_trip(value):
    (entry,) = [e for e in ini.parse(f'[p]\nv = "{value}"\n', environ={}).entries if e.name]
    assert entry.value == value


# --- includes --------------------------------------------------------------------------------

def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ini_text(text))
    return str(path)


def test_include_glob_sorted_relative_to_the_config_dir(tmp_path):
    main = write(tmp_path / "pyfpm.conf", "[global]\nlog_level = error\ninclude = pool.d/*.conf\n")
    write(tmp_path / "pool.d/b.conf", "[b]\nlisten = 9002\npm = static\npm.max_children = 1\n")
    write(tmp_path / "pool.d/a.conf", "[a]\nlisten = 9001\npm = static\npm.max_children = 1\n")
    write(tmp_path / "pool.d/skip.txt", "garbage")
    (tmp_path / "pool.d/dir.conf").mkdir()  # a directory matching the glob is skipped
    conf = config.load(main)
    assert [p.name for p in conf.pools] == ["a", "b"]
    assert conf.global_.log_level == "error"


def test_include_continues_the_current_section(tmp_path):
    main = write(tmp_path / "pyfpm.conf", """
        [www]
        listen = 9000
        include = www.d/*.conf
        app = after:include
    """)
    write(tmp_path / "www.d/pm.conf", "pm = static\npm.max_children = 4\n")
    (pool,) = config.load(main).pools
    assert (pool.pm_max_children, pool.app) == (4, "after:include")


def test_include_relative_to_prefix(tmp_path):
    write(tmp_path / "prefix/pools/www.conf", POOL)
    main = write(tmp_path / "etc/pyfpm.conf", "pid = run/fpm.pid\ninclude = pools/*.conf\n")
    conf = config.load(main, prefix=str(tmp_path / "prefix"))
    assert [p.name for p in conf.pools] == ["www"]
    assert conf.global_.pid == str(tmp_path / "prefix/run/fpm.pid")


def test_include_without_match_is_a_warning(tmp_path):
    main = write(tmp_path / "pyfpm.conf", "include = nothing/*.conf\n" + POOL)
    conf = config.load(main)
    assert conf.messages == (("warning", f"Nothing matches the include pattern 'nothing/*.conf' "
                                         f"from {main} at line 1."),)


def test_include_depth_limit(tmp_path):
    for n in range(7):
        write(tmp_path / f"l{n}.conf", f"include = l{n + 1}.conf\n")
    write(tmp_path / "l7.conf", POOL)
    errors = errors_of((tmp_path / "l0.conf").read_text(), path=str(tmp_path / "l0.conf"))
    assert errors[0] == (f"[{tmp_path}/l5.conf:1] include 'l6.conf': "
                         f"failed to include more than 5 files recursively")


def test_include_depth_five_is_fine(tmp_path):
    for n in range(5):
        write(tmp_path / f"l{n}.conf", f"include = l{n + 1}.conf\n")
    write(tmp_path / "l5.conf", POOL)
    assert config.load(str(tmp_path / "l0.conf")).pools[0].name == "www"


def test_errors_in_included_files_name_that_file(tmp_path):
    main = write(tmp_path / "pyfpm.conf", "include = pool.d/*.conf\n")
    inc = write(tmp_path / "pool.d/www.conf", POOL + "pm.max_children = lots\n")
    with pytest.raises(ConfigError) as info:
        config.load(main)
    assert info.value.errors == [f"[{inc}:5] [pool www] pm.max_children: invalid value 'lots' "
                                 f"(expected an integer from 1 to 65536; the most workers a pool's scoreboard is made for)"]


# --- value types -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("yes", True), ("on", True), ("true", True), ("1", True), ("YES", True),
    ("no", False), ("off", False), ("false", False), ("0", False), ("", False), ("none", False),
])
def test_booleans(text, value):
    assert load_ini(f"daemonize = {text}\n" + POOL).global_.daemonize is value


def test_bad_boolean():
    error = one_error("daemonize = maybe\n" + POOL)
    assert error == ("[/etc/pyfpm/pyfpm.conf:1] [global] daemonize: invalid value 'maybe' "
                     "(expected a boolean: yes/no, on/off, true/false or 1/0)")


@pytest.mark.parametrize("text, seconds", [
    ("0", 0), ("30", 30), ("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400), ("10M", 600)])
def test_times(text, seconds):
    assert load_ini(f"process_control_timeout = {text}\n" + POOL
                    ).global_.process_control_timeout == seconds


@pytest.mark.parametrize("text", ["1.5m", "5x", "-1", "", "m"])
def test_bad_times(text):
    error = one_error(f"process_control_timeout = {text}\n" + POOL)
    assert error.startswith(f"[/etc/pyfpm/pyfpm.conf:1] [global] process_control_timeout: "
                            f"invalid value '{text}' (expected a time in seconds")


@given(st.integers(0, 10**6), st.sampled_from(["", "s", "m", "h", "d"]))
def test_time_units(n, unit):
    assert ini.parse_time(f"{n}{unit}") == n * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def test_log_level_words():
    assert load_ini("log_level = WARN\n" + POOL).global_.log_level == "warning"
    error = one_error("log_level = verbose\n" + POOL)
    assert "log_level: invalid value 'verbose' (expected one of debug, notice, warning, error, " \
           "alert)" in error


def test_error_log():
    assert load_ini("error_log = log/fpm.log\n" + POOL).global_.error_log == \
        "/etc/pyfpm/log/fpm.log"
    assert load_ini("error_log = stderr\n" + POOL).global_.error_log == "stderr"
    assert load_ini("error_log = syslog\n" + POOL).global_.error_log == "syslog"


# --- pool directives -------------------------------------------------------------------------

def test_defaults():
    conf = load_ini(POOL)
    assert conf.global_ == GlobalConfig()
    assert conf.global_ == GlobalConfig(pid=None, error_log="stderr", log_level="notice",
                                        daemonize=True, process_control_timeout=0)
    assert conf.pools == (PoolConfig(name="www", listen=("127.0.0.1:9000",), pm_max_children=3),)
    pool = conf.pools[0]
    assert (pool.listen_backlog, pool.listen_mode, pool.pm, pool.mount,
            pool.fastcgi_params_max, pool.python_path) == (-1, 0o660, "static", "", 1048576, ())


def test_new_defaults_are_the_ones_the_spec_names():
    """Written out, not read from the table: other modules rely on these values."""
    conf = load_ini(POOL)
    assert {name: getattr(conf.global_, name) for name in (
        "syslog_ident", "syslog_facility", "log_limit", "log_buffering",
        "emergency_restart_threshold", "emergency_restart_interval", "process_max",
        "process_priority", "rlimit_files", "rlimit_core", "events_mechanism",
        "systemd_interval")} == {
        "syslog_ident": "pyfpm", "syslog_facility": "daemon", "log_limit": 1024,
        "log_buffering": True, "emergency_restart_threshold": 0, "emergency_restart_interval": 0,
        "process_max": 0, "process_priority": None, "rlimit_files": None, "rlimit_core": None,
        "events_mechanism": "auto", "systemd_interval": 10}
    expected_pool = {
        "prefix": None, "user": None, "group": None, "listen_acl_users": (),
        "listen_acl_groups": (), "listen_allowed_clients": (), "process_priority": None,
        "process_dumpable": False, "pm_max_spawn_rate": 32, "pm_process_idle_timeout": 10,
        "pm_max_requests": 0, "pm_max_requests_jitter": 0, "pm_max_memory": 0,
        "pm_status_path": None, "pm_status_listen": None, "ping_path": None,
        "ping_response": "pong", "access_log": None, "access_format": '%R - %u %t "%m %r" %s',
        "access_suppress_path": (), "slowlog": None, "request_slowlog_timeout": 0,
        "request_slowlog_trace_depth": 20, "request_terminate_timeout": 0,
        "request_terminate_timeout_track_finished": False, "rlimit_files": None,
        "rlimit_core": None, "chroot": None, "catch_workers_output": False,
        "decorate_workers_output": True, "clear_env": True,
        "security_limit_extensions": (".py",), "virtualenv": None, "preload": False,
        "request_read_timeout": 60, "request_head_timeout": 10, "request_body_min_rate": 1024}
    assert {name: getattr(conf.pools[0], name) for name in expected_pool} == expected_pool


@given(st.integers(0, 1 << 40))
def test_sizes_show_as_they_read_back(n):
    kind = config.Size(0)
    assert kind.parse(kind.show(n)) == n


def test_every_field_is_set_from_the_file(tmp_path):
    conf = load_ini(f"""
        [global]
        pid = /run/pyfpm.pid
        error_log = /var/log/pyfpm.log
        log_level = alert
        daemonize = no
        process_control_timeout = 1m
        [www]
        listen = /run/www.sock
        listen.backlog = 128
        listen.owner = nginx
        listen.group = www-data
        listen.mode = 0600
        pm = static
        pm.max_children = 8
        app = site.wsgi:application
        chdir = {tmp_path}
        python_path = /srv/a:/srv/b, lib
        mount = /shop/
        fastcgi.params_max = 65536
        env[A] = 1
        env[B] = two
    """)
    assert conf == Config(
        "/etc/pyfpm/pyfpm.conf",
        GlobalConfig("/run/pyfpm.pid", "/var/log/pyfpm.log", "alert", False, 60),
        (PoolConfig("www", ("/run/www.sock",), 128, "nginx", "www-data", 0o600, "static", 8,
                    0, 0, 0, "site.wsgi:application", str(tmp_path), ("/srv/a", "/srv/b", "lib"),
                    "/shop", 65536, (("A", "1"), ("B", "two"))),))


def test_config_is_frozen():
    conf = load_ini(POOL)
    with pytest.raises(AttributeError):
        conf.pools[0].pm_max_children = 10


@pytest.mark.parametrize("listen", [
    "127.0.0.1:9000", "[::1]:9000", "[::]:1", "9000", "localhost:65535", "/run/x.sock"])
def test_listen_forms(listen):
    assert www(f"listen = {listen}\n").listen == (listen,)


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "127.0.0.1:65536", "0", "::1:9000",
                                    "127.0.0.1:http", "[::1]9000", ":9000"])
def test_bad_listen(listen):
    error = one_error(POOL + f"listen = {listen}\n")
    assert error == (f"[/etc/pyfpm/pyfpm.conf:5] [pool www] listen: invalid value '{listen}' "
                     f"(expected 'ip:port', '[ipv6]:port', 'port' or a unix socket path; "
                     f"port from 1 to 65535)")


# --- several listen addresses, POSIX ACLs, allowed_clients ------------------------------------

def test_several_listen_lines():
    pool = www("listen[] = /run/www.sock\nlisten[] = [::1]:9000\n")
    # POOL's `listen =` comes first: listen[] lines add to it
    assert pool.listen == ("127.0.0.1:9000", "/run/www.sock", "[::1]:9000")


def test_a_plain_listen_line_replaces_the_earlier_ones():
    assert www("listen[] = 9001\nlisten = /run/www.sock\n").listen == ("/run/www.sock",)


def test_a_comma_does_not_separate_addresses():
    assert www("listen = /run/a,b.sock\n").listen == ("/run/a,b.sock",)


def test_several_listen_in_toml_and_relative_paths_in_each(tmp_path):
    (tmp_path / "run").mkdir()
    (pool,) = load_toml("""
        [pools.www]
        listen = ["run/www.sock", "127.0.0.1:9000"]
        pm = "static"
        "pm.max_children" = 1
    """, path=str(tmp_path / "pyfpm.toml")).pools
    assert pool.listen == (str(tmp_path / "run/www.sock"), "127.0.0.1:9000")


def test_listen_keys_are_refused():
    assert one_error(POOL + "listen[a] = 9001\n") == (
        "[/etc/pyfpm/pyfpm.conf:5] [pool www] listen[a]: keys are not allowed here "
        "(write listen[] = value)")


def test_each_listen_address_is_checked():
    assert one_error(POOL + "listen[] = 127.0.0.1:0\n").startswith(
        "[/etc/pyfpm/pyfpm.conf:5] [pool www] listen: invalid value '127.0.0.1:0' (expected")


def test_an_address_twice_in_one_pool():
    assert one_error(POOL + "listen[] = 127.0.0.1:9000\n") == (
        "[/etc/pyfpm/pyfpm.conf:5] [pool www] listen: address '127.0.0.1:9000' is already used "
        "by pool 'www'")


def test_an_address_of_a_pools_second_line_used_by_another():
    errors = errors_of(POOL + "listen[] = 9001\n[api]\npm = static\npm.max_children = 1\n"
                              "listen[] = 9002\nlisten[] = 9001\n")
    assert errors == ["[/etc/pyfpm/pyfpm.conf:10] [pool api] listen: address '9001' is already "
                      "used by pool 'www'"]


def test_dump_shows_each_address_and_reads_back():
    conf = load_ini(POOL + "listen[] = /run/www.sock\n")
    lines = config.dump(conf).splitlines()
    assert [line for line in lines if line.startswith("\tlisten")][:2] == [
        "\tlisten[] = 127.0.0.1:9000", "\tlisten[] = /run/www.sock"]
    dumped = "\n".join(line for line in lines if not line.endswith(" = undefined"))
    assert load_ini(dumped).pools == conf.pools


@pytest.mark.parametrize("value, stored", [
    ("127.0.0.1", ("127.0.0.1",)),
    ("127.0.0.1, 10.0.0.0/8,::1 , fd00::/8", ("127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8")),
    ("", ()),
])
def test_allowed_clients(value, stored):
    assert www(f"listen.allowed_clients = {value}\n").listen_allowed_clients == stored


def test_allowed_clients_in_toml_as_a_list_or_a_string():
    for value in ('["10.0.0.0/8", "::1"]', '"10.0.0.0/8, ::1"'):
        (pool,) = load_toml(f"""
            [pools.www]
            listen = "9000"
            pm = "static"
            "pm.max_children" = 1
            "listen.allowed_clients" = {value}
        """).pools
        assert pool.listen_allowed_clients == ("10.0.0.0/8", "::1")


def test_an_invalid_allowed_client_is_an_error_naming_it():
    assert one_error(POOL + "listen.allowed_clients = 127.0.0.1, 10.0.0.0/40\n") == (
        "[/etc/pyfpm/pyfpm.conf:5] [pool www] listen.allowed_clients: invalid value "
        "'127.0.0.1, 10.0.0.0/40' (expected IPv4 or IPv6 addresses or CIDR ranges separated by "
        "commas, e.g. 127.0.0.1, 10.0.0.0/8, ::1, fd00::/8; '10.0.0.0/40' is not one)")


def test_allowed_clients_on_a_unix_only_pool_warns():
    conf = load_ini(POOL.replace("127.0.0.1:9000", "/run/www.sock")
                    + "listen.allowed_clients = 127.0.0.1\n")
    assert conf.messages == (("warning", "[pool www] listen.allowed_clients: no effect, the "
                                         "pool has no TCP socket (the list applies to TCP "
                                         "sockets only)"),)
    assert load_ini(POOL + "listen[] = /run/www.sock\nlisten.allowed_clients = ::1\n"
                    ).messages == ()


@pytest.mark.parametrize("value, stored", [
    ("www-data", ("www-data",)), ("www-data, 33,nginx", ("www-data", "33", "nginx")),
    ("a,,a", ("a",)), ("", ())])
def test_acl_names(value, stored):
    pool = www(f"listen.acl_users = {value}\nlisten.acl_groups = {value}\n")
    assert pool.listen_acl_users == pool.listen_acl_groups == stored


def test_acl_names_in_toml():
    (pool,) = load_toml("""
        [pools.www]
        listen = "/run/www.sock"
        pm = "static"
        "pm.max_children" = 1
        "listen.acl_users" = ["www-data", 33]
        "listen.acl_groups" = "adm, 4"
    """).pools
    assert (pool.listen_acl_users, pool.listen_acl_groups) == (("www-data", "33"), ("adm", "4"))


def test_acl_names_of_another_type_are_refused():
    error = one_error("""
        [pools.www]
        listen = "/run/www.sock"
        pm = "static"
        "pm.max_children" = 1
        "listen.acl_users" = ["www-data", true]
    """, fmt="toml", path="/etc/pyfpm/pyfpm.toml")
    assert error == ("[/etc/pyfpm/pyfpm.toml:5] [pool www] listen.acl_users: invalid value "
                     "'['www-data', True]' (expected user or group names or ids separated by "
                     "commas)")


def test_acl_makes_owner_and_group_ignored_with_php_fpms_warning():
    conf = load_ini(POOL.replace("127.0.0.1:9000", "/run/www.sock") + "listen.owner = nginx\n"
                    "listen.group = www-data\nlisten.acl_groups = www-data\n")
    assert conf.messages == (
        ("warning", "[pool www] ACL set, listen.owner = 'nginx' is ignored"),
        ("warning", "[pool www] ACL set, listen.group = 'www-data' is ignored"))


def test_acl_on_a_tcp_only_pool_warns():
    conf = load_ini(POOL + "listen.acl_users = nginx\nlisten.acl_groups = adm\n")
    assert conf.messages == (("warning", "[pool www] listen.acl_users and listen.acl_groups: no "
                                         "effect, the pool has no unix socket (ACLs apply to "
                                         "unix sockets only)"),)


def test_relative_paths_use_the_config_dir_or_the_prefix(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "run").mkdir()
    text = "pid = run/fpm.pid\nerror_log = log/err.log\n[www]\nlisten = run/www.sock\n" \
           "pm = static\npm.max_children = 1\nchdir = app\n"
    conf = config.loads(text, str(tmp_path / "pyfpm.conf"))
    assert conf.global_.pid == str(tmp_path / "run/fpm.pid")
    assert conf.global_.error_log == str(tmp_path / "log/err.log")
    assert conf.pools[0].listen == (str(tmp_path / "run/www.sock"),)
    assert conf.pools[0].chdir == str(tmp_path / "app")
    conf = config.loads(text.replace("chdir = app", "chdir = /"), "/nowhere/pyfpm.conf",
                        prefix=str(tmp_path))
    assert conf.global_.pid == str(tmp_path / "run/fpm.pid")
    assert conf.pools[0].listen == (str(tmp_path / "run/www.sock"),)


@pytest.mark.parametrize("line, directive", [
    ("listen = {d}/www.sock", "listen"),
    ("listen[] = {d}/www.sock", "listen"),
    ("pm.status_listen = {d}/status.sock", "pm.status_listen"),
])
def test_a_unix_socket_needs_an_existing_directory(tmp_path, line, directive):
    missing = tmp_path / "run"
    text = POOL.replace("listen = 127.0.0.1:9000", "listen = 9000") + \
        line.format(d=missing) + "\n"
    value = line.split("= ", 1)[1].format(d=missing)
    assert one_error(text) == (
        f"[/etc/pyfpm/pyfpm.conf:5] [pool www] {directive}: invalid value '{value}' (expected "
        f"a unix socket path in an existing directory; '{missing}' is not a directory)")
    missing.mkdir()
    assert load_ini(text).pools[0].listen[-1] in (value, "9000")


def test_a_relative_socket_is_checked_where_it_resolves(tmp_path):
    text = POOL.replace("127.0.0.1:9000", "run/www.sock")
    assert one_error(text, path=str(tmp_path / "pyfpm.conf")).endswith(
        f"listen: invalid value 'run/www.sock' (expected a unix socket path in an existing "
        f"directory; '{tmp_path}/run' is not a directory)")
    (tmp_path / "run").mkdir()
    assert config.loads(ini_text(text), str(tmp_path / "pyfpm.conf")).pools[0].listen == \
        (str(tmp_path / "run/www.sock"),)


def test_chdir_must_exist(tmp_path):
    error = one_error(POOL + f"chdir = {tmp_path}/missing\n")
    assert error == (f"[/etc/pyfpm/pyfpm.conf:5] [pool www] chdir: invalid value "
                     f"'{tmp_path}/missing' (expected an existing directory; "
                     f"'{tmp_path}/missing' is not one)")


@pytest.mark.parametrize("mode, value", [("0660", 0o660), ("600", 0o600), ("0o755", 0o755),
                                         ("0", 0)])
def test_listen_mode_is_octal(mode, value):
    assert www(f"listen.mode = {mode}\n").listen_mode == value


@pytest.mark.parametrize("mode", ["0888", "rw", "01777", ""])
def test_bad_listen_mode(mode):
    assert f"listen.mode: invalid value '{mode}' (expected an octal file mode from 0 to 0777" \
        in one_error(POOL + f"listen.mode = {mode}\n")


@pytest.mark.parametrize("app", ["app:application", "my_site.wsgi:app", "pkg.mod:obj.wsgi_app"])
def test_app_forms(app):
    assert www(f"app = {app}\n").app == app


@pytest.mark.parametrize("app", ["app", "app:", ":app", "my-site:app", "a:b()", "a b:c"])
def test_bad_app(app):
    error = one_error(POOL + f"app = {app}\n")
    assert error == (f"[/etc/pyfpm/pyfpm.conf:5] [pool www] app: invalid value '{app}' "
                     f"(expected 'module:callable', e.g. 'mysite.wsgi:application')")


@pytest.mark.parametrize("text, value", [("", ""), ("/", ""), ("/app", "/app"),
                                         ("/app/", "/app"), ("/a/b", "/a/b")])
def test_mount(text, value):
    assert www(f"mount = {text}\n").mount == value


def test_mount_must_start_with_a_slash():
    error = one_error(POOL + "mount = app\n")
    assert error == ("[/etc/pyfpm/pyfpm.conf:5] [pool www] mount: invalid value 'app' "
                     "(expected '' or a URL path starting with '/', e.g. /app)")


@pytest.mark.parametrize("text, value", [
    ("/a:/b", ("/a", "/b")), ("/a, /b", ("/a", "/b")), ("lib", ("lib",)), ("", ())])
def test_python_path(text, value):
    assert www(f"python_path = {text}\n").python_path == value


@pytest.mark.parametrize("directive, value, expected", [
    ("pm.max_children", "abc", "an integer from 1 to 65536; the most workers a pool's scoreboard is made for"),
    ("pm.max_children", "0", "an integer from 1 to 65536; the most workers a pool's scoreboard is made for"),
    ("pm.max_children", "-3", "an integer from 1 to 65536; the most workers a pool's scoreboard is made for"),
    ("pm.max_children", "", "an integer from 1 to 65536; the most workers a pool's scoreboard is made for"),
    ("listen.backlog", "-2", "an integer from -1 to 2147483647"),
    ("fastcgi.params_max", "0", "an integer from 1 to 2147483647"),
    ("fastcgi.params_max", "1M", "an integer from 1 to 2147483647"),
    ("pm.min_spare_servers", "-1",
     "an integer from 0 to 65536; the most workers a pool's scoreboard is made for"),
    ("pm", "fast", "one of static, dynamic, ondemand"),
])
def test_invalid_values_name_everything(directive, value, expected):
    error = one_error(POOL + f"{directive} = {value}\n")
    assert error == (f"[/etc/pyfpm/pyfpm.conf:5] [pool www] {directive}: "
                     f"invalid value '{value}' (expected {expected})")


def test_unknown_entries():
    errors = errors_of("""
        foo = 1
        listen = 9000
        [www]
        listen = 127.0.0.1:9000
        pm = static
        pm.max_children = 3
        pid = /run/x.pid
        bar[x] = 1
        env = 1
        pm[x] = 1
    """)
    assert errors == [
        "[/etc/pyfpm/pyfpm.conf:1] [global] unknown entry 'foo'",
        "[/etc/pyfpm/pyfpm.conf:2] [global] unknown entry 'listen' "
        "(listen belongs in a pool section)",
        "[/etc/pyfpm/pyfpm.conf:7] [pool www] unknown entry 'pid' "
        "(pid belongs in the [global] section)",
        "[/etc/pyfpm/pyfpm.conf:8] [pool www] unknown directive 'bar'",
        "[/etc/pyfpm/pyfpm.conf:9] [pool www] unknown entry 'env' (write env[NAME] = value)",
        "[/etc/pyfpm/pyfpm.conf:10] [pool www] unknown directive 'pm'",
    ]


@pytest.mark.parametrize("fmt, text, line", [
    ("ini", POOL + "pm.max_childs = 4\n", 5),
    ("toml", '[pools.www]\nlisten = "9000"\npm = "static"\n"pm.max_childs" = 4\n', 4),
    ("toml", '[pools.www]\nlisten = "9000"\n[pools.www.pm]\nmax_childs = 4\n', 4),
])
def test_a_misspelt_directive_is_named_with_the_nearest_known_one(fmt, text, line):
    path = "/etc/pyfpm/pyfpm." + ("toml" if fmt == "toml" else "conf")
    errors = errors_of(text, fmt, path)
    assert errors[0] == (f"[{path}:{line}] [pool www] unknown entry 'pm.max_childs' "
                         f"(did you mean 'pm.max_children'?)")


@pytest.mark.parametrize("line, error", [
    ("request_slowlog_timout = 5", "unknown entry 'request_slowlog_timout' "
                                   "(did you mean 'request_slowlog_timeout'?)"),
    ("Catch_Worker_Output = yes", "unknown entry 'Catch_Worker_Output' "
                                  "(did you mean 'catch_workers_output'?)"),
    ("evn[PATH] = /bin", "unknown directive 'evn' (did you mean 'env'?)"),
    ("php_admin_value[memory_limit] = 1G", "unknown directive 'php_admin_value'"),
    ("nothing_like_it = 1", "unknown entry 'nothing_like_it'"),
])
def test_suggestions_only_when_a_known_name_is_close(line, error):
    assert one_error(POOL + line + "\n") == f"[/etc/pyfpm/pyfpm.conf:5] [pool www] {error}"


def test_a_global_typo_is_matched_against_global_directives():
    assert one_error("proces.max = 4\n" + POOL) == (
        "[/etc/pyfpm/pyfpm.conf:1] [global] unknown entry 'proces.max' "
        "(did you mean 'process.max'?)")


def test_env_array():
    pool = www("env[PATH] = /bin\nenv[lower] = x\nenv[PATH] = /usr/bin\n")
    assert pool.env == (("PATH", "/usr/bin"), ("lower", "x"))  # keys keep their case
    assert one_error(POOL + "env[X] =\n") == "[/etc/pyfpm/pyfpm.conf:5] [pool www] env[X]: empty value"
    assert "env[]: a key is needed" in one_error(POOL + "env[] = 1\n")


# --- cross-field rules -----------------------------------------------------------------------

def test_listen_pm_and_max_children_are_mandatory():
    errors = errors_of("[www]\napp = a:b\n[other]\nlisten = 9001\npm = static\n")
    assert errors == [
        "[/etc/pyfpm/pyfpm.conf:1] [pool www] no listen address have been defined!",
        "[/etc/pyfpm/pyfpm.conf:1] [pool www] the process manager is missing "
        "(static, dynamic or ondemand)",
        "[/etc/pyfpm/pyfpm.conf:1] [pool www] pm.max_children must be set "
        "(expected an integer >= 1)",
        "[/etc/pyfpm/pyfpm.conf:3] [pool other] pm.max_children must be set "
        "(expected an integer >= 1)",
    ]


def test_an_invalid_listen_is_not_reported_as_missing():
    assert one_error(POOL + "listen = 127.0.0.1:99999\n").startswith(
        "[/etc/pyfpm/pyfpm.conf:5] [pool www] listen: invalid value '127.0.0.1:99999'")


def test_no_pool_is_an_error():
    assert one_error("log_level = debug\n") == \
        "[/etc/pyfpm/pyfpm.conf] no pool defined: at least one pool section ([www]) is needed"


def test_two_pools_on_one_address():
    error = one_error(POOL + "[api]\nlisten = 127.0.0.1:9000\npm = static\npm.max_children = 1\n")
    assert error == ("[/etc/pyfpm/pyfpm.conf:6] [pool api] listen: address '127.0.0.1:9000' "
                     "is already used by pool 'www'")


def test_two_pools_on_one_socket_through_relative_paths(tmp_path):
    (tmp_path / "run").mkdir()
    errors = errors_of(f"""
        [a]
        listen = {tmp_path}/run/a.sock
        pm = static
        pm.max_children = 1
        [b]
        listen = run/a.sock
        pm = static
        pm.max_children = 1
    """, path=str(tmp_path / "pyfpm.conf"))
    assert errors == [f"[{tmp_path}/pyfpm.conf:6] [pool b] listen: address "
                      f"'{tmp_path}/run/a.sock' is already used by pool 'a'"]


def dynamic(text):
    return POOL.replace("pm = static", "pm = dynamic").replace(
        "pm.max_children = 3", "pm.max_children = 10") + ini_text(text)


def test_dynamic_fills_in_start_servers():
    conf = load_ini(dynamic("pm.min_spare_servers = 2\npm.max_spare_servers = 7\n"))
    pool = conf.pools[0]
    assert (pool.pm, pool.pm_start_servers) == ("dynamic", 4)
    assert conf.messages == (
        ("notice", "[pool www] pm.start_servers is not set. It's been set to 4."),)


def test_dynamic_accepts_a_consistent_setup():
    pool = load_ini(dynamic("pm.start_servers = 3\npm.min_spare_servers = 1\n"
                            "pm.max_spare_servers = 5\n")).pools[0]
    assert (pool.pm_start_servers, pool.pm_min_spare_servers, pool.pm_max_spare_servers) == \
        (3, 1, 5)


@pytest.mark.parametrize("text, error", [
    ("pm.max_spare_servers = 3\n",
     "[/etc/pyfpm/pyfpm.conf:1] [pool www] pm.min_spare_servers (0) must not be less than 1 "
     "(pm = dynamic)"),
    ("pm.min_spare_servers = 1\n",
     "[/etc/pyfpm/pyfpm.conf:1] [pool www] pm.max_spare_servers (0) must not be less than 1 "
     "(pm = dynamic)"),
    ("pm.min_spare_servers = 1\npm.max_spare_servers = 11\n",
     "[/etc/pyfpm/pyfpm.conf:6] [pool www] pm.max_spare_servers (11) must not be greater than "
     "pm.max_children (10)"),
    ("pm.min_spare_servers = 11\npm.max_spare_servers = 12\n",
     "[/etc/pyfpm/pyfpm.conf:6] [pool www] pm.max_spare_servers (12) must not be greater than "
     "pm.max_children (10)"),
    ("pm.min_spare_servers = 3\npm.max_spare_servers = 2\n",
     "[/etc/pyfpm/pyfpm.conf:6] [pool www] pm.max_spare_servers (2) must not be less than "
     "pm.min_spare_servers (3)"),
    ("pm.min_spare_servers = 2\npm.max_spare_servers = 4\npm.start_servers = 5\n",
     "[/etc/pyfpm/pyfpm.conf:7] [pool www] pm.start_servers (5) must not be greater than "
     "pm.max_spare_servers (4)"),
    ("pm.min_spare_servers = 2\npm.max_spare_servers = 4\npm.start_servers = 1\n",
     "[/etc/pyfpm/pyfpm.conf:7] [pool www] pm.start_servers (1) must not be less than "
     "pm.min_spare_servers (2)"),
])
def test_dynamic_rules(text, error):
    assert one_error(dynamic(text)) == error


def test_static_and_ondemand_ignore_spare_settings():
    assert www("pm.min_spare_servers = 9\n").pm_min_spare_servers == 9
    assert www("pm = ondemand\n").pm == "ondemand"


def test_ondemand_zeroes_the_spare_settings():
    pool = www("pm = ondemand\npm.start_servers = 2\npm.min_spare_servers = 1\n"
               "pm.max_spare_servers = 3\n")
    assert (pool.pm_start_servers, pool.pm_min_spare_servers, pool.pm_max_spare_servers) == \
        (0, 0, 0)


@pytest.mark.parametrize("backlog, raised", [("0", 511), ("128", 511), ("510", 511)])
def test_ondemand_raises_a_low_backlog(backlog, raised):
    conf = load_ini(POOL + f"pm = ondemand\nlisten.backlog = {backlog}\n")
    assert conf.pools[0].listen_backlog == raised
    assert conf.messages == (("warning", f"[pool www] listen.backlog({backlog}) was too low for "
                                         f"the ondemand process manager. I updated it for you "
                                         f"to 511."),)


@pytest.mark.parametrize("backlog", ["-1", "511", "4096"])
def test_ondemand_keeps_a_deep_enough_backlog(backlog):
    conf = load_ini(POOL + f"pm = ondemand\nlisten.backlog = {backlog}\n")
    assert conf.pools[0].listen_backlog == int(backlog) and conf.messages == ()


def test_a_low_backlog_is_kept_by_other_process_managers():
    assert www("listen.backlog = 16\n").listen_backlog == 16


def test_slowlog_timeout_must_not_exceed_terminate_timeout():
    error = one_error(POOL + "slowlog = /var/log/slow.log\nrequest_slowlog_timeout = 1m\n"
                             "request_terminate_timeout = 30s\n")
    assert error == ("[/etc/pyfpm/pyfpm.conf:6] [pool www] request_slowlog_timeout (60s) must "
                     "not be greater than request_terminate_timeout (30s)")


@pytest.mark.parametrize("terminate", ["0", "60", "2m"])
def test_slowlog_timeout_within_terminate_timeout(terminate):
    pool = www(f"slowlog = /s.log\nrequest_slowlog_timeout = 60\n"
               f"request_terminate_timeout = {terminate}\n")
    assert pool.request_slowlog_timeout == 60


def test_slowlog_timeout_needs_slowlog():
    error = one_error(POOL + "request_slowlog_timeout = 5s\n")
    assert error == ("[/etc/pyfpm/pyfpm.conf:5] [pool www] request_slowlog_timeout (5s) needs "
                     "slowlog set: the file slow requests are written to")
    assert www("request_slowlog_timeout = 0\n").slowlog is None


@pytest.mark.parametrize("directive, value", [
    ("pm.status_path", "/status"), ("pm.status_path", "/a/B-c_d.e~f"), ("ping.path", "/ping")])
def test_status_and_ping_paths(directive, value):
    assert getattr(www(f"{directive} = {value}\n"), directive.replace(".", "_")) == value


@pytest.mark.parametrize("directive", ["pm.status_path", "ping.path"])
@pytest.mark.parametrize("value", ["status", "/st atus", "/status?full", "/caf\u00e9"])
def test_bad_status_and_ping_paths(directive, value):
    assert one_error(POOL + f"{directive} = {value}\n") == (
        f"[/etc/pyfpm/pyfpm.conf:5] [pool www] {directive}: invalid value '{value}' (expected "
        f"a URL path starting with '/', made of letters, digits and /_-.~)")


def test_root_status_path_needs_its_own_address():
    assert one_error(POOL + "pm.status_path = /\n") == (
        "[/etc/pyfpm/pyfpm.conf:5] [pool www] pm.status_path: invalid value '/' (expected a "
        "longer path, since '/' would take every request of the pool, or pm.status_listen set)")
    pool = www("pm.status_path = /\npm.status_listen = 127.0.0.1:9001\n")
    assert (pool.pm_status_path, pool.pm_status_listen) == ("/", "127.0.0.1:9001")


def test_root_ping_path_is_refused():
    assert one_error(POOL + "pm.status_listen = 9001\nping.path = /\n") == (
        "[/etc/pyfpm/pyfpm.conf:6] [pool www] ping.path: invalid value '/' (expected a longer "
        "path, since '/' would take every request of the pool)")


def test_ping_response_must_not_be_empty():
    assert www("ping.response = ok\n").ping_response == "ok"
    assert one_error(POOL + "ping.response =\n") == (
        "[/etc/pyfpm/pyfpm.conf:5] [pool www] ping.response: invalid value '' "
        "(expected a non-empty string)")


def test_status_listen_cannot_take_a_used_address(tmp_path):
    errors = errors_of(POOL + "pm.status_listen = 127.0.0.1:9000\n"
                              "[api]\nlisten = 9001\npm = static\npm.max_children = 1\n"
                              f"pm.status_listen = {tmp_path}/s.sock\n"
                              "[b]\nlisten = s.sock\npm = static\npm.max_children = 1\n",
                       path=str(tmp_path / "pyfpm.conf"))
    assert errors == [
        f"[{tmp_path}/pyfpm.conf:5] [pool www] pm.status_listen: address '127.0.0.1:9000' "
        "is already used by pool 'www'",
        f"[{tmp_path}/pyfpm.conf:12] [pool b] listen: address '{tmp_path}/s.sock' "
        "is already used by pool 'api' (pm.status_listen)",
    ]


def test_suppress_path_is_a_list():
    pool = www("access.suppress_path[] = /ping\naccess.suppress_path[] = /health\n")
    assert pool.access_suppress_path == ("/ping", "/health")
    assert www("").access_suppress_path == ()


@pytest.mark.parametrize("line, error", [
    ("access.suppress_path[] = ping",
     "access.suppress_path: invalid value 'ping' (expected a URL path starting with '/')"),
    ("access.suppress_path[x] = /ping",
     "access.suppress_path[x]: keys are not allowed here (write access.suppress_path[] = value)"),
    ("access.suppress_path[] =", "access.suppress_path[]: empty value"),
    ("access.suppress_path = /ping",
     "unknown entry 'access.suppress_path' (write access.suppress_path[] = value)"),
])
def test_bad_suppress_path(line, error):
    assert one_error(POOL + line + "\n") == f"[/etc/pyfpm/pyfpm.conf:5] [pool www] {error}"


def test_suppress_path_in_toml_is_a_list():
    text = '[pools.www]\nlisten = "9000"\n"pm" = "static"\n"pm.max_children" = 1\n'
    pool, = load_toml(text + '"access.suppress_path" = ["/ping", "/health"]\n').pools
    assert pool.access_suppress_path == ("/ping", "/health")
    assert one_error(text + '"access.suppress_path" = ["/ping", "health"]\n', "toml",
                     "/p.toml") == ("[/p.toml:5] [pool www] access.suppress_path: invalid value "
                                    "'health' (expected a URL path starting with '/')")


@pytest.mark.parametrize("section", ["global", "www"])
@pytest.mark.parametrize("value, stored", [("-19", -19), ("0", 0), ("20", 20)])
def test_process_priority(section, value, stored):
    conf = load_ini(f"[{section}]\nprocess.priority = {value}\n" + POOL)
    config_of = conf.global_ if section == "global" else conf.pools[0]
    assert config_of.process_priority == stored


@pytest.mark.parametrize("value", ["-20", "21", "high"])
def test_bad_process_priority(value):
    assert one_error(POOL + f"process.priority = {value}\n") == (
        f"[/etc/pyfpm/pyfpm.conf:5] [pool www] process.priority: invalid value '{value}' "
        f"(expected an integer from -19 to 20)")


@pytest.mark.parametrize("value, stored", [("unlimited", -1), ("UNLIMITED", -1), ("0", 0),
                                           ("1048576", 1048576)])
def test_rlimit_core(value, stored):
    conf = load_ini(f"rlimit_core = {value}\n" + POOL + f"rlimit_core = {value}\n")
    assert conf.global_.rlimit_core == conf.pools[0].rlimit_core == stored


@pytest.mark.parametrize("value", ["-1", "infinite", "1M"])
def test_bad_rlimit_core(value):
    assert one_error(f"rlimit_core = {value}\n" + POOL) == (
        f"[/etc/pyfpm/pyfpm.conf:1] [global] rlimit_core: invalid value '{value}' "
        f"(expected an integer from 0 to 9223372036854775807 or 'unlimited')")


@pytest.mark.parametrize("value, stored", [("0", 0), ("16M", 16 << 20), ("256m", 256 << 20),
                                           ("1G", 1 << 30), ("20000K", 20000 << 10),
                                           ("17000000", 17000000)])
def test_max_memory(value, stored):
    assert www(f"pm.max_memory = {value}\n").pm_max_memory == stored


@pytest.mark.parametrize("value", ["512", "15M", "1.5G", "1T", "-1", "lots"])
def test_bad_max_memory(value):
    assert one_error(POOL + f"pm.max_memory = {value}\n") == (
        f"[/etc/pyfpm/pyfpm.conf:5] [pool www] pm.max_memory: invalid value '{value}' (expected "
        f"a size in bytes, with an optional suffix K, M or G (e.g. 256M): 0 (off) or at least 16M, "
        f"at most 9223372036854775807)")


READ_TIMEOUT = ("a time in seconds, with an optional suffix s, m, h or d (e.g. 30s, 5m), at least "
                "1s, at most 2147483s; the longest wait a worker can time, in milliseconds of a "
                "C int")


@pytest.mark.parametrize("directive, value, expected", [
    ("pm.max_spawn_rate", "0", "an integer from 1 to 2147483647"),
    ("pm.max_requests", "-1", "an integer from 0 to 2147483647"),
    ("pm.max_requests_jitter", "-1", "an integer from 0 to 2147483647"),
    ("request_slowlog_trace_depth", "0", "an integer from 1 to 2147483647"),
    ("rlimit_files", "0", "an integer from 1 to 2147483647"),
    ("pm.process_idle_timeout", "0",
     "a time in seconds, with an optional suffix s, m, h or d (e.g. 30s, 5m), at least 1s, "
     "at most 2147483647s"),
    ("request_read_timeout", "0s", READ_TIMEOUT),
    ("request_read_timeout", "soon", READ_TIMEOUT),
    ("request_read_timeout", "25d", READ_TIMEOUT),
    ("request_head_timeout", "0", READ_TIMEOUT),
    ("request_head_timeout", "25d", READ_TIMEOUT),
    ("request_body_min_rate", "fast",
     "a size in bytes, with an optional suffix K, M or G (e.g. 256M): 0 (off) or at least 1, "
     "at most 9223372036854775807"),
    ("request_terminate_timeout", "-5", "a time in seconds, with an optional suffix s, m, h or d "
                                        "(e.g. 30s, 5m), at most 2147483647s"),
    ("access.format", "", "a non-empty string"),
    ("clear_env", "sometimes", "a boolean: yes/no, on/off, true/false or 1/0"),
])
def test_new_pool_value_limits(directive, value, expected):
    assert one_error(POOL + f"{directive} = {value}\n") == (
        f"[/etc/pyfpm/pyfpm.conf:5] [pool www] {directive}: invalid value '{value}' "
        f"(expected {expected})")


@pytest.mark.parametrize("directive, value, expected", [
    ("log_limit", "511", "an integer from 512 to 2147483647"),
    ("process.max", "-1", "an integer from 0 to 4194304; the most processes Linux can run"),
    ("emergency_restart_threshold", "-1", "an integer from 0 to 2147483647"),
    ("emergency_restart_interval", "1.5m", ini.TIME_EXPECTED + ", at most 2147483647s"),
    ("syslog.facility", "local8", "one of auth, authpriv, cron, daemon, ftp, kern, lpr, mail, "
                                  "news, syslog, user, uucp, local0, local1, local2, local3, "
                                  "local4, local5, local6, local7"),
    ("syslog.ident", "", "a non-empty string"),
])
def test_new_global_value_limits(directive, value, expected):
    assert one_error(f"{directive} = {value}\n" + POOL) == (
        f"[/etc/pyfpm/pyfpm.conf:1] [global] {directive}: invalid value '{value}' "
        f"(expected {expected})")


@pytest.mark.parametrize("value, stored", [("auto", "auto"), ("epoll", "epoll"),
                                           ("Poll", "poll")])
def test_events_mechanism(value, stored):
    assert load_ini(f"events.mechanism = {value}\n" + POOL).global_.events_mechanism == stored


@pytest.mark.parametrize("value", ["kqueue", "select", "/dev/poll", "port"])
def test_events_mechanism_not_available(value):
    assert one_error(f"events.mechanism = {value}\n" + POOL) == (
        f"[/etc/pyfpm/pyfpm.conf:1] [global] events.mechanism: invalid value '{value}' "
        f"(expected one of auto, epoll, poll; event mechanism '{value}' is not available "
        f"on this system)")


@pytest.mark.parametrize("value, stored", [(".py", (".py",)), (".py  .wsgi\t.cgi", (".py", ".wsgi", ".cgi")),
                                           ("", ())])
def test_limit_extensions_are_words(value, stored):
    assert www(f"security.limit_extensions = {value}\n").security_limit_extensions == stored


# --- pending directives ----------------------------------------------------------------------

@pytest.fixture
def pending(monkeypatch):
    """pm.max_requests and ping.path marked pending, as a directive awaiting its issue is."""
    marked = {"pm.max_requests": "issue 9", "ping.path": "issue 9"}
    table = tuple(dataclasses.replace(d, pending=marked[d.name]) if d.name in marked else d
                  for d in config.DIRECTIVES)
    monkeypatch.setattr(config, "DIRECTIVES", table)
    monkeypatch.setattr(config, "_TABLE", {(d.section, d.name): d for d in table})


def test_pending_directives_warn_once_per_section_that_sets_them(pending):
    conf = load_ini("""
        [www]
        listen = 9000
        pm = static
        pm.max_children = 1
        pm.max_requests = 10
        ping.path = /ping
        [api]
        listen = 9001
        pm = static
        pm.max_children = 1
        pm.max_requests = 10
        pm.max_spawn_rate = 4
    """)
    assert conf.messages == (
        ("warning", "[pool www] pm.max_requests is not implemented yet (issue 9); ignored"),
        ("warning", "[pool www] ping.path is not implemented yet (issue 9); ignored"),
        ("warning", "[pool api] pm.max_requests is not implemented yet (issue 9); ignored"),
    )


def test_pending_directive_left_at_its_default_gives_no_warning(pending):
    assert load_ini(POOL).messages == ()


def test_no_directive_is_pending():
    """Issue 5 implemented the last ones (listen.acl_*, listen.allowed_clients,
    security.limit_extensions)."""
    assert {d.name: d.pending for d in config.DIRECTIVES if d.pending} == {}


# --- prefix, chroot, chdir, virtualenv -------------------------------------------------------

def test_pool_prefix_anchors_the_pools_relative_paths(tmp_path):
    (tmp_path / "site/app").mkdir(parents=True)
    (tmp_path / "site/run").mkdir()
    (tmp_path / "run").mkdir()
    make_venv(tmp_path / "site/venv")
    conf = load_ini("""
        [www]
        prefix = site
        listen = run/$pool.sock
        pm = static
        pm.max_children = 1
        chdir = app
        virtualenv = venv
        access.log = log/access.log
        slowlog = /abs/slow.log
        pm.status_listen = run/status.sock
        [other]
        listen = run/other.sock
        pm = static
        pm.max_children = 1
    """, path=str(tmp_path / "pyfpm.conf"))
    www_pool, other = conf.pools
    site = tmp_path / "site"
    assert (www_pool.prefix, www_pool.listen, www_pool.chdir, www_pool.virtualenv) == \
        (str(site), (str(site / "run/www.sock"),), str(site / "app"), str(site / "venv"))
    assert (www_pool.access_log, www_pool.slowlog, www_pool.pm_status_listen) == \
        (str(site / "log/access.log"), "/abs/slow.log", str(site / "run/status.sock"))
    assert other.listen == (str(tmp_path / "run/other.sock"),)  # no prefix: the config's directory


def test_prefix_must_exist(tmp_path):
    assert one_error(POOL + "prefix = nowhere\n", path=str(tmp_path / "p.conf")) == (
        f"[{tmp_path}/p.conf:5] [pool www] prefix: invalid value 'nowhere' "
        f"(expected an existing directory; '{tmp_path}/nowhere' is not one)")


def test_chroot_must_be_absolute_and_exist(tmp_path):
    assert one_error(POOL + "chroot = jail\n") == (
        "[/etc/pyfpm/pyfpm.conf:5] [pool www] chroot: invalid value 'jail' "
        "(expected an absolute path, or one starting with $prefix)")
    assert one_error(POOL + f"chroot = {tmp_path}/jail\n") == (
        f"[/etc/pyfpm/pyfpm.conf:5] [pool www] chroot: invalid value '{tmp_path}/jail' "
        f"(expected an existing directory; '{tmp_path}/jail' is not one)")


def test_chroot_with_prefix_and_default_chdir(tmp_path):
    (tmp_path / "jail").mkdir()
    pool = www(f"prefix = {tmp_path}\nchroot = $prefix/jail\n")
    assert (pool.chroot, pool.chdir) == (f"{tmp_path}/jail", "/")


def test_chdir_and_virtualenv_are_inside_the_chroot(tmp_path):
    (tmp_path / "srv/app").mkdir(parents=True)
    make_venv(tmp_path / "srv/venv")
    pool = www(f"chroot = {tmp_path}\nchdir = /srv/app\nvirtualenv = /srv/venv\n")
    assert (pool.chroot, pool.chdir, pool.virtualenv) == (str(tmp_path), "/srv/app", "/srv/venv")


def test_chdir_inside_chroot_must_exist_there(tmp_path):
    (tmp_path / "jail").mkdir()
    errors = errors_of(POOL + f"chroot = {tmp_path}/jail\nchdir = {tmp_path}\nvirtualenv = venv\n")
    assert errors == [
        f"[/etc/pyfpm/pyfpm.conf:6] [pool www] chdir: invalid value '{tmp_path}' (expected an "
        f"existing directory; '{tmp_path}/jail{tmp_path}' is not one)",
        f"[/etc/pyfpm/pyfpm.conf:7] [pool www] virtualenv: invalid value 'venv' (expected an "
        f"absolute path inside chroot '{tmp_path}/jail')",
    ]


def test_virtualenv_needs_site_packages_for_this_python(tmp_path):
    (tmp_path / "venv/lib/python2.7/site-packages").mkdir(parents=True)
    (tmp_path / "venv/pyvenv.cfg").write_text("home = /usr/bin\n")
    py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert one_error(POOL + f"virtualenv = {tmp_path}/venv\n") == (
        f"[/etc/pyfpm/pyfpm.conf:5] [pool www] virtualenv: invalid value '{tmp_path}/venv' "
        f"(expected a virtualenv for Python {py}; '{tmp_path}/venv/lib/python{py}/site-packages' "
        f"is not a directory)")
    site = make_venv(tmp_path / "venv")
    assert www(f"virtualenv = {tmp_path}/venv\n").virtualenv == f"{tmp_path}/venv"
    assert config.venv_site_packages(f"{tmp_path}/venv") == str(site)


def test_all_errors_are_reported_together():
    errors = errors_of("""
        daemonize = perhaps
        [www]
        listen = 127.0.0.1:0
        pm = static
        pm.max_children = many
        mount = app
    """)
    assert [e.split("] ", 1)[0] for e in errors] == [
        "[/etc/pyfpm/pyfpm.conf:1", "[/etc/pyfpm/pyfpm.conf:3", "[/etc/pyfpm/pyfpm.conf:5",
        "[/etc/pyfpm/pyfpm.conf:6"]


def test_missing_file():
    with pytest.raises(ConfigError) as info:
        config.load("/nonexistent/pyfpm.conf")
    assert str(info.value) == ("failed to load configuration file '/nonexistent/pyfpm.conf': "
                               "No such file or directory")


# --- TOML ------------------------------------------------------------------------------------

FULL_INI = """
[global]
pid = run/pyfpm.pid
log_level = debug
daemonize = no
process_control_timeout = 10s
syslog.facility = LOCAL3
log_limit = 4096
emergency_restart_threshold = 5
emergency_restart_interval = 1m
process.max = 64
process.priority = -5
rlimit_files = 4096
rlimit_core = unlimited
events.mechanism = poll
systemd_interval = 0

[www]
user = www-data
listen = /run/$pool.sock
listen.backlog = 64
listen.owner = nginx
listen.mode = 0600
listen.acl_users = nginx,www-data
process.dumpable = yes
pm = dynamic
pm.max_children = 10
pm.min_spare_servers = 2
pm.max_spare_servers = 6
pm.max_spawn_rate = 4
pm.process_idle_timeout = 30s
pm.max_requests = 1000
pm.max_requests_jitter = 100
pm.max_memory = 256M
pm.status_path = /status
ping.path = /ping
ping.response = alive
access.log = log/$pool.access.log
access.format = "%R %m %r %s"
access.suppress_path[] = /ping
access.suppress_path[] = /status
slowlog = log/$pool.slow.log
request_slowlog_timeout = 5s
request_terminate_timeout = 2m
request_terminate_timeout_track_finished = yes
request_read_timeout = 15
request_head_timeout = 3
request_body_min_rate = 4K
rlimit_core = 0
catch_workers_output = yes
clear_env = no
security.limit_extensions = .py .wsgi
app = site.wsgi:application
python_path = /srv/site:/srv/lib
preload = yes
mount = /site/
fastcgi.params_max = 32768
env[TZ] = UTC

[api]
listen = 127.0.0.1:9001
pm = static
pm.max_children = 2
app = api:app
"""

FULL_TOML = """
[global]
pid = "run/pyfpm.pid"
log_level = "debug"
daemonize = false
process_control_timeout = 10
syslog = { facility = "local3" }
log_limit = 4096
emergency_restart_threshold = 5
emergency_restart_interval = "1m"
process = { max = 64, priority = -5 }
rlimit_files = 4096
rlimit_core = "unlimited"
"events.mechanism" = "poll"
systemd_interval = 0

[pools.www]
user = "www-data"
listen = "/run/$pool.sock"
"listen.backlog" = 64
"listen.owner" = "nginx"
"listen.mode" = 0o600
"listen.acl_users" = "nginx,www-data"
process.dumpable = true
pm = "dynamic"
"pm.max_children" = 10
"pm.min_spare_servers" = 2
"pm.max_spare_servers" = 6
"pm.max_spawn_rate" = 4
"pm.process_idle_timeout" = 30
"pm.max_requests" = 1000
"pm.max_requests_jitter" = 100
"pm.max_memory" = 268435456
"pm.status_path" = "/status"
ping = { path = "/ping", response = "alive" }
access.log = "log/$pool.access.log"
access.format = "%R %m %r %s"
access.suppress_path = ["/ping", "/status"]
slowlog = "log/$pool.slow.log"
request_slowlog_timeout = "5s"
request_terminate_timeout = 120
request_terminate_timeout_track_finished = true
request_read_timeout = "15s"
request_head_timeout = "3s"
request_body_min_rate = "4K"
rlimit_core = 0
catch_workers_output = true
clear_env = false
"security.limit_extensions" = [".py", ".wsgi"]
app = "site.wsgi:application"
python_path = ["/srv/site", "/srv/lib"]
preload = true
mount = "/site/"
fastcgi = { params_max = 32768 }
env = { TZ = "UTC" }

[pools.api]
listen = "127.0.0.1:9001"
pm = "static"
pm.max_children = 2   # the dotted key makes a table: not with `pm = ...` in the same table
app = "api:app"
"""


def test_toml_and_ini_give_equal_configs():
    with pytest.raises(ConfigError):  # pm = "static" and pm.max_children clash in TOML itself
        load_toml(FULL_TOML)
    toml = load_toml(FULL_TOML.replace('pm = "static"\npm.max_children = 2',
                                       '"pm" = "static"\n"pm.max_children" = 2'))
    conf = load_ini(FULL_INI)
    assert (toml.global_, toml.pools) == (conf.global_, conf.pools)
    assert conf.pools[0].listen == ("/run/www.sock",)
    assert toml.messages == conf.messages
    # every directive of the fixture differs from its default, so a dropped one shows
    for section, values, fixture in (("global", conf.global_, FULL_INI.split("[www]")[0]),
                                     ("pool", conf.pools[0], FULL_INI.split("[www]")[1])):
        for d in config.DIRECTIVES:
            if d.section == section and f"\n{d.name}" in fixture:
                assert getattr(values, d.field) != d.default, d.name


def test_toml_nested_tables_are_dotted_names():
    conf = load_toml("""
        [pools.www]
        listen = "9000"
        pm = "static"
        "pm.max_children" = 4
        [pools.www.fastcgi]
        params_max = 4096
    """)
    assert conf.pools[0].fastcgi_params_max == 4096


def test_toml_values_of_other_types():
    (pool,) = load_toml("""
        [pools.www]
        listen = 9000
        pm = "static"
        "pm.max_children" = "3"
        "listen.mode" = "0640"
        python_path = "/a,/b"
    """).pools
    assert (pool.listen, pool.pm_max_children, pool.listen_mode, pool.python_path) == \
        (("9000",), 3, 0o640, ("/a", "/b"))


def test_toml_errors_name_file_line_pool_directive_value():
    errors = errors_of("""
        [global]
        daemonize = "maybe"

        [pools.www]
        listen = "127.0.0.1:9000"
        pm = "static"
        "pm.max_children" = true
        mount = "app"
        bogus = 1
        [pools.www.inner]
        x = 1
    """, "toml", "/etc/pyfpm/pyfpm.toml")
    assert errors == [
        "[/etc/pyfpm/pyfpm.toml:2] [global] daemonize: invalid value 'maybe' "
        "(expected a boolean: yes/no, on/off, true/false or 1/0)",
        "[/etc/pyfpm/pyfpm.toml:7] [pool www] pm.max_children: invalid value 'true' "
        "(expected an integer from 1 to 65536; the most workers a pool's scoreboard is made for)",
        "[/etc/pyfpm/pyfpm.toml:8] [pool www] mount: invalid value 'app' "
        "(expected '' or a URL path starting with '/', e.g. /app)",
        "[/etc/pyfpm/pyfpm.toml:9] [pool www] unknown entry 'bogus'",
        "[/etc/pyfpm/pyfpm.toml:11] [pool www] unknown entry 'inner.x'",
    ]


def test_toml_missing_listen_names_the_pool_table():
    assert one_error('[global]\n\n[pools.www]\npm = "static"\n"pm.max_children" = 1\n',
                     "toml", "/p.toml") == "[/p.toml:3] [pool www] no listen address have been defined!"


def test_toml_syntax_and_shape_errors():
    assert one_error("[pools.www\n", "toml", "/p.toml").startswith("[/p.toml] invalid TOML: ")
    assert one_error('listen = 1\n[pools.www]\nlisten = "1"\npm = "static"\n'
                     '"pm.max_children" = 1\n', "toml", "/p.toml") == \
        "[/p.toml:1] unknown table or key 'listen' (expected [global] and [pools.NAME] tables)"


def test_toml_env_and_pool_expansion(monkeypatch):
    monkeypatch.setenv("FPM_APP", "site")
    (pool,) = load_toml("""
        [pools.api]
        listen = "/run/$pool.sock"
        pm = "static"
        "pm.max_children" = 1
        app = "${FPM_APP}.wsgi:app"
    """).pools
    assert (pool.listen, pool.app) == (("/run/api.sock",), "site.wsgi:app")
    assert "'$pool' can only be used in a pool section" in one_error(
        '[global]\npid = "$pool"\n[pools.www]\nlisten = "1"\npm = "static"\n'
        '"pm.max_children" = 1\n', "toml")


def test_toml_include(tmp_path):
    main = write(tmp_path / "pyfpm.toml", '[global]\ninclude = ["pools/*.toml", "ini/*.conf"]\n')
    write(tmp_path / "pools/www.toml", '[pools.www]\nlisten = "9000"\npm = "static"\n'
                                       '"pm.max_children" = 1\n')
    write(tmp_path / "ini/api.conf", "[api]\nlisten = 9001\npm = static\npm.max_children = 1\n")
    conf = config.load(main)
    assert [p.name for p in conf.pools] == ["www", "api"]


def test_load_picks_the_format_by_extension(tmp_path):
    toml = write(tmp_path / "x.TOML", '[pools.www]\nlisten = "9000"\npm = "static"\n'
                                      '"pm.max_children" = 1\n')
    assert config.load(toml).pools[0].listen == ("9000",)
    conf = write(tmp_path / "x.cfg", "[www]\nlisten = 9000\npm = static\npm.max_children = 1\n")
    assert config.load(conf).pools[0].listen == ("9000",)


# --- dump (-tt) ------------------------------------------------------------------------------

def test_dump_shape():
    """Every directive, in table order: times in s, None as undefined, booleans yes/no."""
    text = config.dump(load_ini(POOL + "env[TZ] = UTC\naccess.suppress_path[] = /ping\n"
                                "pm.max_memory = 256M\nrlimit_core = unlimited\n"))
    assert text == ini_text("""
        [global]
        \tpid = undefined
        \terror_log = stderr
        \tsyslog.ident = pyfpm
        \tsyslog.facility = daemon
        \tlog_level = notice
        \tlog_limit = 1024
        \tlog_buffering = yes
        \temergency_restart_threshold = 0
        \temergency_restart_interval = 0s
        \tprocess_control_timeout = 0s
        \tprocess.max = 0
        \tprocess.priority = undefined
        \tdaemonize = yes
        \trlimit_files = undefined
        \trlimit_core = undefined
        \tevents.mechanism = auto
        \tsystemd_interval = 10s

        [www]
        \tprefix = undefined
        \tuser = undefined
        \tgroup = undefined
        \tlisten = 127.0.0.1:9000
        \tlisten.backlog = -1
        \tlisten.owner = undefined
        \tlisten.group = undefined
        \tlisten.mode = 0660
        \tlisten.allowed_clients = undefined
        \tlisten.acl_users = undefined
        \tlisten.acl_groups = undefined
        \tprocess.priority = undefined
        \tprocess.dumpable = no
        \tpm = static
        \tpm.max_children = 3
        \tpm.start_servers = 0
        \tpm.min_spare_servers = 0
        \tpm.max_spare_servers = 0
        \tpm.max_spawn_rate = 32
        \tpm.process_idle_timeout = 10s
        \tpm.max_requests = 0
        \tpm.max_requests_jitter = 0
        \tpm.max_memory = 256M
        \tpm.status_path = undefined
        \tpm.status_listen = undefined
        \tping.path = undefined
        \tping.response = pong
        \taccess.log = undefined
        \taccess.format = %R - %u %t "%m %r" %s
        \taccess.suppress_path[] = /ping
        \taccess.json = no
        \tslowlog = undefined
        \trequest_slowlog_timeout = 0s
        \trequest_slowlog_trace_depth = 20
        \trequest_terminate_timeout = 0s
        \trequest_terminate_timeout_track_finished = no
        \trequest_read_timeout = 60s
        \trequest_head_timeout = 10s
        \trequest_body_min_rate = 1K
        \trlimit_files = undefined
        \trlimit_core = unlimited
        \tchroot = undefined
        \tchdir = undefined
        \tcatch_workers_output = no
        \tdecorate_workers_output = yes
        \twsgi_errors = both
        \tclear_env = yes
        \tsecurity.limit_extensions = .py
        \tscript.validate_timestamps = yes
        \tscript.revalidate_freq = 2s
        \trequest_body_buffer_size = 1M
        \trequest_body_max_size = 0
        \trequest_body_temp_path = undefined
        \tsecurity.request_body_file_dirs = /var/lib/nginx/body
        \trequest_queue_timeout = 0ms
        \trequest_start_param = undefined
        \tapp = undefined
        \tpython_path = 
        \tvirtualenv = undefined
        \tpreload = no
        \tmount = 
        \tfastcgi.params_max = 1048576
        \tenv[TZ] = UTC
    """)


def test_dump_shows_empty_arrays_as_undefined():
    lines = config.dump(load_ini(POOL)).splitlines()
    assert "\tenv = undefined" in lines and "\taccess.suppress_path = undefined" in lines


def test_dump_reads_back_as_the_same_config():
    conf = load_ini(FULL_INI)
    dumped = "\n".join(line for line in config.dump(conf).splitlines()
                       if not line.endswith(" = undefined"))  # unset: the default again
    assert load_ini(dumped).pools == conf.pools


# --- the table -------------------------------------------------------------------------------

def test_table_drives_the_dataclass_defaults():
    for d in config.DIRECTIVES:
        if not d.stored:
            continue
        cls = GlobalConfig if d.section == "global" else PoolConfig
        if d.name != "listen":  # mandatory, so the dataclass has no default for it
            assert cls.__dataclass_fields__[d.field].default == d.default, d.name
        assert d.doc


def test_table_and_dataclasses_name_the_same_fields():
    for section, cls in (("global", GlobalConfig), ("pool", PoolConfig)):
        table = {d.field for d in config.DIRECTIVES if d.section == section and d.stored}
        assert table == set(cls.__dataclass_fields__) - {"name"}, cls


def test_names_map_to_fields():
    assert {d.name: d.field for d in config.DIRECTIVES}["fastcgi.params_max"] == \
        "fastcgi_params_max"


PROCESS_MAX = """
[global]
process.max = {max}
[pool1]
listen = 127.0.0.1:9001
pm = dynamic
pm.max_children = 5
pm.start_servers = 2
pm.min_spare_servers = 1
pm.max_spare_servers = 3
[pool2]
listen = 127.0.0.1:9002
pm = static
pm.max_children = 3
[pool3]
listen = 127.0.0.1:9003
pm = ondemand
pm.max_children = 9
"""


def test_process_max_below_the_workers_the_pools_start_is_refused():
    """php-src's config-test-process-max-invalid, with each pool's share named."""
    assert one_error(PROCESS_MAX.format(max=4)) == (
        "[/etc/pyfpm/pyfpm.conf:2] [global] process.max (4) must not be less than the number "
        "of workers the pools start (5: [pool pool1] pm.start_servers = 2, [pool pool2] "
        "pm.max_children = 3)")


@pytest.mark.parametrize("value", [5, 6, 0])
def test_process_max_equal_to_the_workers_started_or_off_is_accepted(value):
    """config-test-process-max-valid: ondemand pools start none; 0 is no limit."""
    assert load_ini(PROCESS_MAX.format(max=value)).global_.process_max == value


def test_process_max_counts_start_servers_a_dynamic_pool_filled_in():
    text = POOL + "[dyn]\nlisten = 9001\npm = dynamic\npm.max_children = 10\n" \
                  "pm.min_spare_servers = 2\npm.max_spare_servers = 6\n"
    assert "(7: [pool www] pm.max_children = 3, [pool dyn] pm.start_servers = 4)" in \
        one_error("process.max = 6\n" + text)
    assert load_ini("process.max = 7\n" + text).global_.process_max == 7


def test_ondemand_needs_edge_triggered_events():
    text = "[global]\nevents.mechanism = poll\n[www]\nlisten = 9000\npm = ondemand\npm.max_children = 2\n"
    with pytest.raises(config.ConfigError) as e:
        config.loads(text, "/etc/pyfpm.conf")
    assert e.value.errors == ["[/etc/pyfpm.conf:5] [pool www] the ondemand process manager can "
                              "only be used with events.mechanism = epoll (or auto), not poll"]
    assert config.loads(text.replace("ondemand", "dynamic\npm.min_spare_servers = 1\n"
                                     "pm.max_spare_servers = 1"), "/etc/pyfpm.conf")



# --- request bodies and the queue timeout ------------------------------------------------------

POOL_HEAD = "[www]\npm = static\npm.max_children = 1\n"

@pytest.mark.parametrize("text, seconds", [("250ms", 0.25), ("1.5s", 1.5), ("2", 2.0),
                                           ("1m", 60.0), ("0", 0.0)])
def test_request_queue_timeout_takes_fractions_and_milliseconds(text, seconds):
    conf = config.loads(POOL_HEAD + "listen = 127.0.0.1:9000\nrequest_queue_timeout = %s\n" % text)
    assert conf.pools[0].request_queue_timeout == seconds


def test_request_queue_timeout_refuses_other_words():
    assert errors_of(POOL_HEAD + "listen = 127.0.0.1:9000\nrequest_queue_timeout = soon\n") == [
        "[/etc/pyfpm/pyfpm.conf:5] [pool www] request_queue_timeout: invalid value 'soon' "
        "(expected a duration, e.g. 250ms, 1.5s or 2 (seconds), at most 2147483647s)"]


def test_request_queue_timeout_on_a_unix_socket_needs_the_start_param():
    """Linux keeps no arrival time for unix-socket connections: without the web server's
    stamp the setting could never fire, so it is refused, saying what to add."""
    assert errors_of(POOL_HEAD + "listen = /run/www.sock\nrequest_queue_timeout = 500ms\n") == [
        "[/etc/pyfpm/pyfpm.conf:5] [pool www] request_queue_timeout (500ms) cannot time "
        "requests on the unix socket '/run/www.sock': Linux records no arrival time for its "
        "connections; set request_start_param = REQUEST_START and have nginx send it "
        "(fastcgi_param REQUEST_START $msec;)"]
    conf = config.loads(POOL_HEAD + "listen = /run/www.sock\nrequest_queue_timeout = 500ms\n"
                        "request_start_param = REQUEST_START\n")
    assert conf.pools[0].request_start_param == "REQUEST_START"


def test_request_body_sizes():
    conf = config.loads(POOL_HEAD + "listen = 127.0.0.1:9000\nrequest_body_buffer_size = 0\n"
                        "request_body_max_size = 100M\n")
    pool = conf.pools[0]
    assert (pool.request_body_buffer_size, pool.request_body_max_size) == (0, 100 << 20)
    assert (config.PoolConfig.request_body_buffer_size,
            config.PoolConfig.request_body_max_size) == (1 << 20, 0)


# --- what the code behind each directive can hold (issue 14, item 6) -----------------------

NUMERIC = [d for d in config.DIRECTIVES
           if isinstance(d.kind, (config.Int, config.Time, config.Size, config.Duration))]
# What each number goes into: a worker's C types, a process count, PHP-FPM's C int.
LIMITS = {"pm.max_children": 1 << 16, "pm.start_servers": 1 << 16,
          "pm.min_spare_servers": 1 << 16, "pm.max_spare_servers": 1 << 16,
          "process.max": 1 << 22, "request_read_timeout": 2147483,
          "request_head_timeout": 2147483, "request_body_min_rate": 2 ** 63 - 1,
          "pm.max_memory": 2 ** 63 - 1, "request_body_buffer_size": 2 ** 63 - 1,
          "request_body_max_size": 2 ** 63 - 1, "rlimit_core": 2 ** 63 - 1,
          "process.priority": 20}


@pytest.mark.parametrize("d", NUMERIC, ids=lambda d: f"{d.section}:{d.name}")
def test_every_number_has_a_range_its_code_can_hold(d):
    """pm.max_requests = 10^33 passed -t and raised OverflowError in every worker."""
    limit = LIMITS.get(d.name, 2 ** 31 - 1)
    assert d.kind.parse(str(limit)) == limit
    for value in (str(limit + 1), "1" + "0" * 33, "9" * 5000):
        with pytest.raises(ValueError) as info:
            d.kind.parse(value)
        assert str(info.value) == d.kind.expected  # the kind's words, not int()'s
        assert str(limit) in d.kind.expected
    with pytest.raises(ValueError):
        d.kind.parse(limit + 1)  # TOML's integers


@pytest.mark.parametrize("text, expected", [
    ("pm.max_requests = 1000000000000000000000000000000000",
     "pm.max_requests: invalid value '1000000000000000000000000000000000' (expected an integer "
     "from 0 to 2147483647)"),
    ("pm.max_requests = " + "9" * 5000,
     "pm.max_requests: invalid value '" + "9" * 100 + "... (5000 characters)' (expected an "
     "integer from 0 to 2147483647)"),
    ("pm.max_requests = \u0661\u0662", "pm.max_requests: invalid value '\u0661\u0662' (expected "
                                       "an integer from 0 to 2147483647)"),
    ("request_read_timeout = 30d", "request_read_timeout: invalid value '30d' (expected a time "
     "in seconds, with an optional suffix s, m, h or d (e.g. 30s, 5m), at least 1s, at most "
     "2147483s; the longest wait a worker can time, in milliseconds of a C int)"),
    ("user = \u00b2", "user: invalid value '\u00b2' (expected a user or group name, or a numeric "
                      "id from 0 to 4294967294)"),
    ("listen.owner = 4294967295", "listen.owner: invalid value '4294967295' (expected a user or "
                                  "group name, or a numeric id from 0 to 4294967294)"),
    ("listen.acl_users = www-data, 99999999999",
     "listen.acl_users: invalid value 'www-data, 99999999999' (expected user or group names or "
     "ids separated by commas; a numeric id from 0 to 4294967294)"),
])
def test_numbers_beyond_their_range_name_value_and_limit(text, expected):
    assert one_error(POOL + text + "\n") == "[/etc/pyfpm/pyfpm.conf:5] [pool www] " + expected


def test_toml_infinities_and_huge_integers_are_out_of_range():
    errors = errors_of('[pools.www]\nlisten = "127.0.0.1:9000"\npm = "static"\n'
                       '"pm.max_children" = 3\nrequest_queue_timeout = inf\n'
                       '"pm.max_requests" = 10000000000000000000000\n', "toml",
                       "/etc/pyfpm/pyfpm.toml")
    assert errors == [
        "[/etc/pyfpm/pyfpm.toml:5] [pool www] request_queue_timeout: invalid value 'inf' "
        "(expected a duration, e.g. 250ms, 1.5s or 2 (seconds), at most 2147483647s)",
        "[/etc/pyfpm/pyfpm.toml:6] [pool www] pm.max_requests: invalid value "
        "'10000000000000000000000' (expected an integer from 0 to 2147483647)"]


STRINGS = [d for d in config.DIRECTIVES if d.stored and not d.array and not isinstance(
    d.kind, (config.Int, config.Time, config.Size, config.Duration, config.Bool, config.Octal))]
NUL = "(expected no NUL byte: it would cut a path, an environment value or a C string short)"


@pytest.mark.parametrize("d", STRINGS, ids=lambda d: f"{d.section}:{d.name}")
def test_no_string_may_hold_a_nul(d):
    """access.log = a<NUL>b passed -t; a reload then ended the master."""
    line = f"{d.name} = /a\0b\n"
    text, where = (line + POOL, "1] [global]") if d.section == "global" else \
        (POOL + line, "5] [pool www]")
    assert (f"[/etc/pyfpm/pyfpm.conf:{where} {d.name}: invalid value '/a\\x00b' {NUL}"
            in errors_of(text))


def test_no_nul_in_lists_env_values_and_names_nor_in_pool_names():
    errors = errors_of(POOL + "env[X] = a\0b\nenv[Y\0Z] = 1\nlisten[] = /run/a\0.sock\n"
                       "access.suppress_path[] = /p\0ng\n[w\0w]\nlisten = 9001\npm = static\n")
    assert errors[:4] == [
        f"[/etc/pyfpm/pyfpm.conf:5] [pool www] env: invalid value 'a\\x00b' {NUL}",
        "[/etc/pyfpm/pyfpm.conf:6] [pool www] env[Y\\x00Z]: invalid name (expected no '=' and "
        "no NUL byte: it would cut a path, an environment value or a C string short)",
        f"[/etc/pyfpm/pyfpm.conf:7] [pool www] listen: invalid value '/run/a\\x00.sock' {NUL}",
        f"[/etc/pyfpm/pyfpm.conf:8] [pool www] access.suppress_path: invalid value '/p\\x00ng' "
        f"{NUL}"]
    assert "[/etc/pyfpm/pyfpm.conf:9] invalid pool name 'w\\x00w' (expected printable " \
           "characters; no NUL byte: it would cut a path, an environment value or a C string " \
           "short)" in errors


def test_toml_env_names_and_pool_names_the_workers_could_not_take():
    errors = errors_of('[pools."a\\nb"]\nlisten = "127.0.0.1:9000"\npm = "static"\n'
                       '"pm.max_children" = 1\nenv = {"A=B" = "x"}\n', "toml",
                       "/etc/pyfpm/pyfpm.toml")
    assert errors == [
        "[/etc/pyfpm/pyfpm.toml] invalid pool name 'a\\nb' (expected printable characters; "
        "no NUL byte: it would cut a path, an environment value or a C string short)",
        "[/etc/pyfpm/pyfpm.toml] [pool a\\nb] env[A=B]: invalid name (expected no '=' and no "
        "NUL byte: it would cut a path, an environment value or a C string short)"]
