"""Streaming checksums of base files: fast, gentle with the disk, kind to the page cache.

A base is read once, in large sequential reads into one reused buffer, and every digest
asked for (ours, plus Glance's algorithm when it is compared) is fed from that same buffer:
hashlib hands the buffer to OpenSSL without a copy and releases the GIL while it hashes.
OpenSSL uses the CPU's SHA extensions where it has them, so on most servers this runs at
the speed of the disk, not of the hash (see docs/benchmarks.md).

Two things keep verification from hurting the instances running on the node:

* a token-bucket rate limit over the bytes read (`rate`, in MiB/s): the long-run read rate
  stays at the limit, and a file system slower than the limit is never made up for later
  with a burst (the bucket holds at most a quarter of a second of reading);
* the page cache: the file is read with POSIX_FADV_SEQUENTIAL, and the pages this read
  brought in are dropped (POSIX_FADV_DONTNEED) once hashed. Pages that were already in
  memory before we started (an instance reading the base through the host's page cache)
  are kept: which ones they are is asked of the kernel first, with mincore(2) on a
  mapping of the file that is never touched. When the kernel cannot tell (not Linux, or
  mincore refuses to report on a file we neither own nor may write), every page we read
  is dropped, as a plain `dd iflag=nocache` would.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import mmap
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

ALGORITHMS = ("sha256", "sha512", "md5")
"""sha256 is ours by default; md5 is Glance's `checksum`, sha512 its usual os_hash_algo."""
DEFAULT_ALGORITHM = "sha256"

CHUNK = 1 << 20
"""Bytes per read. 1 MiB stays in the CPU's L2 cache between the read and the hash, which
measured faster than 4-16 MiB buffers (bench/verify.py); it is also the rate limiter's
step and the grain of page-cache dropping."""
DROP_EVERY = 16 << 20
"""Drop the pages we read from the page cache once this many bytes are hashed."""
MIB = 1 << 20
"""A 'MB' of --rate-limit and verify_rate_limit: binary, as everywhere in novakeeper."""

Progress = Callable[[int], None]
"""Called after each read with the bytes of the file done so far."""


class Interrupted(Exception):
    """`should_stop` said stop (the service's SIGTERM): nothing is known about the file."""


def check_algorithm(name: str) -> str:
    """The algorithm name normalised, or ValueError naming the ones we know."""
    lowered = name.strip().lower()
    if lowered not in ALGORITHMS:
        raise ValueError(f"unknown checksum algorithm {name!r} (known: {', '.join(ALGORITHMS)})")
    return lowered


class RateLimiter:
    """A token bucket over bytes read. `consume(n)` after each read sleeps off any debt.

    The bucket starts empty and holds at most `burst` bytes, so the read rate measured over
    any run longer than a few reads stays within a read of `rate`; the clock and the sleep
    are injectable so tests measure it without sleeping.
    """

    def __init__(self, bytes_per_second: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if bytes_per_second <= 0:
            raise ValueError("a rate limit must be above 0 bytes/s")
        self.rate = float(bytes_per_second)
        self.burst = float(burst) if burst is not None else max(self.rate / 4, CHUNK)
        self._clock = clock
        self._sleep = sleep
        self._tokens = 0.0
        self._last = clock()
        self.slept = 0.0
        """Seconds spent waiting, for the report."""

    @classmethod
    def mib_per_second(cls, rate: float | None, **kwargs: Any) -> RateLimiter | None:
        """A limiter for `rate` MiB/s; None for no limit (None or 0)."""
        if not rate:
            return None
        return cls(rate * MIB, **kwargs)

    def consume(self, n: int) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        if self._tokens < 0:
            wait = -self._tokens / self.rate
            self._sleep(wait)
            self.slept += wait
            # the debt is paid by the time that passes: the next call's refill counts it


@dataclass(frozen=True, slots=True)
class Digest:
    """What one read of a file gave."""

    digests: dict[str, str]
    """algorithm -> lowercase hex."""
    bytes_read: int
    dropped: int = 0
    """Bytes of page cache given back after hashing."""


# -- page cache residency --------------------------------------------------------------

_PAGE = mmap.PAGESIZE
_WINDOW = 1 << 32  # map and ask about at most 4 GiB at a time
_libc: Any = None


def _load_libc() -> Any:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        lib = ctypes.CDLL(name, use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                             ctypes.c_int, ctypes.c_long]
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t,
                                ctypes.POINTER(ctypes.c_ubyte)]
        _libc = lib
    return _libc


def resident_pages(fd: int, size: int) -> bytearray | None:
    """One byte per page of the file, 1 where the page is in the page cache now; None when
    the kernel cannot say. Maps the file (PROT_READ, never touched: nothing is read)."""
    if size <= 0:
        return bytearray()
    try:
        lib = _load_libc()
    except OSError:
        return None
    if not _mincore_reports(fd):
        return None
    out = bytearray()
    failed = ctypes.c_void_p(-1).value
    for start in range(0, size, _WINDOW):
        length = min(_WINDOW, size - start)
        pages = (length + _PAGE - 1) // _PAGE
        addr = lib.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
        if addr is None or addr == failed:
            return None
        try:
            vec = (ctypes.c_ubyte * pages)()
            if lib.mincore(addr, length, vec) != 0:
                return None
            out += bytes(vec)
        finally:
            lib.munmap(addr, length)
    return bytearray(out.translate(_LOW_BIT))  # only bit 0 is defined


