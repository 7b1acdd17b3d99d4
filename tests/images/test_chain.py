"""follow(): real backing chains made with qemu-img, and every way they can break."""

from __future__ import annotations

import os
import struct
from collections import Counter
from pathlib import Path

import pytest

from conftest import make_deep_chain, make_qcow2, make_raw, qemu_img
from novakeeper.cache.layout import image_hash
from novakeeper.images.chain import (
    MAX_CHAIN_DEPTH,
    Break,
    CachedProber,
    Chain,
    follow,
)
from novakeeper.images.probe import (
    ImageFormat,
    ImageInfo,
    ProbeError,
    ProbeErrorKind,
    probe,
)

MiB = 1 << 20
SHA = image_hash("fd0cb2f1-8375-44c9-b1f4-3e1f4c4a8ef0")


def chain_of(path: Path | str, **kwargs: int) -> Chain:
    return follow(probe(str(path)), probe, **kwargs)


def real(paths: object) -> list[str]:
    assert isinstance(paths, tuple)
    return [os.path.realpath(i.path) for i in paths]


def same(a: str | Path, b: str | Path) -> bool:
    return os.path.samefile(a, b)


@pytest.fixture
def deep(tmp_path: Path) -> dict[str, Path]:
    """inst/disk -> ../snap/top.qcow2 -> ../other/mid.qcow2 -> ../_base/<sha1> (raw)."""
    return make_deep_chain(tmp_path, SHA, b"raw base")


# --- complete chains -----------------------------------------------------------------------


def test_no_backing(tmp_path: Path) -> None:
    chain = chain_of(make_qcow2(tmp_path / "disk", size="1M"))
    assert chain == Chain(())
    assert chain.complete


def test_raw_disk(tmp_path: Path) -> None:
    assert chain_of(make_raw(tmp_path / "disk", MiB)) == Chain(())


def test_one_raw_backing(tmp_path: Path) -> None:
    make_raw(tmp_path / "base", MiB)
    chain = chain_of(make_qcow2(tmp_path / "disk", backing="base", size="1M"))
    assert chain.complete
    assert [i.format for i in chain.links] == [ImageFormat.RAW]
    assert chain.links[0].path == str(tmp_path / "base")


def test_deep_relative_chain_across_folders(deep: dict[str, Path]) -> None:
    chain = chain_of(deep["disk"])
    assert chain.complete, chain
    assert real(chain.links) == [str(deep["top"]), str(deep["mid"]), str(deep["base"])]
    assert [i.format for i in chain.links] == [ImageFormat.QCOW2] * 2 + [ImageFormat.RAW]
    # Paths are joined as qemu does, folder of the naming image + stored name.
    assert chain.links[0].path == str(deep["disk"].parent / "../snap/top.qcow2")
    assert chain.links[2].path.endswith(f"/../_base/{SHA}")


