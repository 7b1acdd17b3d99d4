"""The policy's Glance rules on real trees: last copies, bases at risk, deleted images
first, releases; and what the exporter and `cache release` make of them. Glance's
answers are data here (ImageFacts); tests/glance/ gets them from a real Glance."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _tree import DAY, HOUR, MiB, Node, by_name, sha1

from novakeeper.cache.budget import BudgetConfig
from novakeeper.cache.plan import Verdict
from novakeeper.cache.policy import Observed, PolicyConfig
from novakeeper.images.catalog import ImageFacts
from novakeeper.service.metrics import Metrics
from novakeeper.state import releases
from novakeeper.state.db import open_state
from novakeeper.usage.base import Sighting

NAMED = [Sighting("nova-api", "instance i-1 (ACTIVE) on node-1"),
         Sighting("nova-api", "instance i-2 (SHUTOFF) on node-1 as its kernel")]


def facts(seed: str, status: str) -> ImageFacts:
    return ImageFacts(seed, status, f"name-{seed}", "public", "sha512", "ab" * 64)


def test_a_last_copy_is_kept_with_the_instances_that_need_it(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.original("gone", age=30 * DAY)
    node.original("gone-in-use", age=30 * DAY)
    node.disk(node.folder(), node.cache / sha1("gone-in-use"))
    node.original("active-named", age=30 * DAY)
    observed = Observed(
        images={sha1("gone"): facts("gone", "deleted"),
                sha1("gone-in-use"): facts("gone-in-use", "deactivated"),
                sha1("active-named"): facts("active-named", "active")},
        sightings={sha1("gone"): NAMED, sha1("active-named"): NAMED[:1]})
    plan = by_name(node.plan(PolicyConfig(), observed=observed))

    last = plan[sha1("gone")]
    assert last.verdict is Verdict.LAST_COPY and not last.removes
    assert last.named_by == ("instance i-1 (ACTIVE) on node-1",
                             "instance i-2 (SHUTOFF) on node-1 as its kernel")
    assert "`novakeeper cache release gone`" in last.reason
    assert last.to_dict()["image"]["status"] == "deleted"
    at_risk = plan[sha1("gone-in-use")]
    assert at_risk.verdict is Verdict.IN_USE and "AT RISK" in at_risk.reason
    assert "deactivated" in at_risk.reason
    assert plan[sha1("active-named")].verdict is Verdict.IN_USE  # Glance can give it again

    # released: judged like any unused base of a deleted image
    released = Observed(images=observed.images, sightings=observed.sightings,
                        released={sha1("gone"): "last copy released by an operator"})
    plan = by_name(node.plan(PolicyConfig(), observed=released))
    assert plan[sha1("gone")].verdict is Verdict.REMOVE
    assert "released by an operator" in plan[sha1("gone")].reason
    assert plan[sha1("gone-in-use")].verdict is Verdict.IN_USE  # a disk beats a release
    report = node.execute(node.plan(PolicyConfig(), observed=released))
    assert [o.name for o in report.removed] == [sha1("gone")]


def test_deleted_images_go_after_an_hour_and_first_under_a_budget(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.original("deleted", age=2 * HOUR, size=MiB, data=b"d" * 4096)
    node.original("deactivated", age=2 * HOUR, size=MiB, data=b"x" * 4096)
    node.original("active-old", age=20 * HOUR, size=MiB, data=b"a" * 4096)
    node.original("unlisted", age=20 * HOUR, size=MiB, data=b"u" * 4096)
    images = {sha1("deleted"): facts("deleted", "deleted"),
              sha1("deactivated"): facts("deactivated", "deactivated"),
              sha1("active-old"): facts("active-old", "active")}
    plan = by_name(node.plan(PolicyConfig(), observed=Observed(images=images)))
    assert plan[sha1("deleted")].verdict is Verdict.REMOVE
    assert plan[sha1("deactivated")].verdict is Verdict.REMOVE
    assert plan[sha1("active-old")].verdict is Verdict.TOO_YOUNG  # nova's 24 h
    assert plan[sha1("unlisted")].image is None  # never listed: nova's rules only

    # under a budget: gone images first, though the active one is less recently used
    config = PolicyConfig(deleted_image_min_age_seconds=DAY,
                          budget=BudgetConfig(max_cache_size=8192,
                                              eviction_min_age_seconds=0))
    p = node.plan(config, observed=Observed(images=images))
    assert [d.name for d in p.removals][:2] == sorted(
        [sha1("deleted"), sha1("deactivated")],
        key=lambda n: (by_name(p)[n].idle_since(), n))
    assert "evicted first" in by_name(p)[sha1("deleted")].reason

    # Glance down: "unknown" acts like no answer at all
    unknown = {h: ImageFacts(f.image_id, "unknown", f.name) for h, f in images.items()}
    plan = by_name(node.plan(PolicyConfig(), observed=Observed(images=unknown)))
    assert plan[sha1("deleted")].verdict is Verdict.TOO_YOUNG


def test_metrics_count_bases_of_deleted_images_and_fetches(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.original("deleted", age=2 * HOUR, size=MiB, data=b"d" * 8192)
    node.original("deactivated", age=2 * HOUR, size=MiB, data=b"x" * 8192)
    images = {sha1("deleted"): facts("deleted", "deleted"),
              sha1("deactivated"): facts("deactivated", "deactivated")}
    plan = node.plan(PolicyConfig(), observed=Observed(images=images))
    metrics = Metrics()
    assert node.inventory is not None
    metrics.observe_plan(node.inventory, plan)
    metrics.observe_fetches(3, 12345, 1)
    out = tmp_path / "m.prom"
    metrics.write_textfile(str(out))
    text = out.read_text()
    deleted = by_name(plan)[sha1("deleted")].allocated
    assert 'novakeeper_cache_deleted_image_bases{status="deleted"} 1.0' in text
    assert 'novakeeper_cache_deleted_image_bases{status="deactivated"} 1.0' in text
    assert f'novakeeper_cache_deleted_image_bytes{{status="deleted"}} {float(deleted)}' in text
    assert "novakeeper_cache_fetches_total 3.0" in text
    assert "novakeeper_cache_fetched_bytes_total 12345.0" in text
    assert "novakeeper_cache_fetch_failures_total 1.0" in text


def test_cache_release_records_and_takes_back(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "novakeeper", "--instances-path",
                               str(tmp_path), "cache", "release", *args],
                              capture_output=True, text=True, timeout=60)

    done = cli("img-1", "--note", "rebuilt elsewhere")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"released image img-1 (cache name {sha1('img-1')})")
    assert "already released" in cli("img-1").stdout

    db = open_state(os.environ["OS_NOVAKEEPER__STATE_PATH"], write=False)
    try:
        assert releases.load(db)[sha1("img-1")].endswith(": rebuilt elsewhere")
    finally:
        db.close()
    assert cli("--undo", "img-1").returncode == 0
    again = cli("--undo", "img-1")
    assert again.returncode == 2 and again.stderr.strip() == (
        "novakeeper: error: img-1 is not released")
    assert cli(" ").returncode == 2


def test_a_fresh_stored_catalog_answers_without_glance(tmp_path: Path) -> None:
    """Within glance_refresh_seconds the state database answers, for the cache's hashes
    only; an image id learned since (a fetch, a pin) makes the pass ask Glance again."""
    from novakeeper.images import catalog

    def never() -> Any:
        raise AssertionError("Glance was asked")

    db = open_state(str(tmp_path / "state.db"), write=True)
    try:
        with db.write() as conn:
            conn.executemany(
                "INSERT INTO glance_images (hash, image_id, name, status, checked_at) "
                "VALUES (?, ?, ?, ?, 0)",
                [(sha1(f"img-{i}"), f"img-{i}", f"name-{i}", "active") for i in range(50)])
            conn.execute("INSERT INTO glance_refresh (id, at, ok, sees_all) VALUES "
                         "(1, 1000, 1, 1)")
        cat = catalog.refresh(db, never, 1000 + 599, 600,
                              wanted={sha1("img-3"), sha1("not-listed")})
        assert set(cat.by_hash) == {sha1("img-3")} and not cat.asked
        assert cat.by_hash[sha1("img-3")].name == "name-3"
        with pytest.raises(AssertionError, match="Glance was asked"):
            catalog.refresh(db, never, 1000 + 600, 600)  # the interval is over
        with pytest.raises(AssertionError, match="Glance was asked"):  # a pin's id
            catalog.refresh(db, never, 1000 + 1, 600, extra_ids={sha1("new"): "new"})
        with db.write() as conn:  # an id learned by `cache fetch` or `cache verify`
            conn.execute("INSERT INTO image_ids VALUES (?, 'fresh', 'fetch', 0)",
                         (sha1("fresh"),))
        with pytest.raises(AssertionError, match="Glance was asked"):
            catalog.refresh(db, never, 1000 + 1, 600)
    finally:
        db.close()
