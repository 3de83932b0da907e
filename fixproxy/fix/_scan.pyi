"""Types of the optional C frame scanner (fixproxy/fix/_scan.c)."""

def scan(buf: bytes | bytearray, pos: int, max_frame_size: int, max_digits: int, /
         ) -> tuple[int, int, int] | None: ...

def scan_count(buf: bytes | bytearray, pos: int, max_frame_size: int, max_digits: int,
               counts: dict[bytes, int], known: frozenset[bytes], other: bytes,
               stop: frozenset[bytes], /) -> tuple[int, int, int, int]: ...
