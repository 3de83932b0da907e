"""The gateway-to-engine count of a renumbered session, current at any instant (``<session>.live``).

Theory of operation
-------------------
A renumbered session (:mod:`fixproxy.session.sequence`) must know, at its next Logon, which
MsgSeqNum the engine expects from the gateway. :mod:`fixproxy.ops.seqstore` writes that number
when a connection ends; a fixproxy killed mid-session never gets there, and the next connection
would start from the number saved at the end of the one before. QuickFIX then reads a 34 lower
than it expects, logs "MsgSeqNum too low" and logs out, on every later Logon too: a crash
becomes a permanent sequence error.

So while a renumbered connection lives, its count is kept in a small memory-mapped file: the
relay stores the number the engine will expect after a chunk *before* it hands the chunk to
the socket, with one ``struct.pack_into`` into the mapping (no system call). The mapping is a
shared file mapping, so the stored bytes are in the page cache the moment they are written and
stay there when the process dies, however it dies; the kernel writes them back later. (A crash
of the machine itself may lose the last stores: the clean end still writes
``<session>.json`` with fsync, and the live file is not synced per message.) Stored before the
send, the number is never below what the engine received; it may be above it, by what was
stored but not yet delivered when the process died. The engine then sees a number higher than
it expects and asks for a resend, which fixproxy answers with a gap fill
(:func:`fixproxy.session.sequence.stale_resend_gap`): "too high" can be recovered, "too low"
cannot.

A kill can land in the middle of a store, so a store never overwrites the record a reader
would fall back on: the file holds two slots, written alternately, each ``(generation,
number, check)``, where the check mixes generation and number. A reader takes the valid slot
with the highest generation; a torn slot fails its check and the other one, one store older,
is used. A header names the format and the session's API key and endpoint (a digest), so a
record left by another key is never applied.

The alternatives rejected: a write and fsync per message (a system call or a disk flush in
the relay's hot path for every report), and writing the JSON file more often (still stale by
up to an interval, and too low is the one error an engine cannot recover from).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

MAGIC: Final = b"fixproxy-live-1\n"
"""The header's first 16 bytes: the format and its version."""
_DIGEST_SIZE: Final = 16
_HEADER_SIZE: Final = len(MAGIC) + _DIGEST_SIZE
_SLOT: Final = struct.Struct("<QQQ")
"""generation, the number the engine expects next, check."""
_SLOT_OFFSETS: Final = (_HEADER_SIZE, _HEADER_SIZE + _SLOT.size)
SIZE: Final = _HEADER_SIZE + 2 * _SLOT.size
FILE_MODE: Final = 0o600
_MASK: Final = (1 << 64) - 1
_SALT: Final = 0x6669_7870_726F_7879  # "fixproxy"


def _check(generation: int, number: int) -> int:
    """A value a torn slot fails: odd multipliers mix both words into every bit."""
    return ((generation * 0x9E3779B97F4A7C15) ^ (number * 0xC2B2AE3D27D4EB4F) ^ _SALT) & _MASK


def identity_digest(api_key: str, endpoint: str) -> bytes:
    """The header's digest of whose numbering the file holds."""
    return hashlib.blake2b(f"{api_key}\n{endpoint}".encode(), digest_size=_DIGEST_SIZE).digest()


@dataclass(frozen=True, slots=True)
class LiveRecord:
    """The newest valid slot of a live file."""

    digest: bytes
    generation: int
    engine_next_in: int


def parse(data: bytes) -> LiveRecord | None:
    """The newest valid slot of a live file's bytes; None if it has none (or is not one)."""
    if len(data) < SIZE or not data.startswith(MAGIC):
        return None
    best: tuple[int, int] | None = None
    for offset in _SLOT_OFFSETS:
        generation, number, check = _SLOT.unpack_from(data, offset)
        if generation < 1 or number < 1 or check != _check(generation, number):
            continue
        if best is None or generation > best[0]:
            best = (generation, number)
    if best is None:
        return None
    return LiveRecord(bytes(data[len(MAGIC):_HEADER_SIZE]), *best)


def read(path: Path) -> LiveRecord | None:
    """:func:`parse` of the file at ``path``; None if it does not exist.

    Raises:
        OSError: it exists but cannot be read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as source:
        return parse(source.read(SIZE))


def load(path: Path, api_key: str, endpoint: str) -> int | None:
    """The number the engine of ``api_key`` on ``endpoint`` expects next, as last stored;
    None without a valid record for them.

    Raises:
        OSError: the file exists but cannot be read.
    """
    record = read(path)
    if record is None or record.digest != identity_digest(api_key, endpoint):
        return None
    return record.engine_next_in


class LiveSequences:
    """One session's live file, mapped for stores from the relay's thread."""

    __slots__ = ("_generation", "_last", "_map", "path")

    def __init__(self, path: Path, mapping: mmap.mmap, generation: int) -> None:
        """Use :meth:`open`."""
        self.path = path
        self._map = mapping
        self._generation = generation
        self._last = 0

    @classmethod
    def open(cls, path: Path, api_key: str, endpoint: str) -> LiveSequences:
        """Map ``path`` (created 0600 if missing; its directory must exist and have been
        checked), keeping its record if it is this key's and endpoint's.

        Raises:
            OSError: it cannot be created, sized or mapped.
        """
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # O_CREAT's mode applies to a new file, through umask
            current = os.pread(fd, SIZE, 0)
            digest = identity_digest(api_key, endpoint)
            record = parse(current)
            if record is None or record.digest != digest:
                # Another key's record, or none at all: start afresh, header first.
                os.ftruncate(fd, 0)
                os.ftruncate(fd, SIZE)
                os.pwrite(fd, MAGIC + digest, 0)
                record = None
            mapping = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)  # the mapping holds its own reference to the file
        return cls(path, mapping, 0 if record is None else record.generation)

    def store(self, engine_next_in: int) -> None:
        """Record the number the engine expects next; call before the bytes it counts are
        written. A plain store into the mapping, no system call."""
        if engine_next_in == self._last:
            return
        self._last = engine_next_in
        generation = self._generation = self._generation + 1
        _SLOT.pack_into(self._map, _SLOT_OFFSETS[generation & 1], generation, engine_next_in,
                        _check(generation, engine_next_in))

    def close(self) -> None:
        """Unmap; the stored record stays in the file."""
        if not self._map.closed:
            self._map.close()
