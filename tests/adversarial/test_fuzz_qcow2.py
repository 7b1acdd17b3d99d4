"""Fuzzing the native qcow2 reader: random bytes and mutated real headers (qemu-img's own
v2, v3, backing file, backing format extension, external data file, extended L2, zstd,
LUKS) never raise anything but HeaderError / ProbeError, never give a backing name that is
not a plain string, never read past the header's cluster, and following never loops or
runs past its bounds. Where qemu-img itself reads a mutated header and names a backing
file, ours names the same one or refuses the image (a refusal holds bases; a different
answer would protect the wrong one). Plus the atheris target, run briefly when atheris
is installed.

The helpers (seeds made by qemu-img, the invariants) live in fuzz_qcow2_atheris.py, the
coverage-guided target: `python tests/adversarial/fuzz_qcow2_atheris.py -atheris_runs=N`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz_qcow2_atheris import QEMU_IMG, check_file, check_header, make_seeds
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from novakeeper.images import chain, probe, qcow2

HERE = Path(__file__).resolve().parent


@functools.cache
def seeds() -> dict[str, bytes]:
    """qemu-img's images, made once per session, on first use (not at collection)."""
    with tempfile.TemporaryDirectory(prefix="qcow2-seeds-") as folder:
        return make_seeds(folder)



SCALE = float(os.environ.get("NOVAKEEPER_FUZZ_SCALE", "1"))
"""Multiplies every example count (a nightly run: 20)."""


def fuzz(examples: int) -> settings:
    """Mutations that qemu-img or our parser refuse are filtered out of the differential
    test: most of them, by design."""
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.filter_too_much])

# Header fields: offset, width (bytes). v2 header, then v3's, see qcow2.py's docstring.
FIELDS = [(4, 4), (8, 8), (16, 4), (20, 4), (24, 8), (32, 4), (36, 4), (40, 8), (48, 8),
          (56, 4), (60, 4), (64, 8), (72, 8), (80, 8), (88, 8), (96, 4), (100, 4)]
EXT_TYPES = [qcow2.EXT_END, qcow2.EXT_BACKING_FORMAT, qcow2.EXT_DATA_FILE,
             qcow2.EXT_FEATURE_TABLE, qcow2.EXT_BITMAPS, qcow2.EXT_CRYPTO, 0x12345678]
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 9, 16, 21, 22, 31, 32, 63, 64, 72, 100, 103, 104, 105,
               112, 511, 512, 1023, 1024, 1025, 4095, 4096, 4097, 65535, 65536, 65537,
               (1 << 21) - 1, 1 << 21, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32,
               (1 << 63), (1 << 64) - 1]
NAME_BYTES = st.binary(min_size=0, max_size=40) | st.sampled_from(
    [b"", b"\0", b"a\0b", b"/", b"..", b"../../../../etc/passwd", b"\xff\xfe\n", b" ",
     b"/dev/zero", b"/proc/self/mem", b"disk", b"x" * 1024])


def test_the_seeds_are_what_qemu_img_made() -> None:
    """The seeds parse, and each says what qemu-img says about it: the baseline every
    mutation starts from."""
    assert {"v2", "v3", "v3-backing", "data-file"} <= set(seeds())
    for name, data in seeds().items():
        header = check_header(data)
        assert header is not None, name
        info = qemu_info(data)
        assert info is not None and info["format"] == "qcow2", name
        assert as_qemu_prints(header.backing_file) == qemu_name(info.get("backing-filename")
                                                                ), name
    assert check_header(seeds()["v2"]).version == 2  # type: ignore[union-attr]
    assert check_header(seeds()["data-file"]).data_file is not None  # type: ignore[union-attr]
    assert check_header(seeds()["v3-backing"]).backing_format == "raw"  # type: ignore[union-attr]


def as_qemu_prints(name: str | None) -> str | None:
    """qemu-img's JSON shows a name's bytes as UTF-8, invalid bytes replaced (a run of
    them by one or more U+FFFD, by rules of its own: compared as one)."""
    if name is None:
        return None
    return re.sub("\ufffd+", "\ufffd", os.fsencode(name).decode("utf-8", "replace"))


