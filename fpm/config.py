"""Configuration: one directive table turns INI or TOML into frozen, validated dataclasses.

Each directive is checked as it is read (type, range), then each pool's cross-field rules run;
every problem found is reported at once in a `ConfigError`, naming file:line, pool, directive,
value and limit. Relative paths are anchored at the prefix (-p) when given, else at the directory
of the main configuration file.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Mapping

from fpm import ini

try:  # tomllib is in the standard library from 3.11; tomli is the same parser for older ones
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - depends on the interpreter
    import tomli as tomllib  # type: ignore[no-redef]


class ConfigError(Exception):
    """All problems found in a configuration; str() is one line per problem."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


# --- value kinds: how a directive's value is read (INI text or TOML value), checked, shown -----

class Kind:
    """Base kind: a string. `parse` raises ValueError(what was expected)."""

    expected = "a string"

    def parse(self, raw: Any) -> Any:
        if not isinstance(raw, str):
            raise ValueError(self.expected)
        return raw

    def resolve(self, value: Any, base: str) -> Any:
        """Make relative paths absolute; only path kinds do anything."""
        return value

    def show(self, value: Any) -> str:
        return "undefined" if value is None else str(value)


class Str(Kind):
    """A string; empty means unset (None), as an empty value does in PHP-FPM."""

    def parse(self, raw: Any) -> str | None:
        return super().parse(raw) or None


class Path(Str):
    expected = "a file system path"

    def resolve(self, value: str | None, base: str) -> str | None:
        return None if value is None else os.path.join(base, value)


class Int(Kind):
    def __init__(self, minimum: int | None = None, maximum: int | None = None):
        self.minimum, self.maximum = minimum, maximum
        self.expected = ini.int_expected(minimum, maximum)

    def parse(self, raw: Any) -> int:
        if isinstance(raw, str):
            return ini.parse_int(raw, self.minimum, self.maximum)
        if isinstance(raw, int) and not isinstance(raw, bool):
            return ini.check_range(raw, self.minimum, self.maximum, self.expected)
        raise ValueError(self.expected)


class Time(Kind):
    expected = ini.TIME_EXPECTED

    def parse(self, raw: Any) -> int:
        if isinstance(raw, str):
            return ini.parse_time(raw)
        if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
            return raw
        raise ValueError(self.expected)

    def show(self, value: int) -> str:
        return f"{value}s"


class Bool(Kind):
    expected = ini.BOOL_EXPECTED

    def parse(self, raw: Any) -> bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):
            return bool(raw)
        if isinstance(raw, str):
            return ini.parse_bool(raw)
        raise ValueError(self.expected)

    def show(self, value: bool) -> str:
        return "yes" if value else "no"


class Choice(Kind):
    """One word of a fixed set, case-insensitive; aliases map to their canonical word."""

    def __init__(self, *choices: str, aliases: Mapping[str, str] | None = None):
        self.choices = dict.fromkeys(choices)
        self.aliases = dict(aliases or {})
        self.expected = "one of " + ", ".join(choices)

    def parse(self, raw: Any) -> str:
        word = super().parse(raw).strip().lower()
        word = self.aliases.get(word, word)
        if word not in self.choices:
            raise ValueError(self.expected)
        return word


class Octal(Kind):
    """A file mode such as 0660: an octal string in INI, a string or an integer (0o660) in TOML."""

    expected = "an octal file mode from 0 to 0777, e.g. 0660"

    def parse(self, raw: Any) -> int:
        if isinstance(raw, str) and re.fullmatch(r"(0o?)?[0-7]{1,4}", raw.strip().lower()):
            raw = int(raw.strip().lower().removeprefix("0o"), 8)
        if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= 0o777:
            return raw
        raise ValueError(self.expected)

    def show(self, value: int) -> str:
        return f"{value:04o}"