def test_deep_chain_from_relative_disk_path(
    deep: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    chain = follow(probe("inst/disk"), probe)
    assert chain.complete
    assert chain.links[0].path == "inst/../snap/top.qcow2"
    assert real(chain.links)[-1] == str(deep["base"])


def test_relative_backing_resolved_against_image_folder_not_cwd(
    deep: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A decoy laid out so that "../snap/top.qcow2" resolves from the cwd too.
    decoy_top = make_raw(tmp_path / "decoy" / "snap" / "top.qcow2", MiB)
    (tmp_path / "decoy" / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "decoy" / "cwd")
    assert os.path.exists("../snap/top.qcow2")
    chain = chain_of(deep["disk"])
    assert chain.complete
    assert same(chain.links[0].path, deep["top"])
    assert not any(same(i.path, decoy_top) for i in chain.links)
    assert len(chain.links) == 3


def test_absolute_backing(tmp_path: Path) -> None:
    base = make_raw(tmp_path / "_base" / SHA, MiB)
    disk = make_qcow2(tmp_path / "inst" / "disk", backing=str(base), size="1M")
    chain = chain_of(disk)
    assert chain.complete
    assert [i.path for i in chain.links] == [str(base)]


def test_qcow2_base_without_backing_ends_chain(tmp_path: Path) -> None:
    make_qcow2(tmp_path / "base", size="1M")
    chain = chain_of(make_qcow2(tmp_path / "disk", backing="base", backing_fmt="qcow2",
                                size="1M"))
    assert chain.complete
    assert len(chain.links) == 1


# --- depth ---------------------------------------------------------------------------------


@pytest.fixture
def five(tmp_path: Path) -> Path:
    """d5 -> d4 -> d3 -> d2 -> d1 -> base: five backing files below d5."""
    make_raw(tmp_path / "base", MiB)
    make_qcow2(tmp_path / "d1", backing="base", size="1M")
    for i in range(2, 6):
        make_qcow2(tmp_path / f"d{i}", backing=f"d{i - 1}", backing_fmt="qcow2", size="1M")
    return tmp_path / "d5"


def test_chain_exactly_max_depth_is_complete(five: Path) -> None:
    chain = chain_of(five, max_depth=5)
    assert chain.complete
    assert [os.path.basename(i.path) for i in chain.links] == ["d4", "d3", "d2", "d1", "base"]


@pytest.mark.parametrize("max_depth", [1, 2, 4])
def test_chain_too_long(five: Path, max_depth: int) -> None:
    chain = chain_of(five, max_depth=max_depth)
    assert chain.broken is Break.TOO_LONG
    assert not chain.complete
    assert len(chain.links) == max_depth
    assert chain.broken_at == chain.links[-1].path
    assert str(max_depth) in (chain.detail or "")


def test_default_max_depth_is_generous(five: Path) -> None:
    assert MAX_CHAIN_DEPTH >= 5
    assert chain_of(five).complete


# --- loops ---------------------------------------------------------------------------------


def test_loop_of_two(tmp_path: Path) -> None:
    a = make_qcow2(tmp_path / "a", size="1M")
    make_qcow2(tmp_path / "b", backing="a", backing_fmt="qcow2", size="1M")
    qemu_img("rebase", "-u", "-b", "b", "-F", "qcow2", str(a))
    chain = chain_of(a)
    assert chain.broken is Break.LOOP
    assert [os.path.basename(i.path) for i in chain.links] == ["b"]
    assert chain.broken_at is not None
    assert same(chain.broken_at, a)


def test_self_loop(tmp_path: Path) -> None:
    a = make_qcow2(tmp_path / "a", size="1M")
    qemu_img("rebase", "-u", "-b", "a", "-F", "qcow2", str(a))
    chain = chain_of(a)
    assert chain.broken is Break.LOOP
    assert chain.links == ()


def test_loop_written_into_header_bytes(tmp_path: Path) -> None:
    """x -> y -> z -> y, the names patched straight into the headers."""
    make_raw(tmp_path / "base", MiB)
    x = make_qcow2(tmp_path / "x", backing="base", size="1M")
    y = make_qcow2(tmp_path / "y", backing="base", size="1M")
    z = make_qcow2(tmp_path / "z", backing="base", size="1M")
    for path, name in ((x, b"y"), (y, b"z"), (z, b"y")):
        data = bytearray(path.read_bytes())
        off = struct.unpack_from(">Q", data, 8)[0]
        struct.pack_into(">I", data, 16, len(name))
        data[off : off + len(name)] = name
        path.write_bytes(bytes(data))
    chain = chain_of(x)
    assert chain.broken is Break.LOOP
    assert [os.path.basename(i.path) for i in chain.links] == ["y", "z"]


def test_loop_through_another_name_of_the_same_file(tmp_path: Path) -> None:
    """Loops are found by (dev, inode), not by name: a hard link and a symlink."""
    a = make_qcow2(tmp_path / "a", size="1M")
    os.link(a, tmp_path / "hard")
    (tmp_path / "soft").symlink_to("a")
    qemu_img("rebase", "-u", "-b", "hard", "-F", "qcow2", str(a))
    assert chain_of(a).broken is Break.LOOP
    qemu_img("rebase", "-u", "-b", "soft", "-F", "qcow2", str(a))
    assert chain_of(a).broken is Break.LOOP


def test_shared_base_is_not_a_loop(tmp_path: Path) -> None:
    """Same base under two names in *different* chains is fine; only one chain matters."""
    make_raw(tmp_path / "base", MiB)
    (tmp_path / "alias").symlink_to("base")
    make_qcow2(tmp_path / "mid", backing="alias", size="1M")
    chain = chain_of(make_qcow2(tmp_path / "disk", backing="mid", backing_fmt="qcow2",
                                size="1M"))
    assert chain.complete
    assert len(chain.links) == 2


# --- breaks --------------------------------------------------------------------------------


def test_missing_base(deep: dict[str, Path]) -> None:
    deep["base"].unlink()
    chain = chain_of(deep["disk"])
    assert chain.broken is Break.MISSING
    assert real(chain.links) == [str(deep["top"]), str(deep["mid"])]
    assert chain.broken_at is not None
    assert chain.broken_at.endswith(f"/other/../_base/{SHA}")
    assert os.path.normpath(chain.broken_at) == str(deep["base"])


def test_missing_middle(deep: dict[str, Path]) -> None:
    deep["mid"].unlink()
    chain = chain_of(deep["disk"])
    assert chain.broken is Break.MISSING
    assert real(chain.links) == [str(deep["top"])]


def test_unreadable_backing_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / "l1").symlink_to("l2")
    (tmp_path / "l2").symlink_to("l1")
    make_raw(tmp_path / "base", MiB)
    disk = make_qcow2(tmp_path / "disk", backing="base", size="1M")
    qemu_img("rebase", "-u", "-b", "l1", "-F", "raw", str(disk))
    chain = chain_of(disk)
    assert chain.broken is Break.UNREADABLE
    assert chain.broken_at == str(tmp_path / "l1")


@pytest.mark.parametrize("kind", ["dir", "fifo"])
def test_backing_not_a_file_is_unreadable(tmp_path: Path, kind: str) -> None:
    make_raw(tmp_path / "base", MiB)
    disk = make_qcow2(tmp_path / "disk", backing="base", size="1M")
    (tmp_path / "base").unlink()
    if kind == "dir":
        (tmp_path / "base").mkdir()
    else:
        os.mkfifo(tmp_path / "base")
    chain = chain_of(disk)
    assert chain.broken is Break.UNREADABLE
    assert chain.detail == "not a regular file"


def test_unreadable_reported_by_prober(deep: dict[str, Path]) -> None:
    """The prober's kind decides the break; here permission denied, which root never gets."""

    def prober(path: str) -> ImageInfo:
        if os.path.realpath(path) == str(deep["mid"]):
            raise ProbeError(path, ProbeErrorKind.UNREADABLE, "permission denied")
        return probe(path)

    chain = follow(probe(str(deep["disk"])), prober)
    assert chain.broken is Break.UNREADABLE
    assert chain.detail == "permission denied"
    assert real(chain.links) == [str(deep["top"])]


def test_value_error_from_prober_is_corrupt(deep: dict[str, Path]) -> None:
    def prober(path: str) -> ImageInfo:
        raise ValueError("embedded null byte")

    chain = follow(probe(str(deep["disk"])), prober)
    assert chain.broken is Break.CORRUPT
    assert chain.links == ()


@pytest.mark.parametrize("cut", [40, 100])
def test_truncated_backing_is_corrupt(deep: dict[str, Path], cut: int) -> None:
    data = deep["mid"].read_bytes()
    deep["mid"].write_bytes(data[:cut])
    chain = chain_of(deep["disk"])
    assert chain.broken is Break.CORRUPT
    assert real(chain.links) == [str(deep["top"])]
    assert (chain.detail or "").startswith("qcow2 header truncated")


def test_corrupt_backing_header(deep: dict[str, Path]) -> None:
    with open(deep["mid"], "r+b") as f:
        f.seek(16)
        f.write(struct.pack(">I", 5000))
    chain = chain_of(deep["disk"])
    assert chain.broken is Break.CORRUPT
    assert chain.broken_at is not None and same(chain.broken_at, deep["mid"])


def test_data_file_on_disk(tmp_path: Path) -> None:
    disk = make_qcow2(tmp_path / "disk", size="1M",
                      extra_args=("-o", "data_file=disk.data,data_file_raw=on"))
    chain = chain_of(disk)
    assert chain.broken is Break.DATA_FILE
    assert chain.broken_at == str(disk)
    # the data file is read by the disk: it is a link, protected by identity
    assert [os.path.basename(i.path) for i in chain.links] == ["disk.data"]
    assert "disk.data" in (chain.detail or "")


def test_a_missing_data_file_is_held_by_name(tmp_path: Path) -> None:
    disk = make_qcow2(tmp_path / "disk", size="1M",
                      extra_args=("-o", "data_file=disk.data,data_file_raw=on"))
    os.unlink(tmp_path / "disk.data")
    chain = chain_of(disk)
    assert chain.broken is Break.DATA_FILE and chain.links == ()
    assert chain.also == (str(tmp_path / "disk.data"),)


def test_data_file_in_the_middle(tmp_path: Path) -> None:
    # qemu refuses data_file_raw=on together with a backing file; a plain data file is fine.
    make_raw(tmp_path / "base", MiB)
    make_qcow2(tmp_path / "mid", backing="base", size="1M",
               extra_args=("-o", "data_file=mid.data"))
    disk = make_qcow2(tmp_path / "disk", backing="mid", backing_fmt="qcow2", size="1M")
    chain = chain_of(disk)
    assert chain.broken is Break.DATA_FILE  # doubt stays, but following goes on past it
    assert [os.path.basename(i.path) for i in chain.links] == ["mid", "mid.data", "base"]
    assert chain.broken_at == str(tmp_path / "mid")


def test_unknown_feature_bits(deep: dict[str, Path]) -> None:
    with open(deep["top"], "r+b") as f:
        f.seek(72)
        f.write(struct.pack(">Q", 1 << 40))
    chain = chain_of(deep["disk"])
    assert chain.broken is Break.UNKNOWN_FEATURE
    # the doubt is recorded at the image that has the bits; its backing chain is still
    # followed, so the bases below stay protected by identity
    assert real(chain.links)[0] == str(deep["top"]) and len(chain.links) > 1
    assert os.path.realpath(chain.broken_at or "") == str(deep["top"])
    assert "0x10000000000" in (chain.detail or "")


@pytest.mark.parametrize("fmt", ["qed", "vmdk"])
def test_opaque_backing(tmp_path: Path, fmt: str) -> None:
    qemu_img("create", "-q", "-f", fmt, str(tmp_path / "base"), "1M")
    disk = make_qcow2(tmp_path / "disk", backing="base", backing_fmt=fmt, size="1M")
    chain = chain_of(disk)
    assert chain.broken is Break.OPAQUE
    assert [i.format for i in chain.links] == [ImageFormat(fmt)]


# --- CachedProber --------------------------------------------------------------------------


class CountingProber:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __call__(self, path: str) -> ImageInfo:
        self.calls[path] += 1
        return probe(path)


def test_cached_prober_probes_each_path_once(tmp_path: Path) -> None:
    base = make_raw(tmp_path / "_base" / SHA, MiB)
    disks = [make_qcow2(tmp_path / f"inst{i}" / "disk", backing=str(base), size="1M")
             for i in range(4)]
    counting = CountingProber()
    cached = CachedProber(counting)
    chains = [follow(probe(str(d)), cached) for d in disks]
    assert all(c.complete for c in chains)
    assert counting.calls == {str(base): 1}
    assert all(c.links[0] is chains[0].links[0] for c in chains)


def test_cached_prober_caches_errors(tmp_path: Path) -> None:
    base = make_raw(tmp_path / "base", MiB)
    disks = [make_qcow2(tmp_path / f"d{i}", backing=str(base), size="1M") for i in range(3)]
    base.unlink()
    counting = CountingProber()
    cached = CachedProber(counting)
    chains = [follow(probe(str(d)), cached) for d in disks]
    assert {c.broken for c in chains} == {Break.MISSING}
    assert counting.calls == {str(base): 1}
    with pytest.raises(ProbeError):
        cached(str(base))
    assert counting.calls[str(base)] == 1


def test_cached_prober_default_probe(tmp_path: Path) -> None:
    base = make_raw(tmp_path / "base", MiB)
    cached = CachedProber()
    first = cached(str(base))
    base.unlink()  # the cached answer survives
    assert cached(str(base)) is first
    with pytest.raises(ProbeError) as exc:
        cached(str(tmp_path / "nothing"))
    assert exc.value.kind is ProbeErrorKind.MISSING
