"""Config fuzzing: mutated configurations never get a traceback out of ``pyfpm -t``, and one
that ``-t`` passes starts, answers a request and stops.

The bases are the shipped files (conf/pyfpm.conf with pool.d/www.conf, conf/pyfpm.toml,
the embedded fpm/default.conf) and the tests' own pool config, put in a temp dir with
free ports; the mutations are byte flips, deleted and duplicated lines, directives set to
nasty values (NUL, huge and negative numbers, unicode, missing paths, empty) and unknown
keys. Each example runs the real ``pyfpm -t``: exit 0, or 78 with an ERROR line, never a
traceback. For the first START_LIMIT configurations -t passes (a small pool each), the
master is started: it must listen, answer one FastCGI request and stop on QUIT.
PYFPM_CONFIG_FUZZ_EXAMPLES sets the number of random examples: 25 by default, in the suite
(each base as it is and each finding run as well); the test command's fuzz step runs 200
(scripts/test, about a minute). PYFPM_CONFIG_FUZZ_VERBOSE=1 prints each one's verdict
(with -s).
"""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import harness
from fpm import client
from fpm import config as fpm_config
from tests.conftest import free_port, pyfpm_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("PYFPM_CONFIG_FUZZ_EXAMPLES", "25"))
START_LIMIT = 25  # starts per run: each takes about a second
MAX_WORKERS = 8  # a configuration that -t passes with more is not started

NASTY = ["", "\0", "a\0b", "0", "-1", "-0", "1" + "0" * 25, "9" * 400, "1e400", "0x10", "nan",
         "2147483648", "18446744073709551616", "ünïcødé", "\u202e\u200b", "\udcff", "/nonexistent/dir/x",
         "../../../../etc/passwd", "/", "yes", "no", " ", "${PYFPM_FUZZ_UNSET}", "$pool", "%",
         "[x]", "=", ";", '"', "'", "\\", "a b", "1s", "-1s", "999999999d", "1k", "1G", "0666",
         "0999", "@", "unix:", "[::1]:0", "127.0.0.1:99999", "*:*"]
UNKNOWN = ["pm.max_childern", "foo", "php_value[x]", "env[]", "listen.", "[", "app[]",
           "python_value[x]", "slowlog.", "x" * 300]
BASES = ["shipped-ini", "shipped-toml", "embedded", "tests", "dynamic"]
NAMES = sorted({d.name for d in fpm_config.DIRECTIVES})


def _bases(tmp: Path):
    """(file name, text, extra files) for each base configuration, rendered into ``tmp``."""
    def port(text):
        return text.replace("127.0.0.1:9000", "127.0.0.1:%d" % free_port())
    pool_d = (ROOT / "conf" / "pool.d" / "www.conf").read_text()
    return {
        "shipped-ini": ("pyfpm.conf", (ROOT / "conf" / "pyfpm.conf").read_text(),
                        {"pool.d/www.conf": port(pool_d)}),
        "shipped-toml": ("pyfpm.toml", port((ROOT / "conf" / "pyfpm.toml").read_text()), {}),
        "embedded": ("pyfpm.conf", port((ROOT / "fpm" / "default.conf").read_text()), {}),
        "tests": ("pyfpm.conf", pyfpm_config(tmp, listen="tcp", extra="\n".join([
            "slowlog = %s/slow.log" % tmp, "request_slowlog_timeout = 5s",
            "access.log = %s/access.log" % tmp, "pm.status_path = /status",
            "ping.path = /ping", "request_terminate_timeout = 30s",
            "env[FUZZ] = 1", "listen.allowed_clients = 127.0.0.1"])), {}),
        "dynamic": ("pyfpm.conf", pyfpm_config(
            tmp, global_="error_log = %s/error.log" % tmp, pool="dyn", pm="dynamic", workers=3,
            mode="", extra="pm.start_servers = 1\npm.min_spare_servers = 1\n"
                           "pm.max_spare_servers = 2\npm.max_requests = 100"), {}),
    }


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 10)),
    st.tuples(st.just("duplicate"), st.integers(0, 1 << 10)),
    st.tuples(st.just("set"), st.integers(0, 1 << 10), st.sampled_from(NAMES), st.sampled_from(NASTY)),
    st.tuples(st.just("unknown"), st.integers(0, 1 << 10), st.sampled_from(UNKNOWN), st.sampled_from(NASTY)),
)


def _toml_string(value):
    return '"%s"' % "".join(c if c.isprintable() and c not in '"\\' else "\\u%04x" % ord(c)
                            if ord(c) < 0x10000 and not 0xD800 <= ord(c) < 0xE000 else "?"
                            for c in value)


