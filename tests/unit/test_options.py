"""fpm.options: a pool's settings reach a worker's loop through one object, each directive
mapped once, and the loop reads every option it is told."""
import dataclasses
from pathlib import Path

from fpm import _worker, options
from fpm.config import PoolConfig

CORE = Path(options.__file__).with_name("_worker.pyx").read_text()


def pool(**kwargs):
    return PoolConfig(**{"name": "www", "listen": ("/run/www.sock",), "app": "app:app", **kwargs})


def test_each_directive_reaches_its_option():
    told = options.for_pool(pool(
        mount="/app", fastcgi_params_max=4096, pm_max_children=3, request_read_timeout=7,
        request_head_timeout=2, request_body_min_rate=512, pm_max_requests=9,
        pm_max_memory=1 << 26, request_body_buffer_size=1024, request_body_max_size=8192,
        request_body_temp_path="/var/tmp", security_request_body_file_dirs=("/srv/bodies",),
        request_queue_timeout=0.5, request_start_param="REQUEST_START", wsgi_errors="log"),
        {"k": "v"})
    assert dataclasses.asdict(told) == dict(
        base_environ={"k": "v"}, mount="/app", fill_paths=True, params_max=4096,
        max_conns=3 * _worker.MAX_HELD, max_reqs=3, read_timeout=7, head_timeout=2,
        body_rate=512, max_requests=9, max_memory=1 << 26, body_buffer=1024, body_max=8192,
        spool_dir="/var/tmp", body_file_dirs=("/srv/bodies",), queue_timeout=0.5,
        start_param="REQUEST_START", stamp_reads=False, wsgi_errors="log", log=None,
        board=None, slot=-1, special=None, access=None, on_reopen=None, allow=None,
        errors_log=None, on_output=None, statm_fd=None, park_fd=-1, handoff_fd=-1, kept=None,
        kept_rx=-1, kept_conns=(), left_queued=frozenset())


def test_what_a_worker_is_given_overrides_the_pool():
    told = options.for_pool(pool(pm_max_requests=500), {}, max_requests=512, park_fd=7)
    assert (told.max_requests, told.park_fd) == (512, 7)


def test_script_mode_splits_its_paths_itself():
    assert options.for_pool(pool(app=None), {}).fill_paths is False


def test_receive_times_are_stamped_on_tcp_for_a_queue_timeout_without_a_start_param():
    timed = pool(request_queue_timeout=0.5)
    assert options.for_pool(timed, {}, tcp=True).stamp_reads is True
    assert options.for_pool(timed, {}, tcp=False).stamp_reads is False
    assert options.for_pool(pool(request_queue_timeout=0.5, request_start_param="T"), {},
                            tcp=True).stamp_reads is False
    assert options.for_pool(pool(), {}, tcp=True).stamp_reads is False


def test_the_loop_reads_every_option():
    unread = [f.name for f in dataclasses.fields(options.WorkerOptions)
              if "o.%s" % f.name not in CORE]
    assert unread == []
