"""Sequence-number translation for an engine that keeps its numbers where Kalshi resets (pure).

Theory of operation
-------------------
Kalshi's non-retransmission endpoints (NR, DC, RFQ, MD; PT by fixproxy's profile) require
``141=Y`` on every Logon, which restarts both directions at 1. An engine configured to keep
its sequence numbers (QuickFIX ``ResetOnLogon=N`` with a FileStore) logs on with ``34=N > 1``
and expects the gateway's messages to continue from where its store left off. fixproxy forces
the reset on the gateway leg and renumbers on the engine leg, for the life of the connection:

* engine -> gateway: ``gateway_seq = engine_seq - out_offset`` where ``out_offset`` is the
  engine's Logon 34 minus 1 (so the Logon itself becomes 34=1);
* gateway -> engine: ``engine_seq = gateway_seq + in_offset`` where ``in_offset`` is the
  engine's expected next inbound number minus 1 (from its Logon's NextExpectedMsgSeqNum (789),
  else from the state persisted when its previous connection ended, else 0: it reset too).

Fields that refer to sequence numbers move with them. Which offset applies depends on whose
numbering the field names, not on the direction the message travels:

============  ==================  ==========================  ==========================
tag           names               engine -> gateway           gateway -> engine
============  ==================  ==========================  ==========================
34            the sender's own    - out_offset                + in_offset
36 NewSeqNo   the sender's own    - out_offset                + in_offset
45 RefSeqNum  the receiver's      - in_offset                 + out_offset
7, 16         the receiver's      - in_offset                 + out_offset (16=0: infinity)
789           the receiver's      - in_offset                 + out_offset
============  ==================  ==========================  ==========================

Translated messages are re-encoded (BodyLength and CheckSum recomputed); with both offsets 0
nothing is translated and messages pass byte for byte. A number that would fall below 1 is a
:class:`~fixproxy.errors.SessionError`: the engine asked about a message from before this
connection, which Kalshi cannot know.

One such question is expected, and answered rather than refused: after fixproxy was killed,
the number it kept for the engine may be ahead of what the engine received (see
:mod:`fixproxy.ops.liveseq`), so the engine asks for a resend of numbers from before this
connection. Kalshi's resetting endpoints have no retransmission, and those messages were the
previous connection's; :func:`stale_resend_gap` says which part of a ResendRequest is such,
and the relay answers it itself with a SequenceReset-GapFill up to this connection's first
message, which the engine then reads on from (missed reports are drop-copy recovery's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from fixproxy.errors import SessionError
from fixproxy.fix import tags
from fixproxy.fix.codec import FixMessage, header_value, parse_uint
from fixproxy.fix.logout import gap_fill
from fixproxy.session.explain import stale_resend_text

# Tags holding the sender's own sequence numbers, and those holding the receiver's.
_SENDER_SEQ_TAGS: Final = frozenset({tags.MSG_SEQ_NUM, tags.NEW_SEQ_NO})
_RECEIVER_SEQ_TAGS: Final = frozenset({tags.REF_SEQ_NUM, tags.BEGIN_SEQ_NO, tags.END_SEQ_NO,
                                       tags.NEXT_EXPECTED_MSG_SEQ_NUM})


@dataclass(frozen=True, slots=True)
class SequenceTranslator:
    """Renumbers one connection's messages between the engine's and the gateway's numbering."""

    out_offset: int
    """Engine outbound number minus gateway inbound number (engine Logon 34 - 1)."""
    in_offset: int
    """Engine inbound number minus gateway outbound number (engine's expected next - 1)."""

    @classmethod
    def for_logon(cls, engine_logon_seq: int, engine_next_expected: int) -> SequenceTranslator:
        """The translation for an engine whose Logon had ``34=engine_logon_seq`` and which
        expects the gateway's next message to carry ``engine_next_expected``."""
        if engine_logon_seq < 1 or engine_next_expected < 1:
            raise SessionError("sequence numbers start at 1")
        return cls(engine_logon_seq - 1, engine_next_expected - 1)

    @property
    def identity(self) -> bool:
        """True when no message needs to change."""
        return self.out_offset == 0 and self.in_offset == 0

    def to_gateway(self, raw: bytes) -> bytes:
        """Renumber a message from the engine for the gateway."""
        return self._translate(raw, own=-self.out_offset, other=-self.in_offset)

    def to_engine(self, raw: bytes) -> bytes:
        """Renumber a message from the gateway for the engine."""
        return self._translate(raw, own=self.in_offset, other=self.out_offset)

    def shifted_in(self, delta: int) -> SequenceTranslator:
        """The same translation with ``delta`` more messages in the engine's inbound stream
        than the gateway sent (reports fixproxy injected; negative: messages it held back)."""
        return SequenceTranslator(self.out_offset, self.in_offset + delta)

    def shifted_out(self, delta: int) -> SequenceTranslator:
        """The same translation with ``delta`` more messages in the engine's outbound stream
        than the gateway receives (messages of the engine that fixproxy answered itself)."""
        return SequenceTranslator(self.out_offset + delta, self.in_offset)

    def engine_seq_for_gateway(self, gateway_seq: int) -> int:
        """The number the engine sees for the gateway's message ``gateway_seq``."""
        return gateway_seq + self.in_offset

    def gateway_seq_for_engine(self, engine_seq: int) -> int:
        """The number the gateway sees for the engine's message ``engine_seq``."""
        return engine_seq - self.out_offset

    def _translate(self, raw: bytes, *, own: int, other: int) -> bytes:
        if own == 0 and other == 0:
            return raw
        message = FixMessage.parse(raw)
        changed = False
        fields = message.fields
        for index, (tag, value) in enumerate(fields):
            if tag in _SENDER_SEQ_TAGS:
                delta = own
            elif tag in _RECEIVER_SEQ_TAGS:
                delta = other
            else:
                continue
            if delta == 0 or (tag == tags.END_SEQ_NO and value == b"0"):
                continue
            fields[index] = (tag, b"%d" % _shift(tag, value, delta))
            changed = True
        return message.encode() if changed else raw


