"""Property tests of eviction: for random caches (kinds, sizes, ages, last-used times,
in-use, pinned, held and hard-linked files) and random budgets, the plan meets the budget
unless it reports a shortfall, never chooses an in-use, pinned or held file, chooses the
least recently used eligible files and no more than it needs.

Inventories are data (tests/_inventory_data.py), so hundreds of examples run in seconds.
The oracle for nova's age rules is the same policy without a budget: eviction may only
add EVICT verdicts on top of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _inventory_data import DAY, HOUR, KiB, MiB, base_file, inventory, sha1
from novakeeper.cache.budget import BudgetConfig, FsUsage, measure, watermarks
from novakeeper.cache.plan import Verdict
from novakeeper.cache.policy import Observed, PolicyConfig, decide, recheck
from novakeeper.images.catalog import ImageFacts
from novakeeper.state.pins import Pin, Pins

NOW = 1_700_000_000.0
EVICTABLE = {"original", "resized", "swap", "ephemeral"}


@dataclass(frozen=True)
class Spec:
    kind: str
    blocks: int
    age: int
    last_used_age: int | None
    in_use: bool
    pinned: str | None  # None, "image" or "file"
    held: bool
    nlink: int
    gone: str | None = None
    """Its image's status in Glance when deleted or deactivated (originals, resized)."""


def name_for(i: int, spec: Spec) -> str:
    h = sha1(f"image-{i}")
    return {"original": h, "resized": f"{h}_{i + 1}0737418240", "swap": f"swap_{i + 1}",
            "ephemeral": f"ephemeral_{i + 1}_0706d66", "partial": f"{h}.part",
            "unknown": f"notes-{i}.txt"}[spec.kind]


ages = st.one_of(st.sampled_from([0, 1, HOUR - 1, HOUR, DAY - 1, DAY]),
                 st.integers(0, 60 * DAY))
specs = st.builds(
    Spec,
    kind=st.sampled_from(["original", "original", "original", "resized", "swap",
                          "ephemeral", "partial", "unknown"]),
    blocks=st.integers(0, 64),
    age=ages,
    last_used_age=st.none() | ages,
    in_use=st.integers(0, 4).map(lambda n: n == 0),
    pinned=st.sampled_from([None, None, None, "image", "file"]),
    held=st.integers(0, 9).map(lambda n: n == 0),
    nlink=st.sampled_from([1, 1, 1, 1, 2]),
    gone=st.sampled_from([None, None, "deleted", "deactivated"]),
)


@st.composite
def cases(draw):
    """Budgets drawn relative to the cache they apply to, so that every outcome (within,
    met by age, met by eviction, shortfall) comes up often."""
    items = draw(st.lists(specs, min_size=0, max_size=25))
    cache = sum(s.blocks * 4 * KiB for s in items)
    pct = st.floats(1, 99, allow_nan=False).map(lambda x: round(x, 1))
    high, low = draw(st.none() | pct), draw(st.none() | pct)
    if high is not None and low is not None and low > high:
        high, low = low, high
    fraction = st.one_of(st.floats(0, 1.2, allow_nan=False), st.floats(0.6, 1.0))
    budget = BudgetConfig(
        max_cache_size=draw(st.none() | fraction.map(lambda f: max(1, int(cache * f)))),
        high_watermark=high,
        low_watermark=low,
        min_free_space=draw(st.none() | fraction.map(lambda f: int(cache * f))),
        min_free_percent=draw(st.none() | st.floats(1, 20, allow_nan=False)),
        eviction_min_age_seconds=draw(st.sampled_from([0, 60, HOUR, DAY])),
    )
    # the cache and some other use on a file system not much bigger than both
    other = draw(st.integers(0, 2 * cache + MiB))
    size = cache + other + draw(st.integers(0, 2 * cache + MiB)) + 1
    fs = draw(st.sampled_from([None, FsUsage(size, cache + other, size - cache - other)]))
    config = PolicyConfig(
        remove_unused_base_images=draw(st.booleans()),
        remove_unused_original_minimum_age_seconds=draw(
            st.sampled_from([0, DAY, 90 * DAY, 90 * DAY, 90 * DAY])),
        remove_unused_resized_minimum_age_seconds=draw(st.sampled_from([HOUR, 90 * DAY])),
        budget=budget,
    )
    return items, config, fs