class PathList(Kind):
    """`a:b` or `a,b` in INI, a list of strings in TOML. Relative entries are left as written:
    they resolve against the worker's working directory (`chdir`), as sys.path entries do."""

    expected = "a list of directories separated by ':' or ','"

    def parse(self, raw: Any) -> tuple[str, ...]:
        if isinstance(raw, str):
            raw = re.split(r"[:,]", raw)
        if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
            raise ValueError(self.expected)
        return tuple(p.strip() for p in raw if p.strip())

    def show(self, value: tuple[str, ...]) -> str:
        return ":".join(value)


class App(Str):
    expected = "'module:callable', e.g. 'mysite.wsgi:application'"
    _SHAPE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")

    def parse(self, raw: Any) -> str | None:
        value = super().parse(raw)
        if value is not None and not self._SHAPE.match(value.strip()):
            raise ValueError(self.expected)
        return value and value.strip()


class Mount(Kind):
    """The URL prefix an app is mounted at; stored without its trailing slash ("/" means "")."""

    expected = "'' or a URL path starting with '/', e.g. /app"

    def parse(self, raw: Any) -> str:
        value = super().parse(raw).strip()
        if value and not value.startswith("/"):
            raise ValueError(self.expected)
        return value.rstrip("/")


class ErrorLog(Kind):
    expected = "'stderr' or a file path (syslog is not supported yet)"

    def parse(self, raw: Any) -> str:
        value = super().parse(raw).strip()
        if not value or value == "syslog":
            raise ValueError(self.expected)
        return value

    def resolve(self, value: str, base: str) -> str:
        return value if value == "stderr" else os.path.join(base, value)


class Listen(Kind):
    """PHP-FPM's rule: a value holding ':' or only digits is TCP, anything else a unix socket."""

    expected = "'ip:port', '[ipv6]:port', 'port' or a unix socket path; port from 1 to 65535"
    _TCP = re.compile(r"(?:\[[0-9A-Fa-f:.%\w]+\]|[^:\[\]]+):(\d+)\Z|(\d+)\Z")

    def parse(self, raw: Any) -> str:
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = str(raw)
        value = super().parse(raw).strip()
        if not value:
            raise ValueError(self.expected)
        if self.is_tcp(value):
            m = self._TCP.match(value)
            if not m or not 1 <= int(m.group(1) or m.group(2)) <= 65535:
                raise ValueError(self.expected)
        return value

    @staticmethod
    def is_tcp(value: str) -> bool:
        return ":" in value or value.isdigit()

    def resolve(self, value: str | None, base: str) -> str | None:
        if value is None or self.is_tcp(value):
            return value
        return os.path.join(base, value)


class Include(Kind):
    """Read by the INI reader itself; in TOML a glob or a list of globs."""

    expected = "a glob pattern or a list of them"

    def parse(self, raw: Any) -> list[str]:
        patterns = [raw] if isinstance(raw, str) else raw
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ValueError(self.expected)
        return patterns


# --- the directive table --------------------------------------------------------------------

@dataclass(frozen=True)
class Directive:
    name: str  # as written in the files, e.g. "pm.max_children"
    section: Literal["global", "pool"]
    kind: Kind
    default: Any
    doc: str
    required: str | None = None  # message when a pool leaves it out
    array: bool = False  # written name[KEY] = value; stored as ((KEY, value), ...)
    stored: bool = True  # False: consumed while reading (include), no dataclass field

    @property
    def field(self) -> str:
        return self.name.replace(".", "_")


_LOG_LEVELS = Choice("debug", "notice", "warning", "error", "alert", aliases={"warn": "warning"})

