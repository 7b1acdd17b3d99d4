"""Build real compute-node trees for the cache tests: an instances folder with `_base`,
sparse raw bases whose age is set with os.utime relative to a fixed clock, and instance
folders whose qcow2 disks are made by `qemu-img create -f qcow2 -b BASE -F raw`.

Nothing is mocked: the scanner, the policy and the executor see real files. The policy's
clock is the fixed `NOW`; only the executor's own re-checks read the wall clock.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from conftest import make_qcow2, make_raw
from novakeeper.cache.executor import Executor, Report
from novakeeper.cache.inventory import Inventory, Scanner
from novakeeper.cache.plan import Decision, Plan
from novakeeper.cache.policy import Observed, PolicyConfig, decide, recheck

NOW = 1_700_000_000.0
"""The policy's clock in every test: ages are NOW - mtime."""
HOUR = 3600
DAY = 86400
MiB = 1 << 20
GiB = 1 << 30


def sha1(seed: str) -> str:
    """The cache name nova gives image `seed` (sha1 hex of the image id)."""
    return hashlib.sha1(seed.encode()).hexdigest()


def truncate(path: str | os.PathLike[str], length: int = 48) -> Path:
    """Cut a file to `length` bytes: a qcow2 cut this short has a truncated header."""
    os.truncate(path, length)
    return Path(path)


def set_age(path: str | os.PathLike[str], age: float, now: float = NOW) -> None:
    """mtime = now - age; symbolic links themselves, never their targets."""
    t = now - age
    os.utime(path, (t, t), follow_symlinks=False)


def allocated(path: str | os.PathLike[str]) -> int:
    return os.lstat(path).st_blocks * 512


def snapshot(root: str | os.PathLike[str]) -> set[str]:
    """Every entry under root (files, links, folders), relative; links not followed."""
    out: set[str] = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            out.add(os.path.relpath(os.path.join(folder, name), root))
    return out


def uuid_for(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-{n:012x}"


class Node:
    """A compute node's instances folder under `root`, built file by file."""

    def __init__(self, root: str | os.PathLike[str], cache_name: str = "_base") -> None:
        self.root = Path(root)
        self.instances = self.root / "instances"
        self.cache_name = cache_name
        self.cache = self.instances / cache_name
        self.cache.mkdir(parents=True)
        self.ages: dict[Path, float] = {}
        self._folders = 0
        self.scanner: Scanner | None = None
        self.inventory: Inventory | None = None

    # -- the cache ------------------------------------------------------------------

    def base(self, name: str, age: float = 0, size: int = GiB, data: bytes = b"") -> Path:
        """A sparse raw file in the cache, `age` seconds old at NOW."""
        path = make_raw(self.cache / name, size, data)
        self.age(path, age)
        return path

    def qcow2_base(self, name: str, backing: str, age: float = 0,
                   backing_fmt: str = "raw") -> Path:
        """A qcow2 file in the cache backed by `backing` (as written in its header)."""
        path = make_qcow2(self.cache / name, backing, backing_fmt)
        self.age(path, age)
        return path

    def original(self, seed: str, age: float = 0, size: int = GiB, data: bytes = b"") -> Path:
        """An original image's base: named sha1(seed)."""
        return self.base(sha1(seed), age, size, data)

    def age(self, path: str | os.PathLike[str], age: float) -> None:
        """Set (and remember) a file's age; re-applied before every scan."""
        self.ages[Path(path)] = age
        set_age(path, age)

    def settle(self) -> None:
        for path, age in self.ages.items():
            if os.path.lexists(path):
                set_age(path, age)

    # -- instance folders -----------------------------------------------------------

    def folder(self, name: str | None = None, kind: str = "uuid") -> Path:
        """An instance folder: kind 'uuid', 'legacy', 'resize' or 'del' (name generated),
        or an explicit name."""
        if name is None:
            self._folders += 1
            uuid = uuid_for(self._folders)
            name = {
                "uuid": uuid,
                "legacy": f"instance-{self._folders:08x}",
                "resize": f"{uuid}_resize",
                "del": f"{uuid}_del",
            }[kind]
        path = self.instances / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def disk(
        self,
        folder: Path,
        backing: str | os.PathLike[str] | None,
        name: str = "disk",
        relative: bool = True,
        backing_fmt: str = "raw",
        unsafe: bool = False,
    ) -> Path:
        """A qcow2 disk in `folder` backed by `backing`: written relative to the folder
        (nova's old style and any hand-made chain) or absolute (nova's usual style).
        `unsafe` writes the name without opening it (for a backing file that is missing)."""
        target: str | None = None
        if backing is not None:
            target = os.fspath(backing)
            if relative and os.path.isabs(target):
                target = os.path.relpath(target, folder)
        extra = ("-u",) if unsafe else ()
        return make_qcow2(folder / name, target, backing_fmt, extra_args=extra)

    # -- running novakeeper ---------------------------------------------------------

    spawn_window = 0.0
    """Folders are made now, but the policy's clock is NOW (2023): every folder would look
    young. Tests of the spawning hold set this and their own clock."""

    def scan(self) -> Inventory:
        self.settle()
        self.scanner = Scanner(os.fspath(self.instances), self.cache_name,
                               spawn_window=self.spawn_window)
        self.inventory = self.scanner.scan(now=NOW)
        return self.inventory

    config: PolicyConfig | None = None
    """The policy of the last plan: the executor re-checks by the same rules."""

    observed: Observed | None = None
    """What the last plan observed besides the inventory: the re-check reads it too."""

    def plan(self, config: PolicyConfig | None = None, now: float = NOW,
             observed: Observed | None = None) -> Plan:
        inventory = self.scan()
        self.config = config or PolicyConfig()
        self.observed = observed
        return decide(inventory, self.config, now, observed)

    def execute(self, plan: Plan, touch_in_use: bool = True) -> Report:
        assert self.scanner is not None and self.inventory is not None, "plan first"
        rejudge = None
        if self.observed is not None:
            config, observed = self.config or PolicyConfig(), self.observed

            def rejudge(inv: Inventory, now: float, ds: Sequence[Decision]
                        ) -> dict[str, str | None]:
                return recheck(inv, config, now, observed, ds)
        return Executor(self.scanner, self.inventory, plan, touch_in_use,
                        config=self.config, rejudge=rejudge).run()


def by_name(plan: Plan) -> dict[str, Decision]:
    return {d.name: d for d in plan.decisions}


def verdicts(plan: Plan, names: Iterable[str] | None = None) -> dict[str, str]:
    """name -> verdict string, for all decisions or the given names."""
    decisions = by_name(plan)
    wanted = decisions if names is None else names
    return {n: str(decisions[n].verdict) for n in wanted}


def node(tmp_path: str | os.PathLike[str]) -> Node:
    """A fresh node under tmp_path: instances/ and instances/_base/."""
    return Node(tmp_path)
