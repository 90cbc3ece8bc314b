"""`pyfpm status` against a real master: the summary, --json and --watch show what the test
did to the pool; errors name what went wrong."""
import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import termios
import threading
import time

import pytest

from fpm import client
from harness import COMMAND, fpm_env, run_fpm
from tests.conftest import free_port

REQUESTS = 7


@pytest.fixture
def fpm(pyfpm):
    """A pool of two workers with its status page at /status, after REQUESTS requests."""
    def start(listen=None):
        server = pyfpm(listen=listen or "unix", extra="pm.status_path = /status")
        server.wait_idle(2)
        for _ in range(REQUESTS):
            assert server.request("/hello").body == b"hello world"
        return server
    return start


def status(*args, timeout=10):
    return run_fpm("status", *map(str, args), allow_root=False, timeout=timeout)


def slow_request(server, seconds):
    thread = threading.Thread(target=client.request, args=(server.address, "/slow?s=%g" % seconds),
                              kwargs={"timeout": 30})
    thread.start()
    deadline = time.monotonic() + 5
    while json.loads(server.request("/status?json").body)["active processes"] < 2:
        assert time.monotonic() < deadline, "the slow request is not running"
        time.sleep(0.02)
    return thread


def test_summary_shows_the_pool_and_its_workers(fpm):
    server = fpm()
    thread = slow_request(server, 2)
    done = status(server.address)
    thread.join(10)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("pool www (static), up ")
    assert lines[1].startswith("processes  2 active, 0 idle, 2 total (max 2, ")
    accepted = int(re.match(r"requests   (\d+) accepted, 0 slow$", lines[2])[1])
    assert accepted >= REQUESTS + 2
    rows = {int(line.split()[0]): line.split() for line in lines[6:]}
    assert set(rows) == set(server.children())
    running = [r for r in rows.values() if r[-1] == "/slow?s=2"]
    assert len(running) == 1 and running[0][1] == "Running" and running[0][-2] == "GET"


def test_json_is_the_status_page_itself(fpm, tmp_path):
    server = fpm(listen="127.0.0.1:%d" % free_port())  # host:port, as `pyfpm request` takes
    done = status(server.address, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert done.stdout.startswith('{\n  "pool": "www",\n')  # indented for people
    assert data["pool"] == "www" and data["accepted conn"] == REQUESTS + 1
    assert {p["pid"] for p in data["processes"]} == set(server.children())


def watch_in_a_terminal(address, *args, until=None):
    """`pyfpm status --watch` with a 100x40 terminal as its stdout → (exit code, output).
    ``until``: a callable given the output so far and the process, to act on it."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    # SIGINT at its default, as in a terminal: a suite started in the background (`cmd &`)
    # has it ignored, and Python keeps an ignored SIGINT ignored, so Ctrl-C would do nothing.
    proc = subprocess.Popen(COMMAND + ["status", address, "--watch", *args], stdout=slave,
                            stderr=subprocess.PIPE, env=fpm_env(), start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(slave)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side is closed, the command is done
                break
            if not chunk:
                break
            out += chunk
            if until:
                until(out.decode(errors="replace"), proc)
        code = proc.wait(10)
        assert not proc.stderr.read()
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    return code, out.decode()


def test_watch_redraws_with_the_request_rate(fpm):
    server = fpm()
    code, out = watch_in_a_terminal(server.address, "--count", "2", "--interval", "0.2")
    assert code == 0
    frames = out.split("\x1b[H\x1b[2J")
    assert frames[0] == "" and len(frames) == 3  # the screen cleared before each frame
    first, second = (f.replace("\r\n", "\n").splitlines() for f in frames[1:])
    assert re.match(r"pyfpm status  \d\d:\d\d:\d\d  every 0.2 s  /", first[0])
    assert first[1] == "rate       -"  # one sample is no rate yet
    # One request in 0.2 s or a little more: the watch's own, counted as every request is.
    assert 0 < float(re.match(r"rate       ([\d.]+) req/s$", second[1])[1]) <= 5.0
    assert max(map(len, first + second)) <= 100
    assert {int(line.split()[0]) for line in second[8:]} == set(server.children())


def test_watch_ends_on_ctrl_c_with_success(fpm):
    server = fpm()
    interrupted = []

    def interrupt(out, proc):
        if "PID" in out and not interrupted:
            interrupted.append(proc.send_signal(signal.SIGINT))

    code, out = watch_in_a_terminal(server.address, "--interval", "5", until=interrupt)
    assert interrupted and code == 0 and out.count("\x1b[2J") == 1


def test_watch_into_a_pipe_writes_plain_frames(fpm):
    server = fpm()
    done = status(server.address, "--watch", "--count", "2", "--interval", "0.2")
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    assert re.findall(r"^rate .*$", done.stdout, re.M)[0] == "rate       -"
    assert re.findall(r"^rate .*$", done.stdout, re.M)[1].endswith(" req/s")


def test_errors_name_the_address_or_what_answered(fpm, tmp_path):
    port = free_port()
    done = status("127.0.0.1:%d" % port)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "pyfpm status: 127.0.0.1:%d: connection refused " \
                          "(is the pool listening there?)\n" % port
    done = status(tmp_path / "nothing.sock")
    assert (done.returncode, done.stderr) == (
        2, "pyfpm status: %s: no such socket\n" % (tmp_path / "nothing.sock"))
    # A path the app answers, not the status page.
    server = fpm()
    done = status(server.address, "--path", "/nowhere")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("pyfpm status: /nowhere is not a status page (the answer was "
                                  "404 Not Found, application/json: {")
    assert done.stderr.endswith("); is pm.status_path = /nowhere set in this pool?\n")


# --- a pm.status_listen address ---------------------------------------------------------------

@pytest.mark.parametrize("status_path", ["/fpm-status", None])
def test_a_status_listen_address_leads_to_its_status_page(pyfpm, tmp_path, status_path):
    """Its status page is at pm.status_path, or at / without one: found without --path."""
    server = pyfpm(extra="pm.status_listen = %s\nping.path = /ping\n" % (tmp_path / "status.sock")
                   + ("pm.status_path = %s" % status_path if status_path else ""))
    server.wait_idle(2)
    address = tmp_path / "status.sock"
    done = status(address)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pool www (static), up ")
    done = status(address, "--watch", "--count", "2", "--interval", "0.2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(" %s %s\n" % (address, status_path or "/")) == 2
    assert done.stdout.count("pool www (static), up ") == 2


def test_a_wrong_path_on_a_status_listen_address_names_the_right_one(pyfpm, tmp_path):
    pyfpm(extra="pm.status_path = /fpm-status\npm.status_listen = %s"
          % (tmp_path / "status.sock")).wait_idle(2)
    done = status(tmp_path / "status.sock", "--path", "/status")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "pyfpm status: /status is not a status page (the answer was 404 Not Found, text/plain: "
        "Not Found: this address serves the pool's status page (/fpm-...); this "
        "pm.status_listen address serves the status page at /fpm-status (--path /fpm-status)\n")