DIRECTIVES: tuple[Directive, ...] = (
    Directive("pid", "global", Path(), None,
              "Pid file, written at start and removed at exit. Default: none."),
    Directive("error_log", "global", ErrorLog(), "stderr",
              "Where the master and the workers log: 'stderr' or a file path."),
    Directive("log_level", "global", _LOG_LEVELS, "notice",
              "Least severe level logged: debug, notice, warning, error or alert."),
    Directive("daemonize", "global", Bool(), True,
              "Detach into the background; -F keeps pyfpm in the foreground."),
    Directive("process_control_timeout", "global", Time(), 0,
              "How long workers get to finish on a graceful stop before they are killed; "
              "0 waits for ever."),
    Directive("include", "global", Include(), None,
              "Read more files here: a glob, sorted; no match is only a warning.", stored=False),

    Directive("listen", "pool", Listen(), None,
              "Address to accept FastCGI requests on: 'ip:port', '[ipv6]:port', 'port' "
              "(all addresses) or a unix socket path.",
              required="no listen address have been defined!"),
    Directive("listen.backlog", "pool", Int(-1), -1,
              "listen(2) backlog; -1 means the kernel maximum (SOMAXCONN)."),
    Directive("listen.owner", "pool", Str(), None,
              "Owner of the unix socket (user name or uid). Default: the user running pyfpm."),
    Directive("listen.group", "pool", Str(), None,
              "Group of the unix socket (group name or gid). Default: the owner's group."),
    Directive("listen.mode", "pool", Octal(), 0o660,
              "Permissions of the unix socket, in octal."),
    Directive("pm", "pool", Choice("static", "dynamic", "ondemand"), "static",
              "Process manager: static keeps pm.max_children workers running "
              "(dynamic and ondemand are validated but not implemented yet).",
              required="the process manager is missing (static, dynamic or ondemand)"),
    Directive("pm.max_children", "pool", Int(1), 5,
              "Number of workers (static), or the most there can be (dynamic, ondemand).",
              required="pm.max_children must be set (expected an integer >= 1)"),
    Directive("pm.start_servers", "pool", Int(0), 0,
              "dynamic: workers started at launch; 0 means "
              "min_spare + (max_spare - min_spare) / 2."),
    Directive("pm.min_spare_servers", "pool", Int(0), 0,
              "dynamic: fewest idle workers wanted (mandatory for dynamic)."),
    Directive("pm.max_spare_servers", "pool", Int(0), 0,
              "dynamic: most idle workers wanted (mandatory for dynamic)."),
    Directive("app", "pool", App(), None,
              "The WSGI application, 'module:callable'."),
    Directive("chdir", "pool", Path(), None,
              "Directory the workers change into before loading the app; it must exist."),
    Directive("python_path", "pool", PathList(), (),
              "Directories put in front of sys.path in the workers, separated by ':' or ','."),
    Directive("mount", "pool", Mount(), "",
              "URL prefix the app is mounted at. When the web server sends no PATH_INFO, "
              "SCRIPT_NAME = mount and PATH_INFO = the request path minus the mount."),
    Directive("fastcgi.params_max", "pool", Int(1), 1048576,
              "Largest FastCGI PARAMS block (bytes) a request may send; more closes the "
              "connection."),
    Directive("env", "pool", Str(), (),
              "env[NAME] = value: environment variables set in the workers.", array=True),
)

_TABLE: dict[tuple[str, str], Directive] = {(d.section, d.name): d for d in DIRECTIVES}


def _default(name: str) -> Any:
    return next(d.default for d in DIRECTIVES if d.name == name)


# --- the frozen result -----------------------------------------------------------------------

@dataclass(frozen=True)
class GlobalConfig:
    pid: str | None = _default("pid")
    error_log: str = _default("error_log")
    log_level: str = _default("log_level")
    daemonize: bool = _default("daemonize")
    process_control_timeout: int = _default("process_control_timeout")