def build(items: list[Spec], fs: FsUsage | None):
    bases, users, held, pins = [], {}, [], []
    last_used, images = {}, {}
    for i, s in enumerate(items):
        name = name_for(i, s)
        bases.append(base_file(name, s.blocks * 4 * KiB, NOW - s.age, nlink=s.nlink))
        if s.in_use:
            users[name] = [f"instance-{i}"]
        if s.held:
            held.append(name)
        if s.gone and s.kind in ("original", "resized"):
            images[sha1(f"image-{i}")] = ImageFacts(f"image-{i}", s.gone)
        if s.last_used_age is not None:
            last_used[name] = NOW - s.last_used_age
        if s.pinned == "image" and s.kind in ("original", "resized"):
            pins.append(Pin("image", f"image-{i}", "state"))
        elif s.pinned:
            pins.append(Pin("file", name, "config"))
    inv = inventory(bases, users, held, scanned_at=NOW)
    observed = Observed(fs=fs, fs_error=None if fs else "statvfs failed",
                        last_used=last_used, pins=Pins(tuple(pins)), images=images)
    return inv, observed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_eviction_meets_the_budget_or_reports_the_shortfall(case):
    items, config, fs = case
    inv, observed = build(items, fs)
    plan = decide(inv, config, NOW, observed)
    # one judgement: the executor's re-check lets go exactly what the plan removes
    again = recheck(inv, config, NOW, observed, plan.decisions)
    assert {d.name for d in plan.decisions if again[d.name] is None} == {
        d.name for d in plan.removals}
    budget = config.budget

    # eviction only adds EVICT verdicts to what nova's age rules decide
    plain = decide(inv, PolicyConfig(
        remove_unused_base_images=config.remove_unused_base_images,
        remove_unused_original_minimum_age_seconds=(
            config.remove_unused_original_minimum_age_seconds),
        remove_unused_resized_minimum_age_seconds=(
            config.remove_unused_resized_minimum_age_seconds)), NOW, observed)
    for d, p in zip(plan.decisions, plain.decisions, strict=True):
        assert d.name == p.name
        assert d.verdict in (p.verdict, Verdict.EVICT)
    if not budget.enabled:
        assert plan.budget is None and plan.shortfall == 0
        return
    assert plan.budget is not None

    # never an in-use, pinned or held file; EVICT only for eligible unused bases
    by_name = {name_for(i, s): s for i, s in enumerate(items)}
    for d in plan.removals:
        s = by_name[d.name]
        assert not s.in_use, d
        assert not s.held, d
        assert d.verdict is not Verdict.PINNED
        assert observed.pins.match(d.name, d.kind, d.image_hash) is None, d
    evicted = [d for d in plan.decisions if d.verdict is Verdict.EVICT]

    def key(name: str) -> tuple[bool, float]:
        """Bases of images gone from Glance first; then the last evidence of use: the
        later of the recorded last use and the mtime."""
        lu = observed.last_used.get(name)
        mtime = NOW - by_name[name].age
        gone = by_name[name].gone is not None and by_name[name].kind in ("original",
                                                                         "resized")
        return (not gone, max(mtime, lu if lu is not None else mtime))

    def idle(name: str) -> float:
        lu = observed.last_used.get(name)
        mtime = NOW - by_name[name].age
        return NOW - max(mtime, lu if lu is not None else mtime)

    eligible = [p.name for p in plain.decisions
                if p.verdict in (Verdict.TOO_YOUNG, Verdict.KEPT_BY_CONFIG)
                and by_name[p.name].kind in EVICTABLE and by_name[p.name].nlink == 1
                and idle(p.name) >= budget.eviction_min_age_seconds
                and by_name[p.name].age >= config.spawn_hold_seconds
                and p.allocated > 0]  # evicting an empty file frees nothing
    assert {d.name for d in evicted} <= set(eligible)
    for d in evicted:
        assert d.frees == d.allocated

    # the numbers: shortfall == what is still needed after every removal
    need = plan.budget.need
    freed = plan.frees
    assert plan.shortfall == max(0, need - freed)
    assert (plan.shortfall == 0) == (need <= freed)
    if plan.shortfall:
        assert sorted(d.name for d in evicted) == sorted(eligible), "eligible file left"
    else:
        assert_met(budget, inv, fs, freed)

    # deleted and deactivated images' bases first, then least recently used first:
    # nothing eligible left behind comes before a chosen one
    if evicted:
        newest_chosen = max((key(d.name), d.name) for d in evicted)
        for name in set(eligible) - {d.name for d in evicted}:
            assert (key(name), name) > newest_chosen
        # and no more than needed: the last one chosen was still required
        last = max(evicted, key=lambda d: (key(d.name), d.name))
        assert freed - last.frees < need


def assert_met(budget: BudgetConfig, inv, fs: FsUsage | None, freed: int) -> None:
    """Re-measure the cache and file system as they will be after the plan."""
    cache = sum(b.allocated for b in inv.bases)  # every inode once: names are unique here
    if budget.max_cache_size is not None:
        assert cache - freed <= budget.max_cache_size
    if fs is None or not budget.uses_file_system:
        return
    before = measure(budget, cache, fs)
    after = FsUsage(fs.size, fs.used - freed, fs.avail + freed)
    high, low = watermarks(budget)
    if high is not None and fs.used > int(fs.size * high / 100):
        assert after.used <= int(fs.size * low / 100)  # down to low, not to high
    for limit in measure(budget, cache - freed, after).limits:
        if limit.name == "min_free_space":
            assert limit.need == 0
    assert before.need <= freed


@settings(max_examples=150, deadline=None)
@given(st.lists(specs, max_size=15), st.integers(1, 4096))
def test_a_cache_within_max_cache_size_loses_nothing_to_eviction(items, cap_blocks):
    inv, observed = build(items, None)
    cache = sum(b.allocated for b in inv.bases)
    config = PolicyConfig(remove_unused_original_minimum_age_seconds=90 * DAY,
                          remove_unused_resized_minimum_age_seconds=90 * DAY,
                          budget=BudgetConfig(max_cache_size=max(cache, cap_blocks * KiB)))
    plan = decide(inv, config, NOW, observed)
    assert not any(d.verdict is Verdict.EVICT for d in plan.decisions)
    assert plan.budget.need == 0 and plan.shortfall == 0 and plan.budget.kept == {}
