"""fpm.probe without a master: a check run in a throw-away child, its answer or why it could
not run, and which import directories a pool names."""
import os
import sys
import time

import pytest

from fpm import apps, probe
from fpm.config import PoolConfig


def pool(**kwargs):
    return PoolConfig(name="www", listen=("127.0.0.1:9000",), **kwargs)


def test_a_check_answers_from_the_child():
    assert probe.run_as(pool(), True, lambda: "pid %d" % os.getpid(), become=False,
                        timeout=5) != "pid %d" % os.getpid()
    assert probe.run_as(pool(), True, lambda: None, become=False, timeout=5) is None


def test_a_check_that_raises_or_hangs_cannot_become():
    def fails():
        raise ValueError("no way")

    with pytest.raises(probe.CannotBecome, match=r"^ValueError: no way$"):
        probe.run_as(pool(), True, fails, become=False, timeout=5)
    started = time.monotonic()
    with pytest.raises(probe.CannotBecome, match=r"^gave no answer within 0.3 seconds$"):
        probe.run_as(pool(), True, lambda: time.sleep(60), become=False, timeout=0.3)
    assert time.monotonic() - started < 5


def test_import_dirs_are_the_standard_library_then_what_the_pool_names(tmp_path):
    (tmp_path / "src").mkdir()
    dirs = probe.import_dirs(pool(python_path=(str(tmp_path / "src"), str(tmp_path / "gone")),
                                  chdir=str(tmp_path)))
    stdlib = [p for what, p in dirs if what == "the standard library"]
    assert stdlib and all(apps._is_stdlib_entry(p) and os.path.isdir(p) for p in stdlib)
    assert dirs[len(stdlib):] == [("python_path", str(tmp_path / "src")), ("chdir", str(tmp_path))]
    assert all(p in sys.path for p in stdlib)


def test_readable_directories_give_no_problem(tmp_path):
    assert probe.unreadable_dirs([("python_path", str(tmp_path)), ("chdir", "/")]) == []


def test_an_answer_is_taken_whole_though_the_check_left_a_process_holding_the_pipe():
    def check():
        if os.fork() == 0:  # a helper the app starts as it is imported
            time.sleep(10)
            os._exit(0)
        return "done"

    started = time.monotonic()
    assert probe.run_as(pool(), True, check, become=False, timeout=5) == "done"
    assert time.monotonic() - started < 3


def test_the_checks_of_several_pools_run_at_once():
    started = time.monotonic()
    answers = probe.run_all([(pool(), lambda: time.sleep(0.5) or "slept", False)] * 4, True,
                            timeout=5)
    assert answers == ["slept"] * 4
    assert time.monotonic() - started < 1.8  # not 4 x 0.5 s one after the other
