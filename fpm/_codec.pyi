"""Type stub for the compiled FastCGI codec (fpm/_codec.pyx)."""

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

class PeerError(Exception): ...
class ProtocolError(PeerError, ValueError): ...
class PeerClosed(PeerError, ConnectionError): ...
class RequestAborted(PeerError): ...
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
def request_status(data: bytes) -> tuple[int, int]: ...
