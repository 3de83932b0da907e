"""The descriptor reserve and the recognition of a process out of descriptors."""

from __future__ import annotations

import errno
import os

from fixproxy.net.listen import DescriptorReserve, open_file_limit, out_of_descriptors


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_reserve_holds_one_descriptor_and_gives_it_up() -> None:
    before = _fds()
    reserve = DescriptorReserve()
    assert reserve.held and _fds() == before + 1
    assert reserve.release() and not reserve.held and _fds() == before
    assert not reserve.release()
    assert reserve.refill() and reserve.refill() and _fds() == before + 1
    reserve.close()
    assert _fds() == before


def test_emfile_is_found_wherever_trio_put_it() -> None:
    emfile = OSError(errno.EMFILE, os.strerror(errno.EMFILE))
    assert out_of_descriptors(emfile)
    assert out_of_descriptors(OSError(errno.ENFILE, "table full"))
    wrapped = OSError("all attempts to connect to 127.0.0.1:1 failed")
    wrapped.__cause__ = ExceptionGroup("attempts", [ConnectionRefusedError(), emfile])
    assert out_of_descriptors(wrapped)
    refused = OSError("all attempts failed")
    refused.__cause__ = ExceptionGroup("attempts", [ConnectionRefusedError()])
    assert not out_of_descriptors(refused)


def test_the_open_file_limit_is_the_soft_one() -> None:
    limit = open_file_limit()
    assert limit is None or limit >= _fds()