@dataclass(frozen=True)
class PoolConfig:
    name: str
    listen: str
    listen_backlog: int = _default("listen.backlog")
    listen_owner: str | None = _default("listen.owner")
    listen_group: str | None = _default("listen.group")
    listen_mode: int = _default("listen.mode")
    pm: str = _default("pm")
    pm_max_children: int = _default("pm.max_children")
    pm_start_servers: int = _default("pm.start_servers")
    pm_min_spare_servers: int = _default("pm.min_spare_servers")
    pm_max_spare_servers: int = _default("pm.max_spare_servers")
    app: str | None = _default("app")
    chdir: str | None = _default("chdir")
    python_path: tuple[str, ...] = _default("python_path")
    mount: str = _default("mount")
    fastcgi_params_max: int = _default("fastcgi.params_max")
    env: tuple[tuple[str, str], ...] = _default("env")


@dataclass(frozen=True)
class Config:
    path: str  # the main file, absolute; "(embedded)" or "<string>" when not read from a file
    global_: GlobalConfig
    pools: tuple[PoolConfig, ...]
    # (level, text) pairs for the master to log, e.g. ("warning", "Nothing matches ...")
    messages: tuple[tuple[str, str], ...] = field(default=(), compare=False)


# --- loading ---------------------------------------------------------------------------------

def load(path: str, prefix: str | None = None) -> Config:
    """Read a configuration file: `.toml` as TOML, anything else as php-fpm.conf-style INI."""
    fmt = "toml" if path.lower().endswith(".toml") else "ini"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else f"not UTF-8 ({e.reason})"
        raise ConfigError([f"failed to load configuration file '{path}': {reason}"]) from None
    return loads(text, path, fmt, prefix=prefix)


def loads(text: str, path: str = "<string>", fmt: Literal["ini", "toml"] = "ini",
          prefix: str | None = None) -> Config:
    """Parse configuration text; `path` names it in messages and, unless it looks like
    "<string>", anchors relative paths (when no prefix is given)."""
    named = not path.startswith(("<", "("))
    if prefix is not None:
        base = os.path.abspath(prefix)
    else:
        base = os.path.dirname(os.path.abspath(path)) if named else os.getcwd()
    if fmt == "toml":
        doc = _toml_document(text, path, base, 0)
    elif fmt == "ini":
        doc = ini.parse(text, path, base)
    else:
        raise ValueError(f"unknown configuration format {fmt!r} (expected 'ini' or 'toml')")
    return _build(doc, os.path.abspath(path) if named else path, base)


# --- TOML: [global] and [pools.NAME] tables, turned into the same entries as INI ----------------

def _toml_document(text: str, path: str, base: str, depth: int) -> ini.Document:
    doc = ini.Document()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        doc.errors.append(f"[{path}] invalid TOML: {e}")
        return doc
    lines = _toml_lines(text)

    def entry(section: str | None, table: str, name: str, value: Any, key: str | None = None):
        line = _toml_line(lines, f"{table}.{name}" + (f".{key}" if key is not None else ""))
        try:  # the same ${ENV} and $pool rules as INI, in every string
            value = _expand(value, section)
        except ValueError as x:
            doc.errors.append(f"[{path}:{line}] {_scope(section)} {name}: "
                              f"invalid value '{value}' ({x})")
        return ini.Entry(path, line, section, name, value, key)

    for top, body in data.items():
        if top == "global" and isinstance(body, dict):
            for name, key, value in _flatten(body, "global"):
                if name.lower() == "include" and key is None:
                    _toml_include(doc, entry(None, "global", name, value), base, depth)
                else:
                    doc.entries.append(entry(None, "global", name, value, key))
        elif top == "pools" and isinstance(body, dict) and all(
                isinstance(t, dict) for t in body.values()):
            for pool, table in body.items():
                prefix = f"pools.{pool}"
                if pool.lower() == "global" or not pool:
                    doc.errors.append(f"[{path}:{_toml_line(lines, prefix)}] invalid pool name "
                                      f"'{pool}' (reserved or empty)")
                    continue
                doc.entries.append(ini.Entry(path, _toml_line(lines, prefix), pool, "", ""))
                doc.entries.extend(entry(pool, prefix, n, v, k) for n, k, v in
                                   _flatten(table, "pool"))
        else:
            doc.errors.append(f"[{path}:{_toml_line(lines, top)}] unknown table or key '{top}' "
                              f"(expected [global] and [pools.NAME] tables)")
    return doc


