"""Inventories as plain data, for the budget tests that need hundreds of them fast
(hypothesis, simulated weeks) and for the state tests: the scanner's own dataclasses,
filled by hand. Real trees are in tests/cache/_tree.py; these are the same values a scan
of such a tree would give, minus the files.

Kept in tests/ (on sys.path through conftest.py, like _cli_tree.py) so that tests/cache
and tests/state can both import it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

from novakeeper.cache.inventory import (
    BaseFile,
    Disk,
    FolderKind,
    Inventory,
    Problem,
    ProblemCode,
)
from novakeeper.cache.layout import classify

INSTANCES = "/nonexistent/instances"
CACHE = f"{INSTANCES}/_base"
DAY = 86400
HOUR = 3600
KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


def sha1(seed: str) -> str:
    """The cache name nova gives image `seed`."""
    return hashlib.sha1(seed.encode()).hexdigest()


def ino_of(name: str) -> int:
    """A stable inode number per name, so two calls describe the same file."""
    return int(sha1("ino:" + name)[:12], 16)


def base_file(name: str, allocated: int, mtime: float, *, size: int | None = None,
              nlink: int = 1, ino: int | None = None, dev: int = 7) -> BaseFile:
    """One regular file of the cache, classified by its name as the scanner does."""
    c = classify(name)
    return BaseFile(name, f"{CACHE}/{name}", c.kind, c.image_hash, c.variant,
                    allocated if size is None else size, allocated, mtime, dev,
                    ino_of(name) if ino is None else ino, nlink)


def inventory(bases: Sequence[BaseFile], users: Mapping[str, Iterable[str]] | None = None,
              held: Iterable[str] = (), scanned_at: float = 0.0) -> Inventory:
    """users: base name -> the instances with a disk on it (one disk each);
    held: base names a broken disk holds (as a chain-broken problem does)."""
    disks: list[Disk] = []
    by_base: dict[str, tuple[Disk, ...]] = {}
    paths = {b.name: b.path for b in bases}
    for name, instances in (users or {}).items():
        mine = []
        for instance in instances:
            disk = Disk(f"{INSTANCES}/{instance}/disk-{name[:8]}", instance,
                        FolderKind.INSTANCE, "qcow2", GiB, 196 * KiB, (paths[name],))
            mine.append(disk)
        disks += mine
        if mine:
            by_base[name] = tuple(mine)
    problems = tuple(
        Problem(ProblemCode.CHAIN_BROKEN, f"{INSTANCES}/broken-{name[:8]}/disk",
                "backing file unreadable", f"broken-{name[:8]}",
                holds_names=frozenset({name}))
        for name in held)
    return Inventory(INSTANCES, CACHE, CACHE, scanned_at, tuple(bases), tuple(disks),
                     by_base, problems, folders=len({d.instance for d in disks}),
                     cache_dev=7, cache_ino=1)
