"""The checksum core: digests equal to hashlib's whatever the read size, progress, the rate
limit (measured against an injected clock, plus one short real run), the page cache left as
it was found, and files that must not be read (links).

The rate-limit tests never sleep: the limiter's clock and sleep are a fake whose time only
moves when the limiter sleeps or when a 'read' is said to take time.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from novakeeper.integrity import checksum
from novakeeper.integrity.checksum import (
    ALGORITHMS,
    CHUNK,
    MIB,
    Interrupted,
    RateLimiter,
    check_algorithm,
    hash_fd,
    hash_file,
    resident_pages,
)


class FakeClock:
    """time.monotonic and time.sleep for the limiter: sleeping moves the clock, nothing
    else does unless a test says a read took time."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def sparse(path: Path, size: int) -> Path:
    """A file of `size` zero bytes that takes no disk: reads of it cost only the copy."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


# -- digests ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
def test_every_algorithm_at_once_equals_hashlib(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = write(tmp_path / "f", data)
    got = hash_file(str(path), ALGORITHMS)
    assert got.bytes_read == size
    assert got.digests == {a: hashlib.new(a, data).hexdigest() for a in ALGORITHMS}


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=20000), chunk=st.integers(min_value=1, max_value=5000),
       algo=st.sampled_from(ALGORITHMS))
def test_any_read_size_gives_the_same_digest(tmp_path_factory: pytest.TempPathFactory,
                                              data: bytes, chunk: int, algo: str) -> None:
    path = write(tmp_path_factory.mktemp("h") / "f", data)
    got = hash_file(str(path), (algo,), chunk=chunk)
    assert got.digests[algo] == hashlib.new(algo, data).hexdigest()
    assert got.bytes_read == len(data)


def test_unknown_algorithm_is_refused() -> None:
    assert check_algorithm(" SHA512 ") == "sha512"
    with pytest.raises(ValueError, match="unknown checksum algorithm 'crc32'"):
        check_algorithm("crc32")


def test_progress_reports_bytes_done_up_to_the_size(tmp_path: Path) -> None:
    path = sparse(tmp_path / "f", 5 * CHUNK + 100)
    seen: list[int] = []
    hash_file(str(path), progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 5 * CHUNK + 100
    assert len(seen) == 6


def test_a_symbolic_link_is_never_followed(tmp_path: Path) -> None:
    target = write(tmp_path / "target", b"x")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(OSError) as info:
        hash_file(str(tmp_path / "link"))
    assert info.value.errno == 40  # ELOOP: O_NOFOLLOW


def test_should_stop_interrupts_between_reads(tmp_path: Path) -> None:
    path = sparse(tmp_path / "f", 4 * CHUNK)
    calls = iter([False, False, True])
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(Interrupted):
            hash_fd(fd, should_stop=lambda: next(calls))
    finally:
        os.close(fd)


def test_a_read_error_carries_its_offset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    path = sparse(tmp_path / "f", 4 * CHUNK)
    real = os.preadv

    def failing(fd: int, buffers: list[memoryview], offset: int, *rest: int) -> int:
        if offset >= 2 * CHUNK:
            raise OSError(5, "Input/output error")
        return real(fd, buffers, offset, *rest)

    monkeypatch.setattr(checksum.os, "preadv", failing)
    with pytest.raises(OSError) as info:
        hash_file(str(path))
    assert info.value.errno == 5
    assert info.value.offset == 2 * CHUNK  # type: ignore[attr-defined]


# -- rate limit ------------------------------------------------------------------------


@pytest.mark.parametrize(("mib", "limit"), [(64, 16.0), (40, 3.5), (10, 100.0), (3, 0.25)])
def test_the_rate_limit_holds_within_20_percent(tmp_path: Path, mib: int, limit: float
                                                ) -> None:
    """Measured on the fake clock over the whole read, reads themselves free."""
    path = sparse(tmp_path / "f", mib * MIB)
    fake = FakeClock()
    limiter = RateLimiter.mib_per_second(limit, clock=fake.clock, sleep=fake.sleep)
    assert limiter is not None
    start = fake.now
    got = hash_file(str(path), limiter=limiter)
    rate = got.bytes_read / (fake.now - start) / MIB
    assert 0.8 * limit <= rate <= 1.2 * limit, rate
    assert limiter.slept == pytest.approx(fake.now - start)


def test_a_disk_slower_than_the_limit_is_not_slowed_further(tmp_path: Path) -> None:
    """Each read 'takes' 0.1 s (10 MiB/s) under a 50 MiB/s limit: no sleeping at all."""
    path = sparse(tmp_path / "f", 20 * MIB)
    fake = FakeClock()
    limiter = RateLimiter(50 * MIB, clock=fake.clock, sleep=fake.sleep)

    def slow_disk(done: int) -> None:
        fake.now += 0.1

    # hash_fd calls progress after the limiter: move the clock before the next consume
    hash_file(str(path), limiter=limiter, progress=slow_disk)
    assert limiter.slept == pytest.approx(CHUNK / (50 * MIB))  # only the first read's debt
    assert fake.sleeps == [pytest.approx(CHUNK / (50 * MIB))]


def test_idle_time_does_not_buy_a_burst(tmp_path: Path) -> None:
    """After a long pause the bucket holds at most `burst` (a quarter second of rate)."""
    fake = FakeClock()
    limiter = RateLimiter(8 * MIB, clock=fake.clock, sleep=fake.sleep)
    fake.now += 3600  # an hour of nothing
    start = fake.now
    for _ in range(32):  # 32 MiB
        limiter.consume(MIB)
    elapsed = fake.now - start
    assert elapsed == pytest.approx((32 * MIB - limiter.burst) / (8 * MIB))
    assert limiter.burst == 2 * MIB


def test_no_limit_means_no_limiter() -> None:
    assert RateLimiter.mib_per_second(0) is None
    assert RateLimiter.mib_per_second(None) is None
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_a_real_short_run_holds_the_limit(tmp_path: Path) -> None:
    """One real measurement (about a quarter second): the limiter's own sleeps, the real
    clock; oversleeping is paid back by the next refill, so the rate still holds."""
    path = sparse(tmp_path / "f", 12 * MIB)
    limiter = RateLimiter.mib_per_second(48)
    start = time.monotonic()
    got = hash_file(str(path), limiter=limiter)
    rate = got.bytes_read / (time.monotonic() - start) / MIB
    assert 0.8 * 48 <= rate <= 1.2 * 48, rate


# -- page cache ------------------------------------------------------------------------


def _cold(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return fd


def _resident(fd: int) -> int:
    pages = resident_pages(fd, os.fstat(fd).st_size)
    assert pages is not None
    return sum(pages)


def test_pages_read_are_dropped_pages_already_cached_are_kept(tmp_path: Path) -> None:
    size = 8 * MIB
    path = write(tmp_path / "f", os.urandom(size))
    fd = _cold(path)
    try:
        if resident_pages(fd, size) is None:
            pytest.skip("mincore cannot report on this file")
        if _resident(fd):
            pytest.skip("this file system keeps its pages (tmpfs?): nothing to drop")
        half = size // 2
        other = os.open(path, os.O_RDONLY)  # an instance reading the first half through
        try:  # the page cache, without readahead so exactly that half is cached
            os.posix_fadvise(other, 0, 0, os.POSIX_FADV_RANDOM)
            os.pread(other, half, 0)
        finally:
            os.close(other)
        before = resident_pages(fd, size)
        assert before is not None
        warm_pages = sum(before)
        assert warm_pages >= half // os.sysconf("SC_PAGE_SIZE")
        got = hash_fd(fd)
        after = resident_pages(fd, size)
        assert after is not None
        # what was resident stays resident, everything else we read is given back
        assert all(a for a, b in zip(after, before, strict=True) if b)
        assert sum(after) == warm_pages
        assert got.dropped == size - warm_pages * os.sysconf("SC_PAGE_SIZE")
        assert got.digests["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    finally:
        os.close(fd)


def test_a_warm_file_stays_warm(tmp_path: Path) -> None:
    size = 4 * MIB
    path = write(tmp_path / "f", os.urandom(size))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, size, 0)
        if resident_pages(fd, size) is None:
            pytest.skip("mincore cannot report on this file")
        pages = _resident(fd)
        got = hash_fd(fd)
        assert got.dropped == 0
        assert _resident(fd) == pages
    finally:
        os.close(fd)


def test_without_residency_every_page_read_is_dropped(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """When the kernel cannot say what was cached, drop all we read (dd iflag=nocache)."""
    size = 2 * MIB
    path = write(tmp_path / "f", os.urandom(size))
    monkeypatch.setattr(checksum, "resident_pages", lambda fd, size: None)
    assert hash_file(str(path)).dropped == size
    assert hash_file(str(path), drop_cache=False).dropped == 0
