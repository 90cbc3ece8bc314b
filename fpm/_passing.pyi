"""Type stub for connections passed between a worker and the master (fpm/_passing.pyx)."""

TICKET_LATE: int
TICKET_KEPT: int
TICKET_SHARE: int
TICKET_DUPS: int

def pass_conn(sock: int, fd: int, head_due_us: int, arrived_us: int, data: bytes,
              flags: int = 0) -> bool: ...
def take_conn(sock: int) -> tuple[int, int, int, int, bytes] | None: ...