def mutate(data: bytes, ops, toml: bool) -> bytes:
    for op in ops:
        lines = data.split(b"\n")
        at = op[1] % max(len(lines), 1)
        if op[0] == "flip":
            if data:
                i = op[1] % len(data)
                data = data[:i] + bytes([op[2]]) + data[i + 1:]
            continue
        if op[0] == "delete":
            del lines[at]
        elif op[0] == "duplicate":
            lines.insert(at, lines[at])
        else:
            name, value = op[2], op[3]
            if toml:
                line = '"%s" = %s' % (name, value if re.fullmatch(r"-?\d+|true|false", value)
                                      else _toml_string(value))
            else:
                line = "%s = %s" % (name, value)
            lines.insert(at, line.encode("utf-8", "surrogateescape"))
        data = b"\n".join(lines)
    return data


def _workers(config) -> int:
    return sum(p.pm_max_children for p in config.pools)


def _start_and_serve(path: Path, tmp: Path):
    """Start the master on a configuration -t passed; it must answer and stop on QUIT."""
    config = fpm_config.load(str(path))
    if not config.pools or _workers(config) > MAX_WORKERS:
        return False
    log = tmp / "master.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(harness.COMMAND + ["-F", "-O", "-R", "-y", str(path)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=tmp,
                                env=harness.fpm_env(), start_new_session=True)
    pool = config.pools[0]
    address = pool.listen[0]
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                text = log.read_text(errors="replace")
                if "Address already in use" in text:
                    return False  # another process took the port since it was picked
                pytest.fail("-t passed but the master exited %d:\n%s\n--- config ---\n%s"
                            % (proc.returncode, text, path.read_text(errors="replace")))
            try:
                client.connect(address, timeout=1).close()
                break
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    pytest.fail("-t passed but the master does not listen on %s after 15 s:\n%s"
                                % (address, log.read_text(errors="replace")))
                time.sleep(0.05)
        try:
            client.request(address, "/", timeout=20)
        except client.FastCGIError:
            # Refused by listen.allowed_clients, which a mutation may have narrowed.
            assert pool.listen_allowed_clients, log.read_text(errors="replace")
        proc.send_signal(signal.SIGQUIT)
        try:
            code = proc.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail("the master did not stop 15 s after QUIT:\n%s" % log.read_text(errors="replace"))
        # (A traceback in this log is the app's: a pool user that cannot read this
        # interpreter's library fails to import it, and is answered 503.)
        assert code == 0, (code, log.read_text(errors="replace"))
        return True
    finally:
        harness.kill_group(proc, grace=0.5)


_started = []


@pytest.mark.timeout(0)  # the examples are bounded one by one (subprocess timeouts)
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(base=st.sampled_from(BASES), ops=st.lists(mutation, min_size=1, max_size=4))
@example(base="shipped-ini", ops=[]).via("each base as it is starts")
@example(base="shipped-toml", ops=[]).via("each base as it is starts")
@example(base="embedded", ops=[]).via("each base as it is starts")
@example(base="tests", ops=[]).via("each base as it is starts")
@example(base="dynamic", ops=[]).via("each base as it is starts")
@example(base="dynamic", ops=[("set", 7, "slowlog", "/tmp/a\0b")]).via(
    "found: -t's traceback on a NUL in a log path (issue 14 item 6)")
def test_mutated_configs(tmp_path_factory, base, ops):
    tmp = tmp_path_factory.mktemp("cfg")
    name, text, extra = _bases(tmp)[base]
    for rel, content in extra.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(content)
    path = tmp / name
    path.write_bytes(mutate(text.encode(), ops, name.endswith(".toml")))
    r = subprocess.run(harness.COMMAND + ["-R", "-t", "-y", str(path)], capture_output=True,
                       timeout=60, cwd=tmp, env={**harness.fpm_env(), "PYFPM_FUZZ_SET": "1"},
                       start_new_session=True)
    out = (r.stdout + r.stderr).decode("utf-8", "replace")
    shown = "%s\n--- %s (%s, %r) ---\n%s" % (out, name, base, ops,
                                             path.read_bytes().decode("utf-8", "replace"))
    assert r.returncode in (0, 78), "exit %d\n%s" % (r.returncode, shown)
    assert "Traceback" not in out, shown
    if r.returncode == 78:
        assert re.search(r"^\[[^]]+\] ERROR: ", out, re.M), shown
    elif len(_started) < START_LIMIT and _start_and_serve(path, tmp):
        _started.append((base, ops))
    if os.environ.get("PYFPM_CONFIG_FUZZ_VERBOSE"):
        print("config fuzz: %s %r -> %d, %d started" % (base, ops, r.returncode, len(_started)))
