"""crosscheck: our chain against `qemu-img info --backing-chain` on real images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import make_deep_chain, make_qcow2, make_raw
from novakeeper.cache.layout import image_hash
from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.images import crosscheck
from novakeeper.images.chain import follow
from novakeeper.images.probe import probe

MiB = 1 << 20
SHA = image_hash("fd0cb2f1-8375-44c9-b1f4-3e1f4c4a8ef0")


@pytest.fixture(scope="module")
def binary() -> str:
    return crosscheck.qemu_img()


@pytest.fixture
def deep(tmp_path: Path) -> dict[str, Path]:
    """inst/disk -> ../snap/top.qcow2 -> ../other/mid.qcow2 -> ../_base/<sha1> (raw)."""
    return make_deep_chain(tmp_path, SHA)


def ours(disk: Path) -> list[str]:
    chain = follow(probe(str(disk)), probe)
    assert chain.complete
    return [i.path for i in chain.links]


def test_qemu_img_found(binary: str) -> None:
    assert os.path.isabs(binary)
    assert os.access(binary, os.X_OK)


def test_qemu_img_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NovakeeperError) as exc:
        crosscheck.qemu_img()
    assert exc.value.code is ExitCode.CROSS_CHECK
    assert "qemu-img" in exc.value.message


def test_qemu_chain_lists_disk_then_backing_files(deep: dict[str, Path], binary: str) -> None:
    chain = crosscheck.qemu_chain(binary, str(deep["disk"]))
    assert [os.path.realpath(p) for p in chain] == [
        str(deep[k]) for k in ("disk", "top", "mid", "base")
    ]


def test_qemu_chain_single_image(tmp_path: Path, binary: str) -> None:
    disk = make_qcow2(tmp_path / "disk", size="1M")
    assert crosscheck.qemu_chain(binary, str(disk)) == [str(disk)]


def test_qemu_chain_failure(tmp_path: Path, binary: str) -> None:
    with pytest.raises(RuntimeError, match="No such file"):
        crosscheck.qemu_chain(binary, str(tmp_path / "nothing"))


def test_compare_agrees_on_real_three_deep_chain(deep: dict[str, Path], binary: str) -> None:
    mine = ours(deep["disk"])
    assert len(mine) == 3
    assert crosscheck.compare(str(deep["disk"]), mine, binary) is None


def test_compare_agrees_from_other_cwd_with_relative_disk(
    deep: dict[str, Path], binary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path / "inst")
    chain = follow(probe("disk"), probe)
    assert crosscheck.compare("disk", [i.path for i in chain.links], binary) is None


def test_compare_agrees_through_symlinked_spelling(
    deep: dict[str, Path], binary: str, tmp_path: Path
) -> None:
    (tmp_path / "alias").symlink_to(tmp_path / "_base")
    mine = ours(deep["disk"])
    mine[-1] = str(tmp_path / "alias" / SHA)
    assert crosscheck.compare(str(deep["disk"]), mine, binary) is None


@pytest.mark.parametrize("wrong", ["short", "extra", "swapped", "other-base"])
def test_compare_disagrees_on_wrong_chain(
    deep: dict[str, Path], binary: str, tmp_path: Path, wrong: str
) -> None:
    mine = ours(deep["disk"])
    if wrong == "short":
        mine = mine[:-1]
    elif wrong == "extra":
        mine.append(str(make_raw(tmp_path / "_base" / "extra", MiB)))
    elif wrong == "swapped":
        mine[0], mine[1] = mine[1], mine[0]
    else:
        mine[-1] = str(make_raw(tmp_path / "_base" / ("0" * 40), MiB))
    detail = crosscheck.compare(str(deep["disk"]), mine, binary)
    assert detail is not None
    assert detail.startswith("qemu-img chain ")
    assert str(deep["base"]) in detail  # qemu's own view is named


def test_compare_reports_qemu_failure(deep: dict[str, Path], binary: str) -> None:
    deep["base"].unlink()
    detail = crosscheck.compare(str(deep["disk"]), [], binary)
    assert detail is not None
    assert detail.startswith("qemu-img info failed: ")
