"""The search engine: chunk boundaries, segments and workers, gzip (streamed, several
members, truncated, corrupt), bad input (binary garbage, a 10 MB line), time windows."""

from __future__ import annotations

import gzip
import itertools
import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import loggen
import pytest

from novakeeper.logs import scan, sources
from novakeeper.logs.window import Window

REQ = "req-c381e88f-38c0-48fd-a712-b8bc076f3787"
INST = "b9d179e0-6c0f-44f5-a813-0c4237730edf"
T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
DEFAULT_CHUNK = scan.CHUNK


def log_lines(n: int, every: int = 7, start: datetime = T0) -> list[str]:
    """n records, one second apart; every `every`-th names INST and has a traceback."""
    out = []
    for i in range(n):
        stamp = (start + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S.000")
        if i % every == 3:
            out.append(f"{stamp} 4202 ERROR nova.compute.manager [None {REQ} u p - d d] "
                       f"[instance: {INST}] Instance failed to spawn: boom {i}")
            out.extend(f"{stamp} 4202 ERROR nova.compute.manager [instance: {INST}]   "
                       f"frame {j} of {i}" for j in range(5))
            out.append("a bare continuation line")
        else:
            out.append(f"{stamp} 4101 INFO nova.compute.resource_tracker [None "
                       f"req-{i:08d}-0000-4000-a000-000000000000 - - - - - -] Final resource "
                       f"view: name=compute1 used_ram={i}MB")
    return out


def write(path: Path, lines: list[str], gz: bool = False) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    if gz:
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path.write_bytes(data)
    return path


def files_of(*paths: Path) -> list[sources.LogFile]:
    return sources.discover([str(p) for p in paths]).files


def hits(files: list[sources.LogFile], *needles: str, **kw: object) -> list[tuple[int, bytes]]:
    with scan.Scanner(files, **kw) as sc:  # type: ignore[arg-type]
        found = sc.run(scan.Needles(tuple(n.encode() for n in needles)))
    return [(h.offset, h.data) for _, h in found.hits]


def test_records_across_chunk_boundaries_are_whole_and_found_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = files_of(write(tmp_path / "nova-compute.log", log_lines(3000)))
    expected = hits(f, INST, "frame 2 of")
    assert len(expected) == 3000 // 7 + 1
    assert all(data.count(b"\n") == 7 and b"bare continuation" in data for _, data in expected)
    for chunk in (4096, 4099, 65536):  # records cut anywhere by chunk ends
        monkeypatch.setattr(scan, "CHUNK", chunk)
        assert hits(f, INST, "frame 2 of") == expected


def test_many_needles_use_one_regex_and_find_the_same(tmp_path: Path) -> None:
    f = files_of(write(tmp_path / "nova-compute.log", log_lines(500)))
    ids = [f"req-{i:08d}-0000-4000-a000-000000000000" for i in (1, 2, 5, 8, 400)]
    one_by_one = sorted(h for i in ids for h in hits(f, i))
    assert len(one_by_one) == 5
    assert sorted(hits(f, *ids)) == one_by_one


def test_workers_and_segments_find_what_one_pass_finds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "a.log", log_lines(4000))
    write(tmp_path / "b.log.2.gz", log_lines(900, every=5), gz=True)
    f = sources.discover([str(tmp_path)]).files
    serial = hits(f, INST, "used_ram=77MB", jobs=1)
    monkeypatch.setattr(scan, "MIN_SEGMENT", 8192)
    tasks = scan.plan_tasks(f, Window(), jobs=2)
    plain = [t for t in tasks if not t.compressed]
    assert len(plain) > 3  # cut into segments...
    data = (tmp_path / "a.log").read_bytes()
    for t in plain:  # ...that start on record starts and meet exactly
        assert t.start == 0 or data[t.start - 1:t.start] == b"\n"
        assert data[t.start:t.start + 4] == b"2026"
    spans = sorted((t.start, t.end) for t in plain)
    assert spans[0][0] == 0 and spans[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    parallel = hits(f, INST, "used_ram=77MB", jobs=2, parallel_min=0)
    assert parallel == serial and len(serial) > 700


def test_gzip_is_streamed_and_several_members_are_read(tmp_path: Path) -> None:
    first = log_lines(300)
    second = log_lines(300, start=T0 + timedelta(hours=1))
    p = tmp_path / "nova-compute.log.3.gz"
    p.write_bytes(gzip.compress(("\n".join(first) + "\n").encode())
                  + gzip.compress(("\n".join(second) + "\n").encode()))
    f = files_of(p)
    assert f[0].compressed
    found = hits(f, INST)
    assert len(found) == 2 * (300 // 7 + 1)


def test_truncated_gzip_reports_where_it_stopped_and_keeps_what_it_read(
        tmp_path: Path) -> None:
    p = write(tmp_path / "nova-compute.log.2.gz", log_lines(5000), gz=True)
    whole = p.read_bytes()
    p.write_bytes(whole[: len(whole) // 2])
    f = files_of(p)
    with scan.Scanner(f) as sc:
        found = sc.run(scan.Needles((INST.encode(),)))
    problem = found.problems[0]
    assert problem.startswith("truncated gzip file: its data ends at byte "
                              f"{len(whole) // 2:,}")
    assert "decompressed bytes" in problem
    assert 100 < len(found.hits) < 5000 // 7  # the first half was searched


def test_corrupt_gzip_is_reported(tmp_path: Path) -> None:
    p = write(tmp_path / "nova-api.log.2.gz", log_lines(2000), gz=True)
    data = bytearray(p.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64
    p.write_bytes(bytes(data))
    with scan.Scanner(files_of(p)) as sc:
        found = sc.run(scan.Needles((INST.encode(),)))
    assert found.problems[0].startswith("corrupt gzip data near byte")


def test_binary_garbage_is_searched_without_crashing(tmp_path: Path) -> None:
    rng = random.Random(7)
    garbage = bytes(rng.getrandbits(8) for _ in range(300_000))
    good = ("\n".join(log_lines(20)) + "\n").encode()
    p = tmp_path / "nova-compute.log"
    p.write_bytes(garbage + b"\n" + good + garbage.replace(b"\n", b"\0") + good)
    found = hits(files_of(p), INST)
    assert len(found) == 2 * (20 // 7 + 1)
    assert all(data.startswith(b"2026-11-20") for _, data in found)


@pytest.mark.parametrize("chunk", [DEFAULT_CHUNK, 1 << 20])
def test_a_ten_megabyte_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             chunk: int) -> None:
    monkeypatch.setattr(scan, "CHUNK", chunk)
    huge = ("2026-11-20 10:00:05.000 4202 WARNING nova.compute.manager [-] "
            + "x" * 5_000_000 + f" {INST} " + "y" * 5_000_000)
    after = log_lines(8, start=T0 + timedelta(hours=1))
    p = write(tmp_path / "nova-compute.log", [*log_lines(10), huge, *after])
    found = hits(files_of(p), INST)
    assert len(found) == 3
    long_one = [d for _, d in found if b"Instance failed" not in d]
    # a line longer than the buffer is searched in pieces: its record is cut
    assert len(long_one) == 1 and len(long_one[0]) <= scan.MAX_HIT_BYTES
    assert long_one[0].startswith(b"2026-11-20 10:00:05.000 4202 WARNING") == (
        chunk == DEFAULT_CHUNK)


def test_a_window_reads_only_its_part_of_a_plain_file(tmp_path: Path) -> None:
    p = write(tmp_path / "nova-compute.log", log_lines(60_000))  # 60,000 s of records
    f = files_of(p)
    since, until = T0 + timedelta(hours=5), T0 + timedelta(hours=6)
    with scan.Scanner(f, Window(since, until)) as sc:
        found = sc.run(scan.Needles((INST.encode(),)))
    assert found.read < os.path.getsize(p) / 4
    stamps = [datetime.fromisoformat(h.data[:23].decode()).replace(tzinfo=UTC)
              for _, h in found.hits]
    assert min(stamps) <= since + timedelta(seconds=8) and max(stamps) >= until - timedelta(
        seconds=8)
    assert all(since - timedelta(minutes=15) <= s <= until + timedelta(minutes=15)
               for s in stamps)  # the bisection's margin; trace filters exactly


def test_a_window_stops_reading_a_gzip_file_after_its_end(tmp_path: Path) -> None:
    lines = log_lines(200_000, every=1000)
    assert sum(map(len, lines)) > 3 * scan.CHUNK
    p = write(tmp_path / "nova-compute.log.2.gz", lines, gz=True)
    with scan.Scanner(files_of(p), Window(None, T0 + timedelta(hours=1))) as sc:
        found = sc.run(scan.Needles((INST.encode(),)))
    assert found.read <= 2 * scan.CHUNK and found.hits


def test_activity_around_a_time(tmp_path: Path) -> None:
    quiet = log_lines(100) + log_lines(100, start=T0 + timedelta(hours=2))
    for name, gz in (("nova-compute.log", False), ("nova-compute.log.2.gz", True)):
        f = files_of(write(tmp_path / name, quiet, gz=gz))[0]
        before, after = scan.activity_around(f, T0 + timedelta(hours=1))
        assert before == T0 + timedelta(seconds=99)
        assert after == T0 + timedelta(hours=2)
        assert scan.activity_around(f, T0 + timedelta(hours=9)) == (
            T0 + timedelta(hours=2, seconds=99), None)


def test_generated_log_set_has_every_service_and_rotation(tmp_path: Path) -> None:
    logset = loggen.build(tmp_path, span=timedelta(minutes=30))
    names = {p.name for p in logset.files}
    assert {"nova-api.log", "nova-api.log.1", "nova-api.log.2.gz", "neutron-server.log",
            "glance-api.log", "cinder-volume.log", "placement-api.log", "keystone.log",
            "nova-compute.log", "nova-scheduler.log", "nova-conductor.log"} <= names
    disc = sources.discover([str(tmp_path)])
    labels = {f.label for f in disc.files}
    assert {"compute1:nova-compute", "compute2:nova-compute", "nova-api",
            "neutron-server"} <= labels
    assert all(f.work >= f.size for f in disc.files)
