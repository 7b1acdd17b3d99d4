"""The search through libc's memmem finds exactly what bytes.find (and the trie regex for
many ids) finds: same positions, same matched bytes, matches at the edges of the searched
range and of the buffer, overlapping matches, needles longer than the text."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from novakeeper.logs import scan, sources

REQS = [f"req-{i:08x}-1111-4111-8111-111111111111".encode() for i in range(8)]


@pytest.fixture
def memmem() -> None:
    if not scan.load_memmem():
        pytest.skip("no memmem in this libc")


def text(seed: int = 7, size: int = 600_000) -> bytearray:
    rnd = random.Random(seed)
    parts: list[bytes] = []
    while sum(map(len, parts)) < size:
        parts.append(rnd.choice([b"periodic task ran ", b"aaaa", b"req-0000000",
                                 rnd.choice(REQS), b"\n", b"instance abc"]))
    return bytearray(b"".join(parts))


def positions(buf: bytearray, needles: scan.Needles, hi: int, limit: int,
              monkeypatch: pytest.MonkeyPatch, fast: bool) -> list[tuple[int, bytes]]:
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(scan, "_MEMMEM", False)
        m.setattr(scan, "MEMMEM_MIN", 0)
        return scan._positions(buf, needles, hi, limit)


@pytest.mark.usefixtures("memmem")
@pytest.mark.parametrize("count", [1, 2, 5, 6])
def test_memmem_finds_what_find_finds(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    buf = text()
    needles = scan.Needles(tuple(REQS[:count]))
    for hi, limit in ((len(buf), len(buf)), (len(buf) - 5, len(buf) - 30), (4000, 1)):
        fast = positions(buf, needles, hi, limit, monkeypatch, fast=True)
        slow = positions(buf, needles, hi, limit, monkeypatch, fast=False)
        assert fast == slow
    assert len(positions(buf, needles, len(buf), len(buf), monkeypatch, True)) > 10


@pytest.mark.usefixtures("memmem")
def test_memmem_edges_and_overlaps(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = bytearray(b"aaaa xx aaaa")
    for literal in (b"aa", b"aaaa", b"a" * 20, b"xx", b"zz"):
        needles = scan.Needles((literal,))
        for hi in range(len(buf) + 1):
            for limit in (0, 1, hi // 2, hi):
                assert positions(buf, needles, hi, limit, monkeypatch, True) == positions(
                    buf, needles, hi, limit, monkeypatch, False), (literal, hi, limit)


@pytest.mark.usefixtures("memmem")
def test_a_scan_with_memmem_matches_one_without(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [f"2026-11-20 10:00:{i % 60:02d}.000 42 INFO nova.x [None "
             f"{REQS[i % 8].decode()} u p - d d] line {i}" for i in range(20_000)]
    path = tmp_path / "nova-api.log"
    path.write_text("\n".join(lines) + "\n")
    files = sources.discover([str(path)]).files
    monkeypatch.setattr(scan, "CHUNK", 64 << 10)  # many chunks, matches cut at their ends

    def run(fast: bool) -> list[tuple[int, bytes, frozenset[bytes]]]:
        with monkeypatch.context() as m:
            m.setattr(scan, "_MEMMEM", scan._MEMMEM if fast else False)
            m.setattr(scan, "MEMMEM_MIN", 1024)
            with scan.Scanner(files, jobs=1) as sc:
                found = sc.run(scan.Needles((REQS[1], REQS[6], b"line 1999")))
        return [(h.offset, h.data, frozenset(h.matched)) for _, h in found.hits]

    fast = run(True)
    assert len(fast) > 2 * 2500 and fast == run(False)
