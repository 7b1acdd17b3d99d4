"""One judgement: the executor's re-check under nova's lock (`policy.recheck`) and the plan
(`policy.decide`) decide through the same rules. On the same inventory and observations,
the re-check lets a file go exactly when the plan removes it, for every verdict path;
and when the node changes after the plan, the re-check answers in the plan's words."""

from __future__ import annotations

from dataclasses import replace

import pytest
from _tree import DAY, NOW, Node, by_name, sha1, truncate

from novakeeper.cache.budget import BudgetConfig
from novakeeper.cache.inventory import Inventory
from novakeeper.cache.plan import Plan, Verdict
from novakeeper.cache.policy import Observed, PolicyConfig, decide, recheck
from novakeeper.images.catalog import ImageFacts
from novakeeper.state.pins import Pin, Pins
from novakeeper.usage.base import Sighting

OLD = 30 * DAY


def agrees(inventory: Inventory, config: PolicyConfig, observed: Observed) -> Plan:
    """Plan, then re-check every decision on the same inputs: they must agree."""
    plan = decide(inventory, config, NOW, observed)
    again = recheck(inventory, config, NOW, observed, plan.decisions)
    disagreements = {d.name: (str(d.verdict), again[d.name]) for d in plan.decisions
                     if (again[d.name] is None) != d.removes}
    assert not disagreements
    return plan


@pytest.fixture
def inventory(tmp_path) -> Inventory:
    """Every verdict path on one real node."""
    node = Node(tmp_path)
    used = node.original("used", age=OLD)
    node.disk(node.folder(), used)
    node.original("old", age=OLD)  # remove
    node.original("young", age=60)  # too-young
    node.base(f"{sha1('dead')}.part", age=OLD)  # stale-partial
    node.base(f"{sha1('live')}.part", age=60)  # downloading
    node.original("live", age=OLD)  # held: its own fetch is in progress
    node.base("swap_512", age=OLD)  # held: a corrupt disk.swap could use it
    truncate(node.disk(node.folder(), node.cache / "swap_512", name="disk.swap"))
    node.original("pinned", age=OLD)  # pinned
    node.original("seen", age=OLD)  # in use: another source saw it
    node.base("README", age=OLD)  # unknown
    node.original("evictable", age=OLD, size=1 << 20, data=b"e" * (1 << 16))
    node.original("lastcopy", age=OLD)  # last-copy: image deleted, an instance names it
    node.original("deleted", age=2 * 3600)  # remove early: image deleted, unused 2 h
    return node.scan()


PINS = Pins((Pin("image", "pinned", "config"),))
SEEN = {sha1("seen"): [Sighting("open-files", "pid 42 (qemu)")],
        sha1("lastcopy"): [Sighting("nova-api", "instance i-1 (ACTIVE) on here")]}
IMAGES = {sha1(i): ImageFacts(i, "deleted", f"img-{i}") for i in ("lastcopy", "deleted")}


@pytest.mark.parametrize("config", [
    PolicyConfig(),
    PolicyConfig(remove_unused_base_images=False),  # kept-by-config
    PolicyConfig(remove_unused_original_minimum_age_seconds=0, spawn_hold_seconds=0),
    PolicyConfig(remove_unused_original_minimum_age_seconds=100 * DAY,
                 budget=BudgetConfig(max_cache_size=1, eviction_min_age_seconds=0)),
], ids=["defaults", "keep-by-config", "zero-ages", "budget"])
def test_every_verdict_path_is_judged_alike(inventory: Inventory, config: PolicyConfig
                                            ) -> None:
    plan = agrees(inventory, config, Observed(pins=PINS, sightings=SEEN, images=IMAGES))
    seen = {str(d.verdict) for d in plan.decisions}
    assert {"in-use", "held", "pinned", "unknown"} <= seen
    assert seen & {"remove", "evict", "kept-by-config", "too-young"}


def test_the_paths_are_all_there(inventory: Inventory) -> None:
    """The fixture really covers every verdict across the configurations above."""
    seen: set[str] = set()
    for config in (PolicyConfig(), PolicyConfig(remove_unused_base_images=False),
                   PolicyConfig(remove_unused_original_minimum_age_seconds=100 * DAY,
                                budget=BudgetConfig(max_cache_size=1,
                                                    eviction_min_age_seconds=0))):
        plan = agrees(inventory, config, Observed(pins=PINS, sightings=SEEN, images=IMAGES))
        seen |= {str(d.verdict) for d in plan.decisions}
    assert seen == {str(v) for v in Verdict}
    plan = agrees(inventory, PolicyConfig(), Observed(pins=PINS, sightings=SEEN,
                                                      images=IMAGES))
    assert by_name(plan)[sha1("lastcopy")].verdict is Verdict.LAST_COPY
    assert by_name(plan)[sha1("deleted")].verdict is Verdict.REMOVE  # 2 h, not 24 h
    released = agrees(inventory, PolicyConfig(), Observed(
        pins=PINS, sightings=SEEN, images=IMAGES, released={sha1("lastcopy"): "released"}))
    assert by_name(released)[sha1("lastcopy")].verdict is Verdict.REMOVE
    failed = agrees(inventory, PolicyConfig(), Observed(source_errors=("nova-api: down",)))
    assert by_name(failed)[sha1("old")].verdict is Verdict.HELD


def test_a_change_after_the_plan_is_answered_in_the_plans_words(inventory: Inventory
                                                                 ) -> None:
    plan = decide(inventory, PolicyConfig(), NOW, Observed())
    old = by_name(plan)[sha1("old")]
    assert old.removes
    # a usage source now sees it; then a pin; then the file is touched; then gone
    seen = Observed(sightings={old.name: [Sighting("libvirt", "domain instance-1")]})
    assert recheck(inventory, PolicyConfig(), NOW, seen, [old])[old.name] == (
        "now in use: libvirt: domain instance-1")
    pinned = Observed(pins=Pins((Pin("file", old.name, "state"),)))
    assert recheck(inventory, PolicyConfig(), NOW, pinned, [old])[old.name].startswith(
        "now pinned: ")
    touched = replace(inventory, bases=tuple(replace(b, mtime=b.mtime + 1)
                                             if b.name == old.name else b
                                             for b in inventory.bases))
    assert recheck(touched, PolicyConfig(), NOW, Observed(), [old])[old.name].startswith(
        "modified since the plan")
    gone = replace(inventory, bases=tuple(b for b in inventory.bases if b.name != old.name))
    assert recheck(gone, PolicyConfig(), NOW, Observed(), [old])[old.name] == "already gone"
