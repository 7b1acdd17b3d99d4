"""Property tests over random real trees: random bases of every kind and age, random
instance folders of random disks backed by random bases (some through an intermediate
qcow2, chains of depth 2 and 3), some disks truncated or naming a missing backing file,
random policy ages (0 included).

Each tree is real: qcow2 files made by qemu-img. To stay fast, one qcow2 is made per
distinct backing name (names are relative, so they mean the same thing in every tree) and
copied wherever that backing name is needed: the backing name lives in the header.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _tree import DAY, HOUR, NOW, MiB, Node, make_qcow2, sha1, uuid_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from novakeeper.cache.executor import Action
from novakeeper.cache.policy import Observed, PolicyConfig, recheck
from novakeeper.images.catalog import GONE, ImageFacts
from novakeeper.usage.base import Sighting

KINDS = ("original", "resized", "swap", "ephemeral", "partial", "converted", "info")
PARTIALS = {"partial", "converted", "info"}
DISK_CLASS = {
    "disk": {"original", "resized"},
    "disk.rescue": {"original", "resized"},
    "disk.local": {"ephemeral"},
    "disk.eph0": {"ephemeral"},
    "disk.swap": {"swap"},
}
DISK_NAMES = (*DISK_CLASS, "disk.config", "extra.qcow2")
FOLDER_KINDS = ("uuid", "legacy", "resize", "del")
MISSING = sha1("never-downloaded")
STATUSES = ("active", "deleted", "deactivated", "unknown", "queued")

ages = st.one_of(
    st.sampled_from([0, 1, HOUR - 1, HOUR, HOUR + 1, DAY - 1, DAY, DAY + 1]),
    st.integers(0, 30 * DAY),
)
limits = st.one_of(st.sampled_from([0, 1, HOUR, DAY]), st.integers(0, 2 * DAY))


def class_of(disk_name: str) -> set[str]:
    """Kinds a disk of this name could use (written out here, not taken from src)."""
    return DISK_CLASS.get(disk_name, set(KINDS))


@dataclass
class BaseSpec:
    name: str
    kind: str
    age: int
    over: int | None = None  # a qcow2 over the original at this index


@dataclass
class DiskSpec:
    folder: int
    name: str
    target: tuple[str, int]  # ("base", i) | ("mid", k) | ("missing", 0)
    cut: int | None  # truncated to this many bytes


@dataclass
class TreeSpec:
    bases: list[BaseSpec]
    mids: list[int]  # <root>/shared/mid_<k>.qcow2 over base index
    folders: list[str]
    disks: list[DiskSpec]
    config: PolicyConfig
    statuses: dict[int, str] = field(default_factory=dict)
    """Image index -> Glance's status (absent: Glance never listed it)."""
    named: set[int] = field(default_factory=set)
    """Images an instance names (the Nova API's sightings)."""
    released: set[int] = field(default_factory=set)

    def observed(self) -> Observed:
        images = {sha1(f"image-{i}"): ImageFacts(f"image-{i}", status)
                  for i, status in self.statuses.items()}
        # by file name, for the kinds the Nova API's image hashes match (usage/collect.py)
        seen = {self.bases[i].name: [Sighting("nova-api", f"instance {uuid_for(i + 50)}")]
                for i in self.named if self.bases[i].kind in ("original", "resized")}
        released = {sha1(f"image-{i}"): "released" for i in self.released}
        return Observed(images=images, sightings=seen, released=released)


def base_name(kind: str, i: int) -> str:
    h = sha1(f"image-{i}")
    return {
        "original": h,
        "resized": f"{h}_{10 + i}",
        "swap": f"swap_{(i + 1) * 512}",
        "ephemeral": f"ephemeral_{i + 1}_0706d66",
        "partial": f"{h}.part",
        "converted": f"{h}.converted",
        "info": f"{h}.info",
    }[kind]


