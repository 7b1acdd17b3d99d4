"""layout: what each name in the cache folder means, by nova's naming rules."""

from __future__ import annotations

import hashlib

import pytest

from novakeeper.cache.layout import (
    ALL_KINDS,
    DELETABLE_KINDS,
    ROOT_KINDS,
    BaseKind,
    CacheName,
    classify,
    image_hash,
    kinds_usable_by,
)

SHA = "0d5e6b61602d758984b3bf038267614d6016eb2a"


def test_image_hash_known_value() -> None:
    assert image_hash("fd0cb2f1-8375-44c9-b1f4-3e1f4c4a8ef0") == SHA


def test_image_hash_is_sha1_of_utf8_id() -> None:
    assert image_hash("é") == hashlib.sha1("é".encode()).hexdigest()
    assert classify(image_hash("any id")).kind is BaseKind.ORIGINAL


# --- plain names ---------------------------------------------------------------------------


def test_original() -> None:
    assert classify(SHA) == CacheName(BaseKind.ORIGINAL, SHA)
    assert classify("0" * 40) == CacheName(BaseKind.ORIGINAL, "0" * 40)


@pytest.mark.parametrize("variant", ["0", "5", "10", "21474836480", "sm"])
def test_resized(variant: str) -> None:
    assert classify(f"{SHA}_{variant}") == CacheName(BaseKind.RESIZED, SHA, variant)


@pytest.mark.parametrize("mb", ["1", "512", "2048"])
def test_swap(mb: str) -> None:
    assert classify(f"swap_{mb}") == CacheName(BaseKind.SWAP, None, mb)


@pytest.mark.parametrize("variant", ["1_abcdef0", "20_0123456", "160_fffffff"])
def test_ephemeral(variant: str) -> None:
    assert classify(f"ephemeral_{variant}") == CacheName(BaseKind.EPHEMERAL, None, variant)


def test_info() -> None:
    assert classify(f"{SHA}.info") == CacheName(BaseKind.INFO, SHA)


# --- .part / .converted of each plain kind -------------------------------------------------


PLAIN = [
    (SHA, BaseKind.ORIGINAL, SHA, None),
    (f"{SHA}_5", BaseKind.RESIZED, SHA, "5"),
    (f"{SHA}_10737418240", BaseKind.RESIZED, SHA, "10737418240"),
    (f"{SHA}_sm", BaseKind.RESIZED, SHA, "sm"),
    ("swap_512", BaseKind.SWAP, None, "512"),
    ("ephemeral_20_abcdef0", BaseKind.EPHEMERAL, None, "20_abcdef0"),
]


@pytest.mark.parametrize(("stem", "plain_kind", "sha", "variant"), PLAIN)
@pytest.mark.parametrize(
    ("suffix", "kind"), [(".part", BaseKind.PARTIAL), (".converted", BaseKind.CONVERTED)]
)
def test_partial_and_converted(
    stem: str, plain_kind: BaseKind, sha: str | None, variant: str | None,
    suffix: str, kind: BaseKind,
) -> None:
    assert classify(stem) == CacheName(plain_kind, sha, variant)
    assert classify(stem + suffix) == CacheName(kind, sha, variant)


# --- unknown names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        SHA.upper(),
        SHA[:-1] + "A",
        SHA[:39],
        SHA + "0",
        "g" * 40,
        f" {SHA}",
        f"{SHA}\n",
        f"{SHA}_",
        f"{SHA}_-1",
        f"{SHA}_5x",
        f"{SHA}_SM",
        f"{SHA.upper()}_5",
        f"{SHA[:39]}_5",
        "swap_",
        "swap",
        "swap_1.5",
        "swap_abc",
        "SWAP_512",
        "ephemeral_20",
        "ephemeral_20_abcdef",
        "ephemeral_20_abcdef01",
        "ephemeral_20_ABCDEF0",
        "ephemeral__abcdef0",
        "ephemeral_x_abcdef0",
        # non-ASCII digits: \d would take them, nova never writes them
        "swap_\u0661\u0662",
        f"{SHA}_\u0665",
        "ephemeral_\uff12_abcdef0",
        f"{SHA}.INFO",
        f"{SHA[:39]}.info",
        f"{SHA}_5.info",
        f"{SHA}.info.part",
        f"{SHA}.part.part",
        f"{SHA}.converted.part",
        f"{SHA}.part.converted",
        ".part",
        ".converted",
        "junk.part",
        "README",
        "",
        "..",
        "lost+found",
        "disk",
    ],
)
def test_unknown(name: str) -> None:
    assert classify(name) == CacheName(BaseKind.UNKNOWN)


# --- kinds ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("disk", "kinds"),
    [
        ("disk", {BaseKind.ORIGINAL, BaseKind.RESIZED}),
        ("disk.rescue", {BaseKind.ORIGINAL, BaseKind.RESIZED}),
        ("disk.local", {BaseKind.EPHEMERAL}),
        ("disk.eph0", {BaseKind.EPHEMERAL}),
        ("disk.eph12", {BaseKind.EPHEMERAL}),
        ("disk.swap", {BaseKind.SWAP}),
    ],
)
def test_kinds_usable_by_known_disks(disk: str, kinds: set[BaseKind]) -> None:
    assert kinds_usable_by(disk) == kinds


@pytest.mark.parametrize("disk", ["disk.config", "disk.info", "console.log", "disk2", "", "Disk"])
def test_kinds_usable_by_other_names_is_everything(disk: str) -> None:
    assert kinds_usable_by(disk) == ALL_KINDS


def test_kind_sets() -> None:
    assert {BaseKind.ORIGINAL, BaseKind.RESIZED} == ROOT_KINDS
    assert set(BaseKind) == ALL_KINDS
    never = {BaseKind.UNKNOWN, BaseKind.DIRECTORY, BaseKind.SYMLINK, BaseKind.SPECIAL}
    assert not DELETABLE_KINDS & never
    assert DELETABLE_KINDS | never == ALL_KINDS
