"""Write the seed inputs of fuzz_framer_logon into fuzz/corpus/ (deterministic; rerun freely).

Each seed is a realistic engine stream (or a realistic mistake) wrapped in the input layout of
:mod:`fuzz_framer_logon`; the fuzzer mutates from there, so seeds that reach deep (a Logon the
rewrite accepts, orders after it, numbers the renumbering touches) are worth more than volume.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from fuzz_framer_logon import API_KEY, make_input

from fixproxy.fix.codec import FieldValue, encode

CORPUS: Final = Path(__file__).resolve().parent / "corpus"
SENDING_TIME: Final = b"20230809-05:28:18.035"


def message(msg_type: str, seq: int, *fields: tuple[int, FieldValue],
            target: str = "KalshiNR") -> bytes:
    """An engine message with the standard header."""
    return encode([(35, msg_type), (49, API_KEY), (56, target), (34, seq), (52, SENDING_TIME),
                   *fields])


def logon(seq: int = 1, *fields: tuple[int, FieldValue], target: str = "KalshiNR") -> bytes:
    return message("A", seq, (98, 0), (108, 30), *fields, target=target)


def order(seq: int, cl_ord_id: str, text: str = "") -> bytes:
    extra: list[tuple[int, FieldValue]] = [(58, text)] if text else []
    return message("D", seq, (11, cl_ord_id), (55, "KXBTC-24DEC31-B100000"), (54, 1),
                   (38, 10), (40, 2), (44, "0.55"), (59, 1), *extra)


def stream(*messages: bytes) -> bytes:
    return b"".join(messages)


def seeds() -> Iterable[tuple[str, bytes]]:
    """(file name, input) of every seed."""
    valid_logon = logon(1, (141, "Y"))
    yield "logon-valid", make_input(valid_logon)
    yield "logon-then-orders", make_input(
        stream(valid_logon, order(2, "o-1"), order(3, "o-2"), message("0", 4),
               message("1", 5, (112, "probe")), message("5", 6, (58, "bye"))),
        shape=2, param=17)
    yield "logon-truncated", make_input(valid_logon[:40])
    yield "order-truncated-after-logon", make_input(
        stream(valid_logon, order(2, "o-1")[:-5]), shape=3, param=5)
    yield "logon-engine-signature-and-header", make_input(
        logon(1, (95, 5), (96, b"ab\x01cd"), (115, "ONB"), (1128, 9), (58, "hello"),
              (21005, "N"), (141, "N")),
        policy=1, repair=True, shape=4, param=200)
    yield "logon-resend-endpoint-kept-numbers", make_input(
        stream(logon(57, (141, "N"), (789, 12), target="KalshiRT"),
               message("2", 58, (7, 10), (16, 0), target="KalshiRT")),
        policy=3, shape=1)
    yield "logon-translated-then-resend-and-reject", make_input(
        stream(logon(7, (789, 9)), order(8, "o-8"), message("2", 9, (7, 8), (16, 9)),
               message("4", 10, (123, "Y"), (36, 12)),
               message("3", 11, (45, 10), (372, "D"), (373, 5))),
        policy=2, repair=True, shape=5, param=33)
    yield "first-message-not-a-logon", make_input(order(1, "o-1"))
    yield "logon-bad-fields", make_input(
        logon(0, (108, 3), (141, "X"), (52, "yesterday"), target="KalshiRT"), policy=3)
    yield "oversize-frame-small-limit", make_input(
        stream(valid_logon, order(2, "o-big", "x" * 400)), small_limit=True, shape=6, param=90)
    yield "http-request", make_input(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    yield "tls-client-hello", make_input(bytes.fromhex("16030102000100 01fc0303".replace(" ", "")))
    # Long enough that libFuzzer's guessed -max_len lets numbers grow past 4300 digits.
    yield "logon-then-long-text", make_input(
        stream(valid_logon, order(2, "o-long", "t" * 5000)), repair=True)


def main() -> None:
    """Write every seed, replacing older versions of the same name."""
    CORPUS.mkdir(exist_ok=True)
    for name, data in seeds():
        (CORPUS / name).write_bytes(data)
    sys.stdout.write(f"wrote {len(list(seeds()))} seeds to {CORPUS}\n")


if __name__ == "__main__":
    main()
