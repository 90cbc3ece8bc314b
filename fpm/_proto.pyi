"""Type stub for the compiled FastCGI server (fpm/_proto.pyx)."""
from typing import Any, Callable, Iterator

BEGIN_REQUEST: int
ABORT_REQUEST: int
END_REQUEST: int
PARAMS: int
STDIN: int
STDOUT: int
STDERR: int
DATA: int
GET_VALUES: int
GET_VALUES_RESULT: int
UNKNOWN_TYPE: int
RESPONDER: int
AUTHORIZER: int
FILTER: int
KEEP_CONN: int
REQUEST_COMPLETE: int
CANT_MPX_CONN: int
OVERLOADED: int
UNKNOWN_ROLE: int
MAX_CONTENT: int
MAX_HELD: int

class PeerError(Exception): ...
class ProtocolError(PeerError, ValueError): ...
class PeerClosed(PeerError, ConnectionError): ...
class HTTPOnFastCGIPort(ProtocolError): ...

Event = tuple  # see Decoder.feed

class Decoder:
    """Server side of one connection, sans-IO.

    feed() returns events in order:
      ("begin", request_id, role, keep_conn)       RESPONDER requests only
      ("params", request_id, {name: value})        bytes, when the empty PARAMS record arrives
      ("stdin", request_id, data) / ("stdin_end", request_id)
      ("abort", request_id)
    Refusals and management answers (END_REQUEST with CANT_MPX_CONN or UNKNOWN_ROLE,
    GET_VALUES_RESULT, UNKNOWN_TYPE) are made by the codec and read from data_to_send().
    A BEGIN_REQUEST for the next request on a kept connection waits in the buffer until
    end_request() ends the current one.
    """
    request_id: int
    role: int
    keep_conn: bool
    want_close: bool  # a reply ended a request without FCGI_KEEP_CONN: close after sending
    def __init__(self, params_max: int = 1048576, max_conns: int = 1, max_reqs: int = 1) -> None: ...
    def feed(self, data: bytes) -> list[Event]: ...
    def eof(self) -> None: ...
    def data_to_send(self) -> bytes: ...
    def end_request(self, app_status: int = 0, protocol_status: int = 0) -> bytes: ...

def encode_stream(rtype: int, request_id: int, data: bytes) -> bytes: ...
def encode_stdout(request_id: int, data: bytes) -> bytes: ...
def encode_stderr(request_id: int, data: bytes) -> bytes: ...
def encode_end_request(request_id: int, app_status: int = 0, protocol_status: int = 0) -> bytes: ...

class FileWrapper:
    filelike: Any
    blksize: int
    def __init__(self, filelike: Any, blksize: int = 8192) -> None: ...
    def __iter__(self) -> Iterator[bytes]: ...
    def __next__(self) -> bytes: ...
    def close(self) -> None: ...

STAGE_NAMES: tuple[str, ...]
HEADER_FIELDS: tuple[str, ...]
PAGE_SIZE: int

def board_size(nslots: int) -> int: ...

class Board:
    """A pool's scoreboard mapped from a memfd (see fpm.scoreboard)."""
    fd: int
    nslots: int
    accepted_conn: int
    def __init__(self, fd: int, nslots: int, create: bool = False) -> None: ...
    def header(self) -> tuple: ...
    def bump_log_generation(self) -> None: ...
    def count_slow_request(self) -> None: ...
    def set_master_counters(self, start_epoch_us: int, active: int, max_children_reached: int,
                            listen_queue: int, listen_queue_len: int) -> None: ...
    def reset(self, index: int, started_us: int) -> None: ...
    def set_pid(self, index: int, pid: int) -> None: ...
    def set_order(self, index: int, order: int) -> None: ...
    def free(self, index: int) -> None: ...
    def read(self, index: int) -> tuple: ...

def request_stop() -> None: ...
def watch_quit() -> None: ...
def serve(listen_fds: list[int], app: Callable, base_environ: dict, mount: str = "",
          params_max: int = 1048576, max_conns: int = 1, max_reqs: int = 1,
          read_timeout: float = 60.0,
          log: Callable[[str, str], None] | None = None,
          board: Board | None = None, slot: int = -1, max_requests: int = 0,
          max_memory: int = 0, special: dict | None = None, access: Any = None,
          on_reopen: Callable[[], None] | None = None,
          allow: Callable[[int], bool] | None = None, body_buffer: int = 1 << 20,
          body_max: int = 0, spool_dir: str | None = None, body_file_dirs: tuple = (),
          queue_timeout: float = 0.0, start_param: str | None = None,
          stamp_reads: bool = False, fill_paths: bool = True) -> tuple[int, str, int]: ...


def finish_request() -> bool: ...


def request_start(value: str | None) -> float: ...