def _expand(value: Any, section: str | None) -> Any:
    if isinstance(value, str):
        return ini.expand_pool(ini.expand_env(value, os.environ), section)
    if isinstance(value, list):
        return [_expand(v, section) for v in value]
    return value


def _flatten(table: dict, section: str, prefix: str = "") -> Iterator[tuple[str, str | None, Any]]:
    """Nested tables become dotted names (`pm = {max_children = 5}` is `pm.max_children`);
    the table of an array directive gives its keys (`env = {PATH = "/bin"}`)."""
    for k, v in table.items():
        name = prefix + k
        directive = _TABLE.get((section, name.lower()))
        if isinstance(v, dict) and directive is not None and directive.array:
            for key, item in v.items():
                yield name, key, item
        elif isinstance(v, dict):
            yield from _flatten(v, section, name + ".")
        else:
            yield name, None, v


def _toml_include(doc: ini.Document, e: ini.Entry, base: str, depth: int) -> None:
    where = f"[{e.file}:{e.line}]"
    try:
        patterns = Include().parse(e.value)
    except ValueError as x:
        doc.errors.append(f"{where} [global] include: invalid value '{e.value}' (expected {x})")
        return
    if depth >= ini.MAX_INCLUDE_DEPTH:
        doc.errors.append(f"{where} include '{e.value}': failed to include more than "
                          f"{ini.MAX_INCLUDE_DEPTH} files recursively")
        return
    for pattern in patterns:
        paths = ini.include_paths(pattern, base)
        if not paths:
            doc.warnings.append(f"Nothing matches the include pattern '{pattern}' "
                                f"from {e.file} at line {e.line}.")
        for included in paths:
            try:
                with open(included, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as x:
                doc.errors.append(f"{where} include: cannot read '{included}': {x}")
                continue
            if included.lower().endswith(".toml"):
                sub = _toml_document(text, included, base, depth + 1)
            else:
                sub = ini.parse(text, included, base)
            doc.entries.extend(sub.entries)
            doc.errors.extend(sub.errors)
            doc.warnings.extend(sub.warnings)


_TOML_KEY = re.compile(r'\s*(?:([A-Za-z0-9_-]+)|"((?:[^"\\]|\\.)*)"|\'([^\']*)\')\s*')


def _toml_keys(s: str) -> tuple[list[str], str]:
    """Split a dotted TOML key at the start of `s`; returns the parts and the text after them."""
    parts: list[str] = []
    while True:
        m = _TOML_KEY.match(s)
        if not m:
            return parts, s
        parts.append(next(g for g in m.groups() if g is not None))
        s = s[m.end():]
        if not s.startswith("."):
            return parts, s
        s = s[1:]


def _toml_lines(text: str) -> dict[str, int]:
    """Line of each table header and key, by dotted path; tomllib does not report them."""
    lines: dict[str, int] = {}
    table = ""
    for n, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if s.startswith("[") and not s.startswith("[["):
            parts, rest = _toml_keys(s[1:])
            if parts and rest.startswith("]"):
                table = ".".join(parts)
                lines.setdefault(table, n)
        elif s and not s.startswith("#"):
            parts, rest = _toml_keys(s)
            if parts and rest.startswith("="):
                lines.setdefault(".".join(([table] if table else []) + parts), n)
    return lines


def _toml_line(lines: dict[str, int], dotted: str) -> int:
    """The line of `dotted`, else of the nearest enclosing key or table; 0 if unknown."""
    while dotted:
        if dotted in lines:
            return lines[dotted]
        dotted = dotted.rpartition(".")[0]
    return 0


# --- validation: each directive as read, then per pool, then across pools ---------------------

@dataclass
class _Pool:
    name: str
    where: tuple[str, int]  # where the section was first opened
    values: dict[str, Any] = field(default_factory=dict)  # field -> value
    origin: dict[str, tuple[str, int]] = field(default_factory=dict)  # field -> (file, line)
    arrays: dict[str, dict[str, str]] = field(default_factory=dict)  # field -> {KEY: value}


def _at(where: tuple[str, int]) -> str:
    file, line = where
    return f"[{file}:{line}]" if line else f"[{file}]"


def _scope(pool: str | None) -> str:
    return "[global]" if pool is None else f"[pool {pool}]"


def _build(doc: ini.Document, path: str, base: str) -> Config:
    errors = list(doc.errors)
    messages = [("warning", w) for w in doc.warnings]
    global_values: dict[str, Any] = {}
    global_origin: dict[str, tuple[str, int]] = {}
    pools: dict[str, _Pool] = {}

    for e in doc.entries:
        where = (e.file, e.line)
        pool = None
        if e.section is not None:
            # one pool per name, case-insensitively, as PHP-FPM re-opens sections
            pool = pools.setdefault(e.section.lower(), _Pool(e.section, where))
            if not e.name:
                continue
        problem = _read_entry(e, pool, global_values, global_origin)
        if problem:
            errors.append(f"{_at(where)} {_scope(e.section)} {problem}")

    if not pools and not errors:
        errors.append(f"[{path}] no pool defined: at least one pool section ([www]) is needed")
    global_config = _make_global(global_values, base)
    pool_configs = [_make_pool(p, base, errors, messages) for p in pools.values()]
    _check_listen_clashes(pools, base, errors)
    if errors:
        raise ConfigError(errors)
    return Config(path, global_config, tuple(pool_configs), tuple(messages))


def _read_entry(e: ini.Entry, pool: _Pool | None, global_values: dict, global_origin: dict) -> str:
    """Store one entry's checked value; return the problem ("" if none)."""
    section = "global" if pool is None else "pool"
    d = _TABLE.get((section, e.name.lower()))
    if d is None or d.array != (e.key is not None):
        return _unknown(e, d, section)
    values, origin = (global_values, global_origin) if pool is None else (pool.values, pool.origin)
    origin[d.field] = (e.file, e.line)  # even if invalid: a bad value is not a missing one
    try:
        value = d.kind.parse(e.value)
    except ValueError as x:
        return f"{d.name}: invalid value '{_shown(e.value)}' (expected {x})"
    if not d.array:
        values[d.field] = value
    elif not e.key:
        return f"{d.name}[]: a key is needed, e.g. {d.name}[NAME] = value"
    elif value is None:
        return f"{d.name}[{e.key}]: empty value"
    else:
        pool.arrays.setdefault(d.field, {})[e.key] = value
    return ""


def _unknown(e: ini.Entry, d: Directive | None, section: str) -> str:
    if e.key is not None:
        return f"unknown directive '{e.name}'"
    if d is not None:  # an array directive written without its [KEY]
        return f"unknown entry '{e.name}' (write {d.name}[NAME] = value)"
    other = "pool" if section == "global" else "global"
    if (other, e.name.lower()) in _TABLE:
        where = "a pool section" if other == "pool" else "the [global] section"
        return f"unknown entry '{e.name}' ({e.name} belongs in {where})"
    return f"unknown entry '{e.name}'"


def _shown(value: Any) -> str:
    """A value as the user wrote it: TOML's true/false rather than Python's True/False."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _make_global(values: dict, base: str) -> GlobalConfig:
    return GlobalConfig(**{d.field: d.kind.resolve(values.get(d.field, d.default), base)
                           for d in DIRECTIVES if d.section == "global" and d.stored})


def _make_pool(p: _Pool, base: str, errors: list[str],
               messages: list[tuple[str, str]]) -> PoolConfig:
    found: list[str] = []
    v: dict[str, Any] = {}
    for d in DIRECTIVES:
        if d.section != "pool" or not d.stored:
            continue
        if d.array:
            v[d.field] = tuple(p.arrays.get(d.field, {}).items())
            continue
        if d.required and d.field not in p.origin:
            found.append(f"{_at(p.where)} [pool {p.name}] {d.required}")
        v[d.field] = d.kind.resolve(p.values.get(d.field, d.default), base)
    if v["chdir"] is not None and not os.path.isdir(v["chdir"]):
        found.append(f"{_at(p.origin['chdir'])} [pool {p.name}] chdir: invalid value "
                     f"'{p.values['chdir']}' (expected an existing directory; "
                     f"'{v['chdir']}' is not one)")
    if v["pm"] == "dynamic" and "pm_max_children" in p.values:
        found.extend(_check_dynamic(p, v, messages))
    errors.extend(found)
    return PoolConfig(name=p.name, **v)  # discarded by the caller when errors were found


def _check_dynamic(p: _Pool, v: dict[str, Any], messages: list[tuple[str, str]]) -> list[str]:
    """PHP-FPM's rules for pm = dynamic; may fill in pm.start_servers as PHP-FPM does."""
    children, start = v["pm_max_children"], v["pm_start_servers"]
    lo, hi = v["pm_min_spare_servers"], v["pm_max_spare_servers"]

    def at(name: str) -> str:
        return f"{_at(p.origin.get(name.replace('.', '_'), p.where))} [pool {p.name}] "

    problems = []
    if lo <= 0:
        problems.append(at("pm.min_spare_servers") +
                        f"pm.min_spare_servers({lo}) must be a positive value")
    if hi <= 0:
        problems.append(at("pm.max_spare_servers") +
                        f"pm.max_spare_servers({hi}) must be a positive value")
    if problems:
        return problems
    if lo > children or hi > children:
        return [at("pm.max_spare_servers" if hi > children else "pm.min_spare_servers") +
                f"pm.min_spare_servers({lo}) and pm.max_spare_servers({hi}) "
                f"cannot be greater than pm.max_children({children})"]
    if hi < lo:
        return [at("pm.max_spare_servers") +
                f"pm.max_spare_servers({hi}) must not be less than pm.min_spare_servers({lo})"]
    if start == 0:
        v["pm_start_servers"] = lo + (hi - lo) // 2
        messages.append(("notice", f"[pool {p.name}] pm.start_servers is not set. "
                                   f"It's been set to {v['pm_start_servers']}."))
    elif not lo <= start <= hi:
        return [at("pm.start_servers") +
                f"pm.start_servers({start}) must not be less than pm.min_spare_servers({lo}) "
                f"and not greater than pm.max_spare_servers({hi})"]
    return []


def _check_listen_clashes(pools: dict[str, _Pool], base: str, errors: list[str]) -> None:
    owners: dict[str, str] = {}
    kind = _TABLE[("pool", "listen")].kind
    for p in pools.values():
        if "listen" not in p.values:
            continue
        address = kind.resolve(p.values["listen"], base)
        if address in owners:
            errors.append(f"{_at(p.origin['listen'])} [pool {p.name}] listen: address "
                          f"'{address}' is already used by pool '{owners[address]}'")
        else:
            owners[address] = p.name


def dump(config: Config) -> str:
    """The effective configuration, shaped like `php-fpm -tt`: [global], then each pool."""
    out = ["[global]"]
    out += [f"\t{d.name} = {d.kind.show(getattr(config.global_, d.field))}"
            for d in DIRECTIVES if d.section == "global" and d.stored]
    for pool in config.pools:
        out += ["", f"[{pool.name}]"]
        for d in DIRECTIVES:
            if d.section != "pool" or not d.stored:
                continue
            value = getattr(pool, d.field)
            if d.array:
                out += [f"\t{d.name}[{k}] = {item}" for k, item in value]
            else:
                out.append(f"\t{d.name} = {d.kind.show(value)}")
    return "\n".join(out) + "\n"
