"""probe(): one real file in, ImageInfo or ProbeError (with the right kind) out.

Unreadable files: the tests run as root, for whom chmod 000 changes nothing. The
UNREADABLE kind is therefore produced in ways that work for any user: a symlink loop
(ELOOP at open) and /proc/self/mem (a regular file whose read fails with EIO). The
chmod 000 case is kept too, but skips when running as root.
"""

from __future__ import annotations

import os
import signal
import stat
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_qcow2, make_raw, qemu_img
from novakeeper.images import qcow2
from novakeeper.images.probe import (
    ImageFormat,
    ImageInfo,
    ProbeError,
    ProbeErrorKind,
    probe,
    resolve_backing,
)

MiB = 1 << 20


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def probe_error(path: Path | str) -> ProbeError:
    with pytest.raises(ProbeError) as exc:
        probe(str(path))
    assert exc.value.path == str(path)
    assert str(exc.value).startswith(f"{path}: ")
    return exc.value


# --- formats -------------------------------------------------------------------------------


def test_qcow2_info(tmp_path: Path) -> None:
    path = make_qcow2(tmp_path / "disk", size="3G")
    info = probe(str(path))
    st_ = os.stat(path)
    assert info == ImageInfo(
        path=str(path), format=ImageFormat.QCOW2, virtual_size=3 << 30, backing_file=None,
        backing_format=None, data_file=None, unknown_features=0, dev=st_.st_dev,
        ino=st_.st_ino, size=st_.st_size, allocated=st_.st_blocks * 512, mtime=st_.st_mtime,
        changed=(st_.st_mtime_ns, st_.st_ctime_ns),
    )


def test_qcow2_backing_as_stored(tmp_path: Path) -> None:
    make_raw(tmp_path / "_base" / "b", MiB)
    path = make_qcow2(tmp_path / "inst" / "disk", backing="../_base/b", size="1M")
    info = probe(str(path))
    assert info.format is ImageFormat.QCOW2
    assert info.backing_file == "../_base/b"
    assert info.backing_format == "raw"


def test_qcow2_v2(tmp_path: Path) -> None:
    make_qcow2(tmp_path / "base", size="1M")
    path = make_qcow2(tmp_path / "disk", backing="base", backing_fmt="qcow2", size="1M",
                      extra_args=("-o", "compat=0.10"))
    info = probe(str(path))
    assert (info.format, info.backing_file, info.backing_format) == (
        ImageFormat.QCOW2, "base", "qcow2")


@pytest.mark.parametrize("data", [b"", b"\0" * 16, b"QFI", b"hello world", b"QFI\xfa" + b"x" * 200])
def test_raw(tmp_path: Path, data: bytes) -> None:
    path = make_raw(tmp_path / "base", 5 * MiB if data else 0, data)
    info = probe(str(path))
    assert info.format is ImageFormat.RAW
    assert info.virtual_size == info.size == path.stat().st_size
    assert info.backing_file is None
    assert info.data_file is None
    # sparse: nothing allocated beyond the few bytes written
    assert info.allocated < MiB


@pytest.mark.parametrize(
    ("fmt", "options", "expected"),
    [
        ("qed", (), ImageFormat.QED),
        ("vmdk", (), ImageFormat.VMDK),
        ("vmdk", ("-o", "subformat=monolithicFlat"), ImageFormat.VMDK),
        ("vhdx", (), ImageFormat.VHDX),
    ],
)
def test_opaque_formats(
    tmp_path: Path, fmt: str, options: tuple[str, ...], expected: ImageFormat
) -> None:
    path = tmp_path / f"img.{fmt}"
    qemu_img("create", "-q", "-f", fmt, *options, str(path), "1M")
    info = probe(str(path))
    assert info.format is expected
    assert info.backing_file is None


def test_external_data_file(tmp_path: Path) -> None:
    path = make_qcow2(tmp_path / "disk", size="1M",
                      extra_args=("-o", "data_file=disk.raw,data_file_raw=on"))
    assert probe(str(path)).data_file == "disk.raw"


def test_unknown_features_reported(tmp_path: Path) -> None:
    path = make_qcow2(tmp_path / "disk", size="1M")
    patch(path, 72, struct.pack(">Q", (1 << 30) | qcow2.INCOMPAT_DIRTY))
    assert probe(str(path)).unknown_features == 1 << 30


