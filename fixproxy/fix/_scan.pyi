"""Types of the optional C frame scanner (fixproxy/fix/_scan.c)."""

def scan(buf: bytes | bytearray, pos: int, max_frame_size: int, max_digits: int, /
         ) -> tuple[int, int, int] | None: ...