def qemu_name(name: str | None) -> str | None:
    return None if name is None else re.sub("\ufffd+", "\ufffd", name)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real header with a few fields, bytes, names or extensions changed, maybe cut."""
    data = bytearray(seeds()[draw(st.sampled_from(sorted(seeds())))][:8192])
    for _ in range(draw(st.integers(1, 5))):
        how = draw(st.sampled_from(["field", "field", "byte", "name", "ext"]))
        if how == "field":
            offset, width = draw(st.sampled_from(FIELDS))
            limit = (1 << (8 * width)) - 1
            value = draw(st.sampled_from([v for v in INTERESTING if v <= limit])
                         | st.integers(0, limit))
            data[offset:offset + width] = value.to_bytes(width, "big")
        elif how == "byte":
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
        elif how == "name":  # rewrite the backing name in place, or point elsewhere
            off = struct.unpack_from(">Q", data, 8)[0]
            name = draw(NAME_BYTES)
            start = off if 0 < off < len(data) else draw(st.integers(72, len(data) - 1))
            data[start:start + len(name)] = name
            struct.pack_into(">QI", data, 8, start, len(name))
        elif how == "ext":  # an extension at the start of the extension area
            hlen = struct.unpack_from(">I", data, 100)[0] if data[7] == 3 else 72
            at = hlen if hlen + 8 <= len(data) else 72
            etype = draw(st.sampled_from(EXT_TYPES) | st.integers(0, (1 << 32) - 1))
            payload = draw(NAME_BYTES)
            length = draw(st.sampled_from([len(payload), 0, 1, 4096, (1 << 32) - 1]))
            blob = struct.pack(">II", etype, length) + payload
            data[at:at + len(blob)] = blob
    if draw(st.integers(0, 3)) == 0:  # cut it short, anywhere
        del data[draw(st.integers(0, len(data))):]
    return bytes(data)


PREFIXES = [b"", qcow2.MAGIC, qcow2.MAGIC + b"\0\0\0\2", qcow2.MAGIC + b"\0\0\0\3",
            b"QED\0", b"KDMV", b"# Disk DescriptorFile", b"vhdxfile"]
RANDOM = st.builds(lambda p, b: p + b, st.sampled_from(PREFIXES), st.binary(max_size=4200))


@fuzz(1500)
@given(data=mutated() | RANDOM)
def test_the_parser_answers_or_refuses(data: bytes) -> None:
    """In memory: qcow2.parse raises only HeaderError, reads only within the first
    cluster (2 MiB at most), and whatever it answers keeps every invariant."""
    check_header(data)


SHM = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A folder for one example's files: tmpfs when there is one (fast rewrites)."""
    with tempfile.TemporaryDirectory(dir=SHM, prefix="novakeeper-fuzz-") as folder:
        yield Path(folder)


@fuzz(400)
@given(data=mutated() | RANDOM)
def test_probe_and_follow_answer_or_refuse(data: bytes) -> None:
    """On disk: probe raises only ProbeError; follow never raises and stays in bounds."""
    with scratch() as folder:
        disk = folder / "disk"
        disk.write_bytes(data)
        check_file(os.fspath(disk))


