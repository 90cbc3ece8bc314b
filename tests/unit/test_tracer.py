"""fpm.tracer: where a slowlog entry stops, seen the way the faulthandler fallback sees it."""
from pathlib import Path

from fpm import tracer
from tests.unit.test_trace import code_objects


def test_app_callers_are_told_apart_by_their_file_and_name():
    """faulthandler prints a frame's file and co_name only: in each of pyfpm's files that hold
    a frame the slowlog stops at, no other function may have that name."""
    callers = tracer.app_callers()
    assert {c.co_name for c in callers} == {"serve", "__call__", "_compile"}
    for caller in callers:
        source = Path(caller.co_filename).read_text()
        namesakes = [c for c in code_objects(compile(source, caller.co_filename, "exec"))
                     if c.co_name == caller.co_name]
        assert [c.co_firstlineno for c in namesakes] == [caller.co_firstlineno], caller
