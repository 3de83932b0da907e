"""The cost of fixproxy's Logon rewrite and signature, in process, against a bare RSA-PSS sign.

Three callables are timed with :mod:`timeit`, interleaved repeat by repeat so that a noisy
neighbour on the machine hits all three alike:

* ``bare_sign``: ``RSAPrivateKey.sign`` with PSS (MGF1-SHA-256, 32-byte salt) over the
  52|A|34|49|56 pre-hash string, the least any signer must do;
* ``rewrite_sign``: :func:`fixproxy.fix.logon.rewrite_logon` on an unsigned engine Logon with
  fixproxy's :class:`~fixproxy.signing.LogonSigner` (parse, checks, base64, re-encode);
* ``rewrite_only``: the same rewrite with a signer that returns a constant, which isolates what
  fixproxy adds around the signature.

The median over repeats of each per-call time is reported.
"""

from __future__ import annotations

import statistics
import time
import timeit
from collections.abc import Callable
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from bench import wire
from bench.middle import Account
from fixproxy.fix.codec import SendingTimeClock
from fixproxy.fix.logon import LogonPolicy, rewrite_logon
from fixproxy.signing import LogonSigner, load_private_key

PSS: Final = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
FAKE_SIGNATURE: Final = b"A" * 344
"""As long as a base64 RSA-2048 signature."""


def measure(account: Account, policy: LogonPolicy, repeats: int,
            number: int) -> dict[str, float | int]:
    """Median microseconds per call of each callable, and the ratio rewrite_sign / bare_sign."""
    key = load_private_key(account.private_key)
    signer = LogonSigner(key)
    sending_time = SendingTimeClock()()
    unsigned = wire.logon(account.api_key, sending_time, None)
    payload = b"\x01".join((sending_time, b"A", b"1", account.api_key.encode(),
                            wire.ENDPOINT.encode()))
    sha256 = hashes.SHA256()

    def bare_sign() -> None:
        key.sign(payload, PSS, sha256)

    def rewrite_sign() -> None:
        rewrite_logon(unsigned, policy, signer, now=time.time())

    def rewrite_only() -> None:
        rewrite_logon(unsigned, policy, lambda _: FAKE_SIGNATURE, now=time.time())

    cases: dict[str, Callable[[], None]] = {
        "bare_sign": bare_sign, "rewrite_sign": rewrite_sign, "rewrite_only": rewrite_only}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for function in cases.values():
        function()  # first-call costs (imports, caches) are not what is measured
    for _ in range(repeats):
        for name, function in cases.items():
            calls = number * 20 if name == "rewrite_only" else number
            times[name].append(timeit.timeit(function, number=calls) / calls * 1e6)
    result: dict[str, float | int] = {
        f"{name}_us": statistics.median(values) for name, values in times.items()}
    result["ratio"] = result["rewrite_sign_us"] / result["bare_sign_us"]
    result["repeats"] = repeats
    result["calls_per_repeat"] = number
    return result