def test_backing_name_beyond_head(tmp_path: Path) -> None:
    make_raw(tmp_path / "base", MiB)
    path = make_qcow2(tmp_path / "disk", backing="base", size="1M")
    name = b"far-away-base"
    patch(path, 8, struct.pack(">QI", 8192, len(name)))
    patch(path, 8192, name)
    assert probe(str(path)).backing_file == "far-away-base"


def test_symlink_is_followed(tmp_path: Path) -> None:
    target = make_qcow2(tmp_path / "real", size="1M")
    link = tmp_path / "link"
    link.symlink_to("real")
    info = probe(str(link))
    assert info.path == str(link)
    assert info.format is ImageFormat.QCOW2
    assert info.ino == target.stat().st_ino


def test_block_device(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod of a block device needs root")
    node = tmp_path / "blk"
    source = next((p for p in ("/dev/loop0", "/dev/vda", "/dev/zram0")
                   if os.path.exists(p) and stat.S_ISBLK(os.stat(p).st_mode)), None)
    if source is None:
        pytest.skip("no block device to copy")
    try:
        os.mknod(node, stat.S_IFBLK | 0o600, os.stat(source).st_rdev)
        os.close(os.open(node, os.O_RDONLY | os.O_NONBLOCK))
    except OSError as exc:
        pytest.skip(f"cannot make or open a block device node here: {exc}")
    info = probe(str(node))
    assert info.format is ImageFormat.DEVICE
    assert info.backing_file is None


# --- errors --------------------------------------------------------------------------------


def test_missing(tmp_path: Path) -> None:
    assert probe_error(tmp_path / "nothing").kind is ProbeErrorKind.MISSING


def test_missing_below_a_file(tmp_path: Path) -> None:
    make_raw(tmp_path / "file", 10)
    assert probe_error(tmp_path / "file" / "x").kind is ProbeErrorKind.MISSING  # ENOTDIR


def test_dangling_symlink_is_missing(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to("gone")
    assert probe_error(tmp_path / "link").kind is ProbeErrorKind.MISSING


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    assert probe_error(tmp_path / "dir").kind is ProbeErrorKind.NOT_A_FILE


def test_fifo_is_not_a_file_and_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")

    def hung(signum: int, frame: object) -> None:
        raise TimeoutError("probe blocked opening a FIFO with no writer")

    # A watchdog, not a sleep: without O_NONBLOCK the open would wait forever.
    old = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, 10)
    try:
        assert probe_error(tmp_path / "fifo").kind is ProbeErrorKind.NOT_A_FILE
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_symlink_loop_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    err = probe_error(tmp_path / "a")
    assert err.kind is ProbeErrorKind.UNREADABLE
    assert "symbolic links" in err.detail


def test_read_error_is_unreadable() -> None:
    # A regular file that opens but cannot be read at offset 0 (EIO), even for root.
    path = "/proc/self/mem"
    if not os.path.exists(path):
        pytest.skip("needs Linux /proc")
    assert stat.S_ISREG(os.stat(path).st_mode)
    assert probe_error(path).kind is ProbeErrorKind.UNREADABLE


def test_permission_denied(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads mode 000 files; see the symlink-loop and /proc tests")
    path = make_raw(tmp_path / "secret", 10)
    path.chmod(0)
    err = probe_error(path)
    assert err.kind is ProbeErrorKind.UNREADABLE
    assert err.detail == "permission denied"


@pytest.mark.parametrize("length", [4, 31, 32, 71, 72, 103, 104, 200])
def test_truncated_qcow2(tmp_path: Path, length: int) -> None:
    full = make_qcow2(tmp_path / "full", size="1M").read_bytes()
    path = tmp_path / "cut"
    path.write_bytes(full[:length])
    err = probe_error(path)
    assert err.kind is ProbeErrorKind.TRUNCATED
    assert err.detail.startswith("qcow2 header truncated")


def test_truncated_inside_backing_name(tmp_path: Path) -> None:
    make_raw(tmp_path / "base-image", MiB)
    full = make_qcow2(tmp_path / "full", backing="base-image", size="1M").read_bytes()
    off = struct.unpack_from(">Q", full, 8)[0]
    path = tmp_path / "cut"
    path.write_bytes(full[: off + 4])
    assert probe_error(path).kind is ProbeErrorKind.TRUNCATED


@pytest.mark.parametrize(
    ("offset", "data", "detail"),
    [
        (4, struct.pack(">I", 4), "qcow2 header unsupported qcow2 version 4"),
        (16, struct.pack(">I", 5000), "qcow2 header corrupt: backing file name of 5000 bytes"),
        (8, struct.pack(">Q", 1 << 17), "qcow2 header corrupt: backing file name at offset"),
        (20, struct.pack(">I", 30), "qcow2 header corrupt: cluster_bits 30"),
    ],
)
def test_corrupt_qcow2(tmp_path: Path, offset: int, data: bytes, detail: str) -> None:
    make_raw(tmp_path / "base", MiB)
    path = make_qcow2(tmp_path / "disk", backing="base", size="1M")
    patch(path, offset, data)
    err = probe_error(path)
    assert err.kind is ProbeErrorKind.CORRUPT
    assert err.detail.startswith(detail)


def test_nul_in_backing_name_is_corrupt(tmp_path: Path) -> None:
    make_raw(tmp_path / "base", MiB)
    path = make_qcow2(tmp_path / "disk", backing="base", size="1M")
    off = struct.unpack_from(">Q", path.read_bytes(), 8)[0]
    patch(path, off + 1, b"\0")
    err = probe_error(path)
    assert err.kind is ProbeErrorKind.CORRUPT
    assert "NUL" in err.detail


# --- resolve_backing -----------------------------------------------------------------------


def test_resolve_backing_absolute_is_kept() -> None:
    assert resolve_backing("/a/b/disk", "/c/base") == "/c/base"


def test_resolve_backing_relative_to_image_folder() -> None:
    assert resolve_backing("/a/b/disk", "../_base/x") == "/a/b/../_base/x"
    assert resolve_backing("/a/b/disk", "x") == "/a/b/x"
    assert resolve_backing("inst/disk", "x") == "inst/x"
    assert resolve_backing("disk", "x") == "x"


def test_resolve_backing_ignores_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_raw(tmp_path / "inst" / "base", MiB)
    disk = make_qcow2(tmp_path / "inst" / "disk", backing="base", size="1M")
    decoy = make_raw(tmp_path / "elsewhere" / "base", MiB)
    monkeypatch.chdir(decoy.parent)
    info = probe(str(disk))
    resolved = resolve_backing(info.path, info.backing_file or "")
    assert os.path.samefile(resolved, tmp_path / "inst" / "base")
    assert not os.path.samefile(resolved, decoy)


# --- property: only ProbeError -------------------------------------------------------------


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    d = tmp_path_factory.mktemp("probe-seeds")
    make_raw(d / "base", MiB)
    made = [
        make_qcow2(d / "v3", size="1M"),
        make_qcow2(d / "v2b", backing="base", size="1M", extra_args=("-o", "compat=0.10")),
        make_qcow2(d / "v3b", backing="base", size="1M"),
        make_qcow2(d / "df", size="1M", extra_args=("-o", "data_file=df.raw,data_file_raw=on")),
    ]
    return [p.read_bytes()[:12288] for p in made]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("probe-prop") / "image"


_mutation = st.tuples(
    st.sampled_from(["B", "I", "Q"]),
    st.one_of(st.sampled_from([4, 8, 16, 20, 24, 72, 100, 112, 116]), st.integers(0, 400)),
    st.integers(0, (1 << 64) - 1),
)


def _apply(seed: bytes, mutations: list[tuple[str, int, int]], cut: int | None) -> bytes:
    buf = bytearray(seed)
    for fmt, offset, value in mutations:
        size = struct.calcsize(">" + fmt)
        if offset + size <= len(buf):
            struct.pack_into(">" + fmt, buf, offset, value & ((1 << (8 * size)) - 1))
    return bytes(buf[:cut])


def _probe_only_probe_error(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        info = probe(str(path))
    except ProbeError as exc:
        assert exc.kind in set(ProbeErrorKind)
        return
    assert info.size == len(data)
    if info.format is not ImageFormat.QCOW2:
        assert info.backing_file is None


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=300),
                      st.binary(max_size=300).map(lambda b: qcow2.MAGIC + b)))
def test_probe_random_contents(scratch: Path, data: bytes) -> None:
    _probe_only_probe_error(scratch, data)


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, 3), mutations=st.lists(_mutation, min_size=1, max_size=5),
       cut=st.one_of(st.none(), st.integers(0, 12288)))
def test_probe_mutated_headers(
    seeds: list[bytes], scratch: Path, index: int,
    mutations: list[tuple[str, int, int]], cut: int | None,
) -> None:
    _probe_only_probe_error(scratch, _apply(seeds[index], mutations, cut))