def _shift(tag: int, value: bytes, delta: int) -> int:
    number = parse_uint(value)
    if number is None or number < 1:
        raise SessionError(f"tag {tag} is not a sequence number: {value[:20]!r}")
    shifted = number + delta
    if shifted < 1:
        raise SessionError(
            f"tag {tag}={value.decode()} refers to a message from before this connection's "
            f"sequence reset; it cannot be translated")
    return shifted


def stale_resend_gap(raw: bytes, first_in: int) -> tuple[int, int] | None:
    """For the engine's ResendRequest ``raw``: (BeginSeqNo, ``first_in`` - 1) when it asks
    for numbers from before this connection, whose first message to the engine carried
    ``first_in``; None when it asks only for this connection's (renumbered and passed on).

    Raises:
        SessionError: BeginSeqNo (7) is missing or not a sequence number.
    """
    begin = parse_uint(FixMessage.parse(raw).get(tags.BEGIN_SEQ_NO))
    if begin is None or begin < 1:
        raise SessionError("ResendRequest without a valid BeginSeqNo (7)")
    if begin >= first_in:
        return None
    return begin, first_in - 1


@dataclass(frozen=True, slots=True)
class StaleResendAnswer:
    """What the relay does with a ResendRequest for numbers from before this connection."""

    fill: bytes
    """The gap fill to write to the engine, instead of passing the request on."""
    translator: SequenceTranslator
    """The translation from now on: the gateway never sees the request's number."""
    warning: str
    """For the operator's log."""


def answer_stale_resend(raw: bytes, translator: SequenceTranslator | None, first_in: int, *,
                        now: float, ids: tuple[bytes, bytes],
                        endpoint: bytes) -> StaleResendAnswer | None:
    """The answer to the engine's ResendRequest ``raw`` when it asks for numbers from before
    this connection (whose first message to the engine was ``first_in``): a gap fill from
    its BeginSeqNo to ``first_in``, from ``ids`` = (sender, target); None otherwise (or
    when nothing is renumbered): the request is passed on.

    Raises:
        SessionError: BeginSeqNo (7) is missing or not a sequence number.
    """
    if translator is None:
        return None
    gap = stale_resend_gap(raw, first_in)
    if gap is None:
        return None
    fill = gap_fill(sender=ids[0], target=ids[1], seq=gap[0], new_seq=first_in, now=now)
    return StaleResendAnswer(fill, translator.shifted_out(1),
                             stale_resend_text(*gap, endpoint.decode(), first_in))


def read_seq_num(raw: bytes, start: int = 0, end: int | None = None) -> int | None:
    """MsgSeqNum (34) of a framed message (``raw[start:end]`` of a larger buffer), found
    without parsing the other fields.

    The header puts 34 early, so this is a short ``find`` rather than a parse.
    """
    return parse_uint(header_value(raw, tags.MSG_SEQ_NUM, start, end))