@st.composite
def trees(draw: st.DrawFn) -> TreeSpec:
    n = draw(st.integers(2, 8))
    bases: list[BaseSpec] = []
    for i in range(n):
        kind = draw(st.sampled_from(KINDS))
        spec = BaseSpec(base_name(kind, i), kind, draw(ages))
        originals = [j for j, b in enumerate(bases) if b.kind == "original"]
        if kind == "resized" and originals and draw(st.booleans()):
            spec.over = draw(st.sampled_from(originals))  # chain inside the cache
        bases.append(spec)
    mids = draw(st.lists(st.integers(0, n - 1), max_size=3))
    folders = draw(st.lists(st.sampled_from(FOLDER_KINDS), min_size=1, max_size=5))
    disks: list[DiskSpec] = []
    for f in range(len(folders)):
        for name in draw(st.lists(st.sampled_from(DISK_NAMES), min_size=1, max_size=4,
                                  unique=True)):
            choices = [("base", i) for i in range(n)] + [("mid", k) for k in range(len(mids))]
            choices.append(("missing", 0))
            target = draw(st.sampled_from(choices))
            cut = draw(st.sampled_from([None, None, 8, 20, 71, 100]))  # bytes kept
            disks.append(DiskSpec(f, name, target, cut))
    config = PolicyConfig(
        remove_unused_base_images=draw(st.sampled_from([True, True, True, False])),
        remove_unused_original_minimum_age_seconds=draw(limits),
        remove_unused_resized_minimum_age_seconds=draw(limits),
        stale_partial_seconds=draw(limits),
        deleted_image_min_age_seconds=draw(limits),
    )
    statuses = draw(st.dictionaries(st.integers(0, n - 1), st.sampled_from(STATUSES)))
    named = draw(st.sets(st.integers(0, n - 1)))
    released = draw(st.sets(st.integers(0, n - 1)))
    return TreeSpec(bases, mids, folders, disks, config, statuses, named, released)


