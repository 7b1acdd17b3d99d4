"""Weeks of image churn on one compute node, simulated day by day with an injected clock:
images arrive, instances boot and go, usage is recorded in a real SQLite state database,
the policy plans each day and its removals are applied to the model.

The model keeps its own memory of when each base was last in use, so the checks do not
read the answers back from the code under test: least-recently-used order, the
watermarks' hysteresis across days, pins and in-use bases kept, the shortfall reported
when what is left is in use, and a lost database rebuilt mid-way. Inventories are data
(tests/_inventory_data.py), so six weeks take milliseconds.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from _inventory_data import DAY, HOUR, GiB, base_file, inventory, sha1
from novakeeper.cache.budget import BudgetConfig, FsUsage, watermarks
from novakeeper.cache.plan import Plan, Verdict
from novakeeper.cache.policy import Observed, PolicyConfig, decide
from novakeeper.state import usage
from novakeeper.state.db import open_state
from novakeeper.state.pins import Pin, Pins

T0 = 1_700_000_000.0
GOLDEN = "golden-image"  # a Glance id, pinned in nova.conf
FS_SIZE = 100 * GiB
OTHER_USED = 40 * GiB  # instance disks and the rest of the file system


@dataclass
class Image:
    name: str
    size: int
    mtime: float
    known_last_use: float | None = None
    """When the state database last saw it in use (the model's copy of that memory)."""
    true_last_use: float | None = None


@dataclass
class Model:
    rng: random.Random
    touch: bool
    """Bases in use get their mtime set to now each day (nova's manager, `clean`)."""
    images: dict[str, Image] = field(default_factory=dict)
    instances: dict[str, str] = field(default_factory=dict)
    counter: int = 0

    def arrive(self, name: str, now: float, size: int | None = None) -> None:
        size = size if size is not None else self.rng.randint(1, 4) * GiB
        self.images[name] = Image(name, size, now - 2 * HOUR)  # downloaded this morning

    def boot(self, name: str) -> None:
        self.counter += 1
        self.instances[f"instance-{self.counter:08x}"] = name

    def in_use(self) -> set[str]:
        return set(self.instances.values())

    def churn(self, day: int, now: float) -> None:
        for instance in sorted(self.instances):
            if self.rng.random() < 0.35:
                del self.instances[instance]
        for _ in range(self.rng.choice([0, 1, 1, 2])):
            self.counter += 1
            name = sha1(f"image-{self.counter}")
            self.arrive(name, now)
            if self.rng.random() < 0.8:
                self.boot(name)
        # an older image booted again; evicted ones are downloaded anew
        if day and self.rng.random() < 0.5:
            name = sha1(f"image-{self.rng.randint(1, self.counter)}")
            if name not in self.images:
                self.arrive(name, now)
            self.boot(name)
        for name in self.in_use():
            image = self.images[name]
            image.known_last_use = image.true_last_use = now
            if self.touch:
                image.mtime = now

    def cache_bytes(self) -> int:
        return sum(i.size for i in self.images.values())

    def scan(self, now: float):
        users: dict[str, list[str]] = defaultdict(list)
        for instance, name in self.instances.items():
            users[name].append(instance)
        bases = [base_file(i.name, i.size, i.mtime) for i in self.images.values()]
        return inventory(bases, users, scanned_at=now)

    def forget(self) -> None:
        """The state database was lost: its memory of past use is gone."""
        for image in self.images.values():
            image.known_last_use = None


def check_plan(model: Model, plan: Plan, now: float, pinned: set[str],
               min_idle: float) -> list[str]:
    """The invariants every day's plan must hold; returns the evictions in LRU order."""
    in_use = model.in_use()
    removed = {d.name for d in plan.removals}
    assert not removed & in_use, "an in-use base was chosen"
    assert not removed & pinned, "a pinned base was chosen"
    decisions = {d.name: d for d in plan.decisions}
    assert {n for n in in_use if n in decisions} <= {
        n for n, d in decisions.items() if d.verdict is Verdict.IN_USE}

    def key(image: Image) -> tuple[float, str]:
        when = image.known_last_use if image.known_last_use is not None else image.mtime
        return when, image.name

    eligible = sorted(
        (i for i in model.images.values()
         if i.name not in in_use and i.name not in pinned
         and decisions[i.name].verdict is not Verdict.REMOVE
         and now - max(i.mtime, i.known_last_use or i.mtime) >= min_idle),
        key=key)
    evicted = [d for d in plan.decisions if d.verdict is Verdict.EVICT]
    # the evictions are the least recently used eligible bases, none skipped
    assert sorted(d.name for d in evicted) == sorted(i.name for i in eligible[:len(evicted)])
    if plan.shortfall:
        assert len(evicted) == len(eligible), "a shortfall with an eligible base left"
    elif evicted:  # and no more than needed: without the last one the need is not met
        assert plan.frees - max(evicted, key=lambda d: key(model.images[d.name])).frees \
            < plan.budget.need
    return [i.name for i in eligible[:len(evicted)]]


def fs_now(model: Model) -> FsUsage:
    used = OTHER_USED + model.cache_bytes()
    return FsUsage(FS_SIZE, used, FS_SIZE - used)


def test_six_weeks_of_churn_under_watermarks(tmp_path):
    model = Model(random.Random(20240501), touch=False)
    pins = Pins((Pin("image", GOLDEN, "config"),))
    golden = sha1(GOLDEN)
    budget = BudgetConfig(high_watermark=85, low_watermark=75, eviction_min_age_seconds=HOUR)
    config = PolicyConfig(remove_unused_original_minimum_age_seconds=30 * DAY, budget=budget)
    high, low = watermarks(budget)
    db = open_state(str(tmp_path / "nk" / "state.db"), write=True)
    model.arrive(golden, T0, size=6 * GiB)
    model.boot(golden)
    days: list[tuple[float, int, float]] = []  # used % before, evictions, used % after
    lru_days = 0
    try:
        for day in range(42):
            now = T0 + day * DAY
            if day == 2:  # the golden image's last instance goes: it will be the oldest
                model.instances = {k: v for k, v in model.instances.items() if v != golden}
            model.churn(day, now)
            inv = model.scan(now)
            records = usage.record(db, inv, now)
            fs = fs_now(model)
            plan = decide(inv, config, now, Observed(
                fs=fs, last_used=usage.last_used_map(records), pins=pins))
            lru = check_plan(model, plan, now, {golden}, HOUR)
            if len(lru) > 1:
                # the order is really least recently used: older keys go first
                lru_days += 1
            for d in plan.removals:
                del model.images[d.name]
            after = fs_now(model)
            days.append((fs.used_percent, len(lru), after.used_percent))
            if plan.shortfall == 0 and fs.used_percent > high:
                assert after.used_percent <= low + 1e-9, (day, fs, after)
            assert golden in model.images
    finally:
        db.close()

    evicting = [d for d in days if d[1]]
    between = [d for d in days if low < d[0] <= high]
    assert len(evicting) >= 4, days  # the budget was really exercised
    assert lru_days >= 2
    assert between, days  # days between the watermarks happened ...
    assert all(n == 0 for _, n, _ in between)  # ... and on none of them was anything evicted
    assert all(before > high for before, n, _ in days if n)  # eviction only above high


def test_a_pinned_and_in_use_node_reports_its_shortfall(tmp_path):
    """Everything left is in use or pinned: the plan says by how much it cannot meet the
    budget and where the bytes are, and still evicts whatever it may."""
    model = Model(random.Random(7), touch=True)
    golden = sha1(GOLDEN)
    pins = Pins((Pin("image", GOLDEN, "state"),))
    config = PolicyConfig(budget=BudgetConfig(max_cache_size=10 * GiB))
    db = open_state(str(tmp_path / "nk" / "state.db"), write=True)
    try:
        model.arrive(golden, T0 - 20 * DAY, size=4 * GiB)
        for n in range(5):
            model.arrive(sha1(f"busy-{n}"), T0 - 10 * DAY, size=2 * GiB)
            model.boot(sha1(f"busy-{n}"))
        model.arrive(sha1("idle"), T0 - 5 * DAY, size=3 * GiB)
        for day in range(3):
            now = T0 + day * DAY
            inv = model.scan(now)
            records = usage.record(db, inv, now)
            plan = decide(inv, config, now, Observed(last_used=usage.last_used_map(records),
                                                     pins=pins))
            check_plan(model, plan, now, {golden}, HOUR)
            for d in plan.removals:
                del model.images[d.name]
            # 10 GiB in use, 4 pinned, the 3 GiB idle base evicted on day 0
            assert plan.shortfall == 4 * GiB
            assert plan.budget.kept == {"in-use": 10 * GiB, "pinned": 4 * GiB}
            assert [d.name for d in plan.removals] == ([sha1("idle")] if day == 0 else [])
            assert "CANNOT MEET BUDGET: 4.0 GiB short (what remains is in-use 10.0 GiB, " \
                   "pinned 4.0 GiB)" in plan.budget.words()
    finally:
        db.close()


def test_a_database_lost_mid_way_is_rebuilt_and_eviction_goes_on(tmp_path, caplog):
    """Without touching, the database is the only memory of use: once lost, bases not
    seen in use since are ordered by mtime (a warning says so), never a crash."""
    model = Model(random.Random(99), touch=False)
    config = PolicyConfig(remove_unused_original_minimum_age_seconds=60 * DAY,
                          budget=BudgetConfig(max_cache_size=25 * GiB))
    path = Path(tmp_path / "nk" / "state.db")
    db = open_state(str(path), write=True)
    fallback = 0  # evictions ordered by mtime although the base had been in use
    try:
        for day in range(28):
            now = T0 + day * DAY
            if day == 14:
                db.close()
                for p in path.parent.iterdir():
                    p.unlink()
                caplog.clear()
                db = open_state(str(path), write=True)
                assert any("No state database" in r.getMessage()
                           for r in caplog.records if r.levelno == logging.WARNING)
                model.forget()
            model.churn(day, now)
            inv = model.scan(now)
            records = usage.record(db, inv, now)
            plan = decide(inv, config, now, Observed(last_used=usage.last_used_map(records)))
            lru = check_plan(model, plan, now, set(), HOUR)
            fallback += sum(1 for n in lru if model.images[n].known_last_use is None
                            and model.images[n].true_last_use is not None)
            for d in plan.removals:
                del model.images[d.name]
            assert plan.shortfall or model.cache_bytes() <= 25 * GiB
    finally:
        db.close()
    assert fallback > 0  # the loss did change the order: the scenario tests something