def qemu_info(data: bytes) -> dict | None:
    """qemu-img's reading of the header (the oracle), or None when it refuses it."""
    with tempfile.NamedTemporaryFile(dir=SHM, suffix=".img") as f:
        f.write(data)
        f.flush()
        proc = subprocess.run([QEMU_IMG, "info", "-U", "--output=json", f.name],
                              capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@fuzz(150)
@given(data=mutated())
def test_where_qemu_img_names_a_backing_file_we_name_the_same(data: bytes) -> None:
    """The property that matters for safety: a header qemu (that is, the guest) would
    open with backing file B is never read by us as 'no backing file' or as another
    file; refusing it (a problem that holds bases) is always allowed."""
    ours = check_header(data)
    assume(ours is not None)  # refused: the disk's bases are held, whatever qemu says
    assert ours is not None
    theirs = qemu_info(data)
    assume(theirs is not None and theirs.get("format") == "qcow2")
    assert theirs is not None
    assert as_qemu_prints(ours.backing_file) == qemu_name(theirs.get("backing-filename")), (
        ours, theirs)
    data_file = theirs.get("format-specific", {}).get("data", {}).get("data-file")
    if data_file is not None:
        assert as_qemu_prints(ours.data_file) == qemu_name(data_file), (ours, theirs)


# -- chains of fuzzed images -------------------------------------------------------------

TARGETS = ["f0", "f1", "f2", "./f0", "../d/f1", "missing", "dir", "fifo", "loop-link",
           "link-f0", "raw", "/dev/null", "/dev/zero", "/proc/self/mem", "", "f0\0x"]


def header_naming(seed: str, name: bytes) -> bytes:
    """The seed's header with backing file `name` at offset 2048 (inside the cluster)."""
    data = bytearray(seeds()[seed][:8192])
    data[2048:2048 + len(name)] = name
    struct.pack_into(">QI", data, 8, 2048 if name else 0, len(name))
    return bytes(data)


@fuzz(250)
@given(files=st.lists(st.tuples(st.sampled_from(["v2-backing", "v3-backing", "v3",
                                                 "data-file", "extended-l2"]),
                                st.sampled_from(TARGETS)), min_size=3, max_size=3),
       absolute=st.lists(st.booleans(), min_size=3, max_size=3),
       start=st.integers(0, 2))
def test_following_fuzzed_chains_ends(files: list[tuple[str, str]], absolute: list[bool],
                                      start: int) -> None:
    """Images naming each other (loops of 1, 2 and 3), links looping on themselves,
    folders, FIFOs, devices, /proc files, empty and NUL names: follow always ends, with
    a complete chain or a break, and every link it reports is a file that is there."""
    with scratch() as top:
        follow_fuzzed(top / "d", files, absolute, start)


def follow_fuzzed(folder: Path, files: list[tuple[str, str]], absolute: list[bool],
                  start: int) -> None:
    folder.mkdir()
    (folder / "dir").mkdir()
    os.mkfifo(folder / "fifo")
    os.symlink("loop-link", folder / "loop-link")
    os.symlink("f0", folder / "link-f0")
    (folder / "raw").write_bytes(b"\0" * 4096)
    for n, ((seed, target), absolute_name) in enumerate(zip(files, absolute, strict=True)):
        name = os.fsencode(target)
        if absolute_name and target and not target.startswith("/"):
            name = os.fsencode(os.path.join(folder, target))
        (folder / f"f{n}").write_bytes(header_naming(seed, name))
    info = check_file(os.fspath(folder / f"f{start}"))
    if info is not None:
        result = chain.follow(info, chain.CachedProber())
        assert result.complete or result.broken in set(chain.Break)
        event(f"chain: {result.broken or 'complete'}")


def test_a_chain_longer_than_the_limit_is_cut() -> None:
    with tempfile.TemporaryDirectory() as folder:
        depth = chain.MAX_CHAIN_DEPTH + 3
        for n in range(depth):
            target = f"f{n + 1}".encode() if n + 1 < depth else b"end"
            Path(folder, f"f{n}").write_bytes(header_naming("v3-backing", target))
        Path(folder, "end").write_bytes(b"raw")
        result = chain.follow(probe.probe(os.path.join(folder, "f0")), chain.CachedProber())
        assert result.broken is chain.Break.TOO_LONG
        assert len(result.links) == chain.MAX_CHAIN_DEPTH


def test_the_atheris_target_runs(tmp_path: Path) -> None:
    """`fuzz_qcow2_atheris.py` for a bounded number of runs (coverage-guided, seeded from
    qemu-img's images): it exits 0 unless an input broke an invariant."""
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (pip install atheris)")
    runs = os.environ.get("NOVAKEEPER_ATHERIS_RUNS", "30000")
    proc = subprocess.run(  # a crashing input is kept in tmp_path (crash-<sha1>)
        [sys.executable, os.fspath(HERE / "fuzz_qcow2_atheris.py"),
         f"-atheris_runs={runs}", f"-artifact_prefix={tmp_path}/", "-seed=1"],
        capture_output=True, text=True, timeout=600)
    crashes = os.listdir(tmp_path)
    assert proc.returncode == 0 and not crashes, proc.stderr[-4000:]
    assert f"Done {runs} in " in proc.stderr, proc.stderr[-2000:]  # every run was made