_LOW_BIT = bytes(i & 1 for i in range(256))


def _mincore_reports(fd: int) -> bool:
    """Since Linux 5.0 mincore reports the page cache of a shared file only to its owner,
    to whoever may write it, or to CAP_SYS_ADMIN; to anyone else every page looks absent
    (which would make us drop pages an instance is using)."""
    st = os.fstat(fd)
    if os.geteuid() in (0, st.st_uid):
        return True
    return os.access(f"/proc/self/fd/{fd}", os.W_OK)


def _drop(fd: int, start: int, end: int, resident: bytearray | None) -> int:
    """Drop the pages of [start, end) that were not in memory before we read them."""
    if end <= start:
        return 0
    if resident is None:
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)
        return end - start
    dropped = 0
    last = (end + _PAGE - 1) // _PAGE
    page = start // _PAGE
    while page < last:  # runs of pages that were not resident, found at C speed
        run = resident.find(0, page, last) if page < len(resident) else page
        if run < 0:
            break
        stop = resident.find(1, run, last) if run < len(resident) else -1
        page = last if stop < 0 else stop
        lo, hi = max(run * _PAGE, start), min(page * _PAGE, end)
        os.posix_fadvise(fd, lo, hi - lo, os.POSIX_FADV_DONTNEED)
        dropped += hi - lo
    return dropped


# -- hashing ---------------------------------------------------------------------------


def hash_fd(fd: int, algorithms: Sequence[str] = (DEFAULT_ALGORITHM,),
            limiter: RateLimiter | None = None, progress: Progress | None = None,
            should_stop: Callable[[], bool] | None = None, chunk: int = CHUNK,
            drop_cache: bool = True) -> Digest:
    """Hash an open file from offset 0 to its end with every algorithm in `algorithms`.

    OSError from a read (EIO on a bad sector) propagates with `.offset` set to where it
    happened, so the caller can say where the file is unreadable.
    """
    hashers = [hashlib.new(check_algorithm(a)) for a in dict.fromkeys(algorithms)]
    size = os.fstat(fd).st_size
    resident: bytearray | None = None
    if drop_cache:
        with contextlib.suppress(OSError):  # advice only
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        resident = resident_pages(fd, size)
    buf = bytearray(chunk)
    view = memoryview(buf)
    done = 0
    dropped = 0
    drop_from = 0
    try:
        while True:
            if should_stop is not None and should_stop():
                raise Interrupted(f"stopped after {done} bytes")
            try:
                n = os.preadv(fd, [view], done)
            except InterruptedError:
                continue
            except OSError as exc:
                exc.offset = done  # type: ignore[attr-defined]
                raise
            if n == 0:
                break
            data = view[:n] if n < chunk else view
            for h in hashers:
                h.update(data)
            done += n
            if drop_cache and done - drop_from >= DROP_EVERY:
                dropped += _drop_quietly(fd, drop_from, done, resident)
                drop_from = done
            if limiter is not None:
                limiter.consume(n)
            if progress is not None:
                progress(done)
    finally:
        view.release()
        if drop_cache:
            dropped += _drop_quietly(fd, drop_from, done, resident)
    return Digest({h.name: h.hexdigest() for h in hashers}, done, dropped)


def _drop_quietly(fd: int, start: int, end: int, resident: bytearray | None) -> int:
    try:
        return _drop(fd, start, end, resident)
    except OSError:  # advice only: a file system that does not take it changes nothing
        return 0


def open_for_reading(name: str, dir_fd: int | None = None) -> int:
    """Open a file to hash it: never through a symbolic link, never blocking on a FIFO,
    and without updating its access time where we may (O_NOATIME: the owner or root), so
    reading a base does not make it look used to tools that look at atime."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        return os.open(name, flags | getattr(os, "O_NOATIME", 0), dir_fd=dir_fd)
    except PermissionError as exc:
        if exc.errno != errno.EPERM or not getattr(os, "O_NOATIME", 0):
            raise
        return os.open(name, flags, dir_fd=dir_fd)  # not the owner: O_NOATIME refused


def hash_file(path: str, algorithms: Sequence[str] = (DEFAULT_ALGORITHM,),
              limiter: RateLimiter | None = None, progress: Progress | None = None,
              chunk: int = CHUNK, drop_cache: bool = True) -> Digest:
    """hash_fd on a path (the benchmark's and the tests' entry point)."""
    fd = open_for_reading(path)
    try:
        return hash_fd(fd, algorithms, limiter, progress, chunk=chunk, drop_cache=drop_cache)
    finally:
        os.close(fd)
