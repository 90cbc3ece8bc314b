"""The house's shape, as the README's architecture section draws it: small units, and a
compiled core that imports nothing of the master's."""
import ast
import re
from pathlib import Path

import pytest

FPM = Path(__file__).resolve().parents[2] / "fpm"
CORE = sorted(FPM.glob("_*.pyx")) + sorted(FPM.glob("_*.pxd"))
MAX_FUNCTION, MAX_CLASS = 60, 400

# A definition in Cython: def/cpdef/cdef function (any return type), class or cdef class.
_DEF = re.compile(r"^(\s*)(?:(cdef class|class)\s+(\w+)|(?:cpdef|cdef|def)\b[^=]*?(\w+)\s*\()")


def _python_units(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield (node.name, isinstance(node, ast.ClassDef),
                   node.end_lineno - node.lineno + 1)


def _cython_units(path):
    """By indentation: a unit runs to the next code line indented no deeper than its def."""
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        m = _DEF.match(line)
        if not m:
            continue
        indent, is_class = len(m.group(1)), m.group(2) is not None
        end = i
        for j in range(i + 1, len(lines)):
            text = lines[j].strip()
            if text and not text.startswith("#"):
                if len(lines[j]) - len(lines[j].lstrip()) <= indent:
                    break
                end = j
        yield m.group(3) or m.group(4), is_class, end - i + 1


def _units():
    for path in sorted(FPM.glob("*.py")):
        yield from ((path.name,) + u for u in _python_units(path))
    for path in CORE:
        yield from ((path.name,) + u for u in _cython_units(path))


def test_no_function_over_60_lines_and_no_class_over_400():
    too_long = ["%s: %s %s is %d lines" % (f, "class" if c else "function", name, n)
                for f, name, c, n in _units() if n > (MAX_CLASS if c else MAX_FUNCTION)]
    assert not too_long


def test_the_measure_sees_long_units():
    units = {(f, name): n for f, name, _, n in _units()}
    assert units[("_worker.pyx", "Worker")] > 20
    assert units[("master.py", "Master")] > 100
    assert len(units) > 500


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_the_compiled_core_imports_only_itself(path):
    named = re.findall(r"^\s*(?:from|c?import)\s+(fpm\.?\w*)", path.read_text(), re.M)
    assert [n for n in named if n.split(".")[-1] not in {p.stem for p in CORE}] == []
