"""Reader for php-fpm.conf-style INI files, and the value types both config formats share.

It turns text into `Entry` records that name their file and line, following PHP-FPM's rules:
sections, `;` comments, quoting, `include` globs, `$pool` and `${ENV}`. It knows no directive.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

MAX_INCLUDE_DEPTH = 5  # PHP-FPM's limit on nested includes

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ARRAY_NAME = re.compile(r"([^\[\]\s]+)\s*\[([^\[\]]*)\]\Z")
_TIME = re.compile(r"([0-9]+)([smhd]?)\Z")
_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"([0-9]+)([kmg]?)\Z")
# Digits beyond which a number is out of every directive's range: int() is not asked (it
# refuses more than 4300 digits with a message of its own).
MAX_DIGITS = 24
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

# PHP's INI scanner turns yes/on/true into "1" and no/off/false/none into "" and FPM then
# rejects a literal 0. We accept 0 (and 1) as well: nobody writing `daemonize = 0` means yes.
_TRUE = frozenset({"1", "yes", "on", "true"})
_FALSE = frozenset({"0", "no", "off", "false", "none", ""})
BOOL_EXPECTED = "a boolean: yes/no, on/off, true/false or 1/0"


class Entry(NamedTuple):
    """One `name = value` line, or (name == "") the line that opened a pool section."""

    file: str
    line: int
    section: str | None  # None for [global], else the pool name as first spelled
    name: str  # as written; directive tables match it case-insensitively
    value: Any  # a str from INI; from TOML a str, int, bool or list, as written
    key: str | None = None  # the KEY of an array directive `name[KEY] = value`


@dataclass
class Document:
    """Everything read from a file and its includes: entries in order, problems found."""

    entries: list[Entry] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _Syntax(Exception):
    """A line that cannot be read; the message says why."""


def parse(text: str, path: str = "<string>", base_dir: str | None = None,
          environ: Mapping[str, str] | None = None) -> Document:
    """Read INI text (and its includes); `path` names it in messages. Problems are collected,
    not raised. `base_dir` (default: the working directory) anchors relative includes."""
    reader = _Reader(base_dir or os.getcwd(), environ)
    reader.read_text(text, path, 0)
    return reader.doc


def include_paths(pattern: str, base_dir: str) -> list[str]:
    """Files an `include` pattern names: relative to `base_dir`, sorted, directories skipped."""
    pattern = os.path.join(base_dir, pattern)  # an absolute pattern stays as it is
    return sorted(p for p in glob.glob(pattern) if not os.path.isdir(p))


def expand_env(text: str, environ: Mapping[str, str]) -> str:
    """Replace `${NAME}` (empty when unset, as PHP does) and `${NAME:-default}` (shell rule:
    the default also stands in for an empty variable). Raises ValueError on bad syntax."""
    out: list[str] = []
    i = 0
    while True:
        j = text.find("${", i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        i = _expand_one(text, j, environ, out)


def _expand_one(text: str, start: int, environ: Mapping[str, str], out: list[str]) -> int:
    end = text.find("}", start + 2)
    if end < 0:
        raise ValueError(f"unterminated '${{' in {text!r}")
    name, sep, default = text[start + 2:end].partition(":-")
    if not _ENV_NAME.match(name):
        raise ValueError(f"invalid variable name {name!r} in {text!r}")
    value = environ.get(name, "")
    out.append(default if sep and not value else value)
    return end + 1


def expand_pool(text: str, pool: str | None) -> str:
    """Replace every `$pool` by the pool name. Raises ValueError outside a pool section."""
    if "$pool" not in text:
        return text
    if pool is None:
        raise ValueError("'$pool' can only be used in a pool section")
    return text.replace("$pool", pool)


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(BOOL_EXPECTED)


def parse_int(text: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """A decimal integer within [minimum, maximum]. Unlike PHP, an empty value is an error."""
    expected = int_expected(minimum, maximum)
    text = text.strip()
    # ASCII digits: \d would take any script's digits, and isdigit() even '\xb2'.
    if not re.fullmatch(r"-?[0-9]+", text) or len(text.lstrip("-0")) > MAX_DIGITS:
        raise ValueError(expected)
    return check_range(int(text), minimum, maximum, expected)


def parse_time(text: str) -> int:
    """Seconds from `30`, `30s`, `5m`, `1h` or `2d`. Unlike PHP, `1.5m` is an error, not 60."""
    m = _TIME.match(text.strip().lower())
    if not m or len(m.group(1).lstrip("0")) > MAX_DIGITS:
        raise ValueError(TIME_EXPECTED)
    return int(m.group(1)) * _TIME_UNITS[m.group(2)]


TIME_EXPECTED = "a time in seconds, with an optional suffix s, m, h or d (e.g. 30s, 5m)"


def parse_size(text: str) -> int:
    """Bytes from `1048576`, `512K`, `64M` or `1G` (binary units, as PHP's memory_limit)."""
    m = _SIZE.match(text.strip().lower())
    if not m or len(m.group(1).lstrip("0")) > MAX_DIGITS:
        raise ValueError(SIZE_EXPECTED)
    return int(m.group(1)) * SIZE_UNITS[m.group(2)]


SIZE_EXPECTED = "a size in bytes, with an optional suffix K, M or G (e.g. 256M)"


def check_range(value: int, minimum: int | None, maximum: int | None, expected: str = "") -> int:
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(expected or int_expected(minimum, maximum))
    return value


def int_expected(minimum: int | None, maximum: int | None, why: str = "") -> str:
    if minimum is not None and maximum is not None:
        return f"an integer from {minimum} to {maximum}" + (f"; {why}" if why else "")
    if minimum is not None:
        return f"an integer >= {minimum}"
    if maximum is not None:
        return f"an integer <= {maximum}"
    return "an integer"


class _Reader:
    """Reads lines in order; the current section carries over into included files, as in PHP."""

    def __init__(self, base_dir: str, environ: Mapping[str, str] | None):
        self.base_dir = base_dir
        self.environ = os.environ if environ is None else environ
        self.doc = Document()
        self.section: str | None = None  # lines before any section header belong to [global]
        self.pools: dict[str, str] = {}  # lower-case name -> first spelling (re-opening continues it)

    def read_file(self, path: str, depth: int, origin: tuple[str, int]) -> None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) else f"not UTF-8 ({e.reason})"
            self.doc.errors.append(f"[{origin[0]}:{origin[1]}] include: cannot read '{path}': "
                                   f"{reason}")
            return
        self.read_text(text, path, depth)

    def read_text(self, text: str, path: str, depth: int) -> None:
        for lineno, raw in enumerate(text.splitlines(), 1):
            try:
                self._line(raw.strip(), path, lineno, depth)
            except _Syntax as e:
                self.doc.errors.append(f"[{path}:{lineno}] {e}")

    def _line(self, s: str, path: str, lineno: int, depth: int) -> None:
        if not s or s.startswith(";"):
            return
        if s.startswith("["):
            self._section(s, path, lineno)
            return
        name, eq, rest = s.partition("=")
        name = name.strip()
        if not eq or not name:
            raise _Syntax(f"expected 'name = value' or '[section]', got '{s}'")
        key = None
        m = _ARRAY_NAME.match(name)
        if m:
            name, key = m.group(1), m.group(2).strip()
        elif "[" in name or "]" in name:
            raise _Syntax(f"malformed array directive '{name}' (expected name[KEY] = value)")
        value = self._value(rest, name)
        if name.lower() == "include" and key is None:
            self._include(value, path, lineno, depth)
            return
        self.doc.entries.append(Entry(path, lineno, self.section, name, value, key))

    def _section(self, s: str, path: str, lineno: int) -> None:
        end = s.find("]")
        rest = s[end + 1:].strip() if end >= 0 else ""
        if end < 0 or (rest and not rest.startswith(";")):
            raise _Syntax(f"malformed section header '{s}' (expected [name])")
        name = s[1:end].strip()
        if not name:
            raise _Syntax("empty section name '[]'")
        if name.lower() == "global":
            self.section = None
            return
        self.section = self.pools.setdefault(name.lower(), name)
        self.doc.entries.append(Entry(path, lineno, self.section, "", ""))

    def _value(self, rest: str, name: str) -> str:
        rest = rest.strip()
        try:
            if rest.startswith('"'):
                value, tail = self._double_quoted(rest)
            elif rest.startswith("'"):
                end = rest.find("'", 1)
                if end < 0:
                    raise _Syntax(f"{name}: missing closing \"'\"")
                value, tail = rest[1:end], rest[end + 1:]  # single quotes: literal, no expansion
            else:
                value, tail = expand_env(_unquoted(rest), self.environ), ""
            tail = tail.strip()
            if tail and not tail.startswith(";"):
                raise _Syntax(f"{name}: unexpected text after the closing quote: '{tail}'")
            return expand_pool(value, self.section)
        except ValueError as e:
            raise _Syntax(f"{'[global]' if self.section is None else f'[pool {self.section}]'} "
                          f"{name}: invalid value '{rest}' ({e})") from None

    def _double_quoted(self, s: str) -> tuple[str, str]:
        r"""Escapes as in PHP's INI scanner: \" \\ \$ ; any other backslash stays as written.
        `${...}` is expanded inside double quotes too; `\$` keeps a literal dollar."""
        out: list[str] = []
        i = 1
        while i < len(s):
            c = s[i]
            if c == "\\" and i + 1 < len(s) and s[i + 1] in '"\\$':
                out.append(s[i + 1])
                i += 2
            elif c == '"':
                return "".join(out), s[i + 1:]
            elif s.startswith("${", i):
                i = _expand_one(s, i, self.environ, out)
            else:
                out.append(c)
                i += 1
        raise _Syntax("missing closing '\"'")

    def _include(self, pattern: str, path: str, lineno: int, depth: int) -> None:
        if depth >= MAX_INCLUDE_DEPTH:
            raise _Syntax(f"include '{pattern}': failed to include more than "
                          f"{MAX_INCLUDE_DEPTH} files recursively")
        paths = include_paths(pattern, self.base_dir)
        if not paths:
            self.doc.warnings.append(
                f"Nothing matches the include pattern '{pattern}' from {path} at line {lineno}.")
        for included in paths:
            self.read_file(included, depth + 1, (path, lineno))


def _unquoted(s: str) -> str:
    """An unquoted value runs to a `;` comment, but a `;` inside `${...}` does not end it."""
    i = 0
    while i < len(s):
        if s.startswith("${", i):
            end = s.find("}", i)
            i = len(s) if end < 0 else end + 1
        elif s[i] == ";":
            return s[:i].rstrip()
        else:
            i += 1
    return s