class Templates:
    """One qcow2 per (backing name, format), made once and copied into every tree."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.made: dict[tuple[str, str], Path] = {}

    def copy(self, dest: Path, backing: str, fmt: str) -> Path:
        key = (backing, fmt)
        if key not in self.made:
            self.made[key] = make_qcow2(self.folder / f"t{len(self.made)}.qcow2", backing, fmt,
                                        extra_args=("-u",))
        shutil.copyfile(self.made[key], dest)
        return dest


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Templates:
    return Templates(tmp_path_factory.mktemp("templates"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trees")


def build(spec: TreeSpec, root: Path, templates: Templates) -> tuple[Node, set[str], set[str]]:
    """Make the tree; return the node, the cache files readable chains reach (protected)
    and the kinds that unreadable disks or broken chains could use (held)."""
    node = Node(root)
    fmt = {}
    for b in spec.bases:
        path = node.cache / b.name
        if b.over is None:
            node.base(b.name, age=b.age, size=4 * MiB, data=b.name.encode())
            fmt[b.name] = "raw"
        else:
            templates.copy(path, spec.bases[b.over].name, "raw")
            node.age(path, b.age)
            fmt[b.name] = "qcow2"

    def chain_of(i: int) -> set[str]:
        b = spec.bases[i]
        return {b.name} | (chain_of(b.over) if b.over is not None else set())

    # intermediates live outside the instances folder: not disks themselves, they are
    # reached only through the disks' chains (disk -> mid -> [resized ->] original)
    shared = root / "shared"
    shared.mkdir()
    # a qcow2 cache file keeps the files it is backed by, whether or not a disk uses it
    protected: set[str] = set()
    for b in spec.bases:
        if b.over is not None:
            protected |= chain_of(b.over)
    for k, i in enumerate(spec.mids):
        name = spec.bases[i].name
        templates.copy(shared / f"mid_{k}.qcow2", f"../instances/_base/{name}", fmt[name])

    folders = []
    for f, kind in enumerate(spec.folders):
        uuid = uuid_for(f + 1)
        name = {"uuid": uuid, "legacy": f"instance-{f + 1:08x}", "resize": f"{uuid}_resize",
                "del": f"{uuid}_del"}[kind]
        folders.append(node.folder(name))
    held: set[str] = set()
    for d in spec.disks:
        dest = folders[d.folder] / d.name
        what, i = d.target
        if what == "base":
            name = spec.bases[i].name
            templates.copy(dest, f"../_base/{name}", fmt[name])
            chain = chain_of(i)
        elif what == "mid":
            templates.copy(dest, f"../../shared/mid_{i}.qcow2", "qcow2")
            chain = chain_of(spec.mids[i])
        else:
            templates.copy(dest, f"../_base/{MISSING}", "raw")
            chain = set()
            held |= class_of(d.name)
        if d.cut is None:
            protected |= chain
        else:
            os.truncate(dest, d.cut)
            held |= class_of(d.name)
    return node, protected, held


def expected_verdict(b: BaseSpec, protected: set[str], held: set[str],
                     config: PolicyConfig, spec: TreeSpec | None = None, i: int = 0) -> str:
    image_kind = b.kind in ("original", "resized")
    gone = spec is not None and image_kind and spec.statuses.get(i) in GONE
    named = spec is not None and image_kind and i in spec.named
    released = spec is not None and i in spec.released
    if b.name in protected:
        return "in-use"
    if gone and named and not released:
        return "last-copy"  # an instance names an image Glance no longer has
    if named and not (gone and released):
        return "in-use"  # the Nova API's sighting
    if b.kind in held:
        return "held"
    if not config.remove_unused_base_images:
        return "kept-by-config"
    if gone:
        normal = (config.remove_unused_resized_minimum_age_seconds if b.kind == "resized"
                  else config.remove_unused_original_minimum_age_seconds)
        limit = max(min(config.deleted_image_min_age_seconds, normal),
                    config.spawn_hold_seconds)
        return "remove" if b.age >= limit else "too-young"
    if b.kind in held:
        return "held"
    if not config.remove_unused_base_images:
        return "kept-by-config"
    if b.kind in PARTIALS:
        if b.age >= config.stale_partial_seconds:
            return "stale-partial"
        return "too-young" if b.kind == "info" else "downloading"
    limit = (config.remove_unused_resized_minimum_age_seconds if b.kind == "resized"
             else config.remove_unused_original_minimum_age_seconds)
    # nova touches a base right before its disk is made: never within the spawn hold
    return "remove" if b.age >= max(limit, config.spawn_hold_seconds) else "too-young"


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=trees())
def test_random_trees_never_lose_a_live_base(spec, templates, workdir):
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        node, protected, held = build(spec, Path(tmp), templates)

        observed = spec.observed()
        plan = node.plan(spec.config, observed=observed)
        removals = {d.name for d in plan.removals}
        # one judgement: the executor's re-check lets go exactly what the plan removes
        assert node.inventory is not None
        again = recheck(node.inventory, spec.config, NOW, observed, plan.decisions)
        assert {name for name, why in again.items() if why is None} == removals
        verdict = {d.name: str(d.verdict) for d in plan.decisions}

        # (1) nothing in a readable disk's chain is ever planned for removal
        assert not removals & protected
        # (3) no base of a kind an unreadable disk could use is removed
        assert not {d.kind for d in plan.removals} & held
        # and, more strictly, the whole plan is what the rules say, file by file
        assert verdict == {b.name: expected_verdict(b, protected, held, spec.config, spec, i)
                           for i, b in enumerate(spec.bases)}
        # (4) Glance's word acts only through the rules above: a last copy and the base
        # of an image Glance could not answer about ("unknown") are never removed for it
        for b in spec.bases:
            if verdict[b.name] == "last-copy":
                assert b.name not in removals

        report = node.execute(plan)

        # (2) after the executor, every file of every readable chain is still there
        for name in protected:
            assert (node.cache / name).exists(), name
        assert {o.name for o in report.removed} == removals
        assert not [o for o in report.outcomes if o.action is not Action.REMOVED]
        left = set(os.listdir(node.cache))
        assert left == {b.name for b in spec.bases} - removals
