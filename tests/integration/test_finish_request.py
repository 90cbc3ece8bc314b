"""fpm.finish_request() behind nginx: the response arrives while the app is still working,
the worker stays busy meanwhile, nothing leaks into the next response on a kept connection,
and request_terminate_timeout_track_finished decides whether the work after it is timed."""
import json
import time

import pytest

from fpm import client

WORK = 1.5  # seconds the app works after finish_request()


def status(sock):
    return json.loads(client.request(str(sock), "/status?json&full", timeout=2).body)


@pytest.mark.parametrize("keep_conn", [False, True], ids=["keep_conn_off", "keep_conn_on"])
@pytest.mark.parametrize("how", ["environ", "import"])
def test_the_response_arrives_before_the_work_after_it_ends(served, tmp_path, keep_conn, how):
    status_sock = tmp_path / "status.sock"
    front, server = served(app="body_app:app", workers=1, keep_conn=keep_conn,
                           extra="pm.status_path = /status\npm.status_listen = %s" % status_sock)
    server.wait_idle(1)
    mark = tmp_path / "mark"
    r = front.get("/finish?s=%s&mark=%s&how=%s" % (WORK, mark, how))
    answered = time.monotonic()
    # Only what was sent before finish_request(): the body the app returned is dropped.
    assert (r.status, r.body) == (200, b"done early\n")
    assert r.seconds < WORK / 2, "the response took %.3f s" % r.seconds
    print("finish_request: whole response after %.1f ms, the work after it ends at %.1f s"
          % (r.seconds * 1000, WORK))
    assert not mark.exists()
    busy = status(status_sock)
    assert busy["active processes"] == 1
    assert [p["state"] for p in busy["processes"]] == ["Finishing"]
    while not mark.exists() and time.monotonic() - answered < WORK + 3:
        time.sleep(0.05)
    assert mark.read_text() == "finished=True again=False\n"
    # The next request, on the connection nginx kept or a new one, gets its own answer only.
    r = front.get("/nothing-here")
    assert (r.status, r.body) == (404, b"no such route\n")


@pytest.mark.parametrize("track", [True, False], ids=["track_finished", "untracked"])
def test_terminate_timeout_after_finish_follows_track_finished(served, tmp_path, track):
    front, server = served(app="body_app:app", workers=1, keep_conn=True, extra=(
        "request_terminate_timeout = 1s\nrequest_terminate_timeout_track_finished = %s"
        % ("yes" if track else "no")))
    worker = server.wait_idle(1)
    mark = tmp_path / "mark"
    r = front.get("/finish?s=2.5&mark=%s" % mark)
    assert (r.status, r.body) == (200, b"done early\n") and r.seconds < 1
    if track:
        server.wait_log(r"WARNING: \[pool www\] child %d, script '.*' \(request: "
                        r"\"GET /finish\?s=2.5&mark=.+\"\) execution timed out \([\d.]+ sec\), "
                        r"terminating" % worker[0], timeout=5)
        assert server.wait_idle(1) != worker
        time.sleep(2)
        assert not mark.exists(), "the work after finish_request() was not stopped"
    else:
        deadline = time.monotonic() + 5
        while not mark.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mark.exists() and server.children() == worker
        assert "timed out" not in server.log_text()


def test_finish_request_before_start_response_is_the_apps_error(served):
    """There is no response to send yet: the app gets a RuntimeError (here uncaught: a 500
    and its traceback in the error log)."""
    front, server = served(app="body_app:app")
    r = front.get("/finish-too-early")
    assert r.status == 500
    server.wait_log(r"RuntimeError: finish_request\(\) called before start_response\(\)")
