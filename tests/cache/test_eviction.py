"""Eviction in the pure policy, on real trees: sparse raw bases holding real data (so their
allocated bytes are real), qcow2 disks made by qemu-img, and what a pass measures besides
the scan (file-system usage, last-used times, pins) given to `decide` as data.

Over budget, after the age-based removals, unused bases go least recently used first
(never seen in use: oldest mtime first) until the budget is met; never an in-use, pinned,
held, too-young-to-evict or hard-linked one. What cannot be met is the shortfall.
"""

from __future__ import annotations

import os

import pytest
from _tree import DAY, HOUR, NOW, Node, allocated, by_name, sha1, truncate, verdicts

from novakeeper.cache.budget import BudgetConfig, FsUsage
from novakeeper.cache.plan import Plan, Verdict
from novakeeper.cache.policy import Observed, PolicyConfig, decide
from novakeeper.cache.render import sorted_decisions
from novakeeper.state.pins import Pin, Pins

KiB = 1 << 10
BLOCK = 64 * KiB
"""Every base holds this many bytes of real data: its allocated size."""
KEEP_AGES = 90 * DAY
"""Nova's age rule with this minimum age keeps every base below: eviction's pool."""


@pytest.fixture
def node(tmp_path):
    return Node(tmp_path)


def filled(node: Node, name: str, age: float, blocks: int = 1) -> str:
    """A base of `blocks` * 64 KiB of real data, `age` seconds old at NOW; its name."""
    path = node.base(name, age=age, size=blocks * BLOCK, data=b"\xa5" * (blocks * BLOCK))
    assert allocated(path) == blocks * BLOCK, "the test file system allocates differently"
    return path.name


def config(keep: bool = True, **budget) -> PolicyConfig:
    """Nova's age rule keeping everything unused (or not), and a budget."""
    ages = {"remove_unused_original_minimum_age_seconds": KEEP_AGES,
            "remove_unused_resized_minimum_age_seconds": KEEP_AGES} if keep else {}
    return PolicyConfig(**ages, budget=BudgetConfig(**budget))


def plan_for(node: Node, cfg: PolicyConfig, **observed) -> Plan:
    return decide(node.scan(), cfg, NOW, Observed(**observed))


def evicted(plan: Plan) -> list[str]:
    """Names chosen for eviction, in the order they were chosen."""
    return [d.name for d in sorted_decisions(plan) if d.verdict is Verdict.EVICT]


def cache_total(node: Node) -> int:
    return sum(allocated(p) for p in node.cache.iterdir())


# -- least recently used first ----------------------------------------------------------


def test_least_recently_used_first_until_the_budget_is_met(node):
    names = {k: filled(node, sha1(k), age=60 * DAY) for k in "abcd"}
    last_used = {names["a"]: NOW - 23 * DAY, names["b"]: NOW - 5 * DAY,
                 names["c"]: NOW - 12 * DAY, names["d"]: NOW - 40 * DAY}
    # 256 KiB held, 100 KiB allowed: 156 KiB to free, three bases
    plan = plan_for(node, config(max_cache_size=100 * KiB), last_used=last_used)

    assert evicted(plan) == [names["d"], names["a"], names["c"]]
    d = by_name(plan)
    assert d[names["b"]].verdict is Verdict.TOO_YOUNG  # the most recently used stays
    assert d[names["d"]].reason == ("over budget by 156.0 KiB; least recently used "
                                    "(last used 40 d ago); frees 64.0 KiB")
    assert d[names["a"]].reason == ("over budget by 92.0 KiB; least recently used "
                                    "(last used 23 d ago); frees 64.0 KiB")
    assert d[names["c"]].reason == ("over budget by 28.0 KiB; least recently used "
                                    "(last used 12 d ago); frees 64.0 KiB")
    for name in (names["d"], names["a"], names["c"]):
        assert d[name].frees == d[name].allocated == BLOCK
        assert d[name].last_used == last_used[name]
        assert d[name].min_age == 3600  # eviction_min_age_seconds, nova's default hour
        assert d[name].removes
    budget = plan.budget
    assert budget is not None
    assert (budget.need, budget.by_age, budget.by_eviction, budget.evicted) == (
        156 * KiB, 0, 3 * BLOCK, 3)
    assert budget.shortfall == plan.shortfall == 0
    assert budget.kept == {}
    assert plan.frees == 3 * BLOCK


def test_never_used_bases_go_oldest_mtime_first(node):
    ages = {"w": 10 * DAY, "x": 40 * DAY, "y": 20 * DAY, "z": 30 * DAY}
    names = {k: filled(node, sha1(k), age=a) for k, a in ages.items()}
    plan = plan_for(node, config(max_cache_size=2 * BLOCK))  # 2 of 4 must go
    assert evicted(plan) == [names["x"], names["z"]]
    assert by_name(plan)[names["x"]].reason == (
        "over budget by 128.0 KiB; least recently used (never seen in use, modified "
        "40 d ago); frees 64.0 KiB")
    assert by_name(plan)[names["x"]].last_used is None


def test_last_used_and_mtime_share_one_order(node):
    """A base last used 10 days ago goes before one never used but downloaded 3 days
    ago, and after one never used since its download 15 days ago."""
    used_10 = filled(node, sha1("used"), age=30 * DAY)
    fresh_3 = filled(node, sha1("fresh"), age=3 * DAY)
    stale_15 = filled(node, sha1("stale"), age=15 * DAY)
    plan = plan_for(node, config(max_cache_size=1), last_used={used_10: NOW - 10 * DAY})
    assert evicted(plan) == [stale_15, used_10, fresh_3]


def test_the_order_uses_the_latest_evidence_of_use(node):
    touched = filled(node, sha1("touched"), age=2 * HOUR)
    idle = filled(node, sha1("idle"), age=10 * DAY)
    plan = plan_for(node, config(max_cache_size=BLOCK), last_used={touched: NOW - 30 * DAY})
    assert evicted(plan) == [idle]


def test_swap_ephemeral_and_resized_are_evictable_too(node):
    names = [filled(node, "swap_512", age=4 * DAY),
             filled(node, "ephemeral_20_0706d66", age=3 * DAY),
             filled(node, f"{sha1('img')}_21474836480", age=2 * DAY),
             filled(node, sha1("img"), age=1 * DAY)]
    plan = plan_for(node, config(max_cache_size=1))
    assert evicted(plan) == names


def test_partials_info_and_unknown_files_are_never_evicted(node):
    downloading = filled(node, f"{sha1('d')}.part", age=60)
    info = filled(node, f"{sha1('i')}.info", age=30 * 60)  # too young for stale_partial
    stray = filled(node, "operator-notes.txt", age=400 * DAY)
    base = filled(node, sha1("b"), age=5 * DAY)
    plan = plan_for(node, config(max_cache_size=1))
    assert verdicts(plan) == {downloading: "downloading", info: "too-young",
                              stray: "unknown", base: "evict"}
    assert plan.budget.kept == {"downloading": BLOCK, "too-young": BLOCK, "unknown": BLOCK}
    assert plan.shortfall == 3 * BLOCK - 1


# -- the age-based removals count first -------------------------------------------------


def test_age_removals_count_first_and_may_be_enough(node):
    resized = filled(node, f"{sha1('r')}_20", age=2 * HOUR)  # resized copies: 1 h
    old = filled(node, sha1("old"), age=40 * DAY)
    young = filled(node, sha1("young"), age=20 * DAY)
    cfg = PolicyConfig(remove_unused_original_minimum_age_seconds=KEEP_AGES,
                       budget=BudgetConfig(max_cache_size=2 * BLOCK))
    plan = plan_for(node, cfg)  # one block over: the resized copy's removal is enough
    assert verdicts(plan) == {resized: "remove", old: "too-young", young: "too-young"}
    assert (plan.budget.need, plan.budget.by_age, plan.budget.evicted) == (BLOCK, BLOCK, 0)
    assert plan.budget.words() == (
        "over budget by 64.0 KiB (cache holds 192.0 KiB of max_cache_size 128.0 KiB); "
        "age-based removals free 64.0 KiB")

    cfg = PolicyConfig(remove_unused_original_minimum_age_seconds=KEEP_AGES,
                       budget=BudgetConfig(max_cache_size=BLOCK // 2))
    plan = plan_for(node, cfg)  # 160 KiB to free: the removal, then the oldest, then more
    assert verdicts(plan) == {resized: "remove", old: "evict", young: "evict"}
    assert by_name(plan)[old].reason.startswith("over budget by 96.0 KiB; ")
    assert (plan.budget.by_age, plan.budget.by_eviction, plan.budget.evicted) == (
        BLOCK, 2 * BLOCK, 2)


def test_a_stale_partial_counts_as_an_age_removal(node):
    part = filled(node, f"{sha1('p')}.part", age=2 * HOUR, blocks=2)
    base = filled(node, sha1("b"), age=5 * DAY)
    plan = plan_for(node, config(max_cache_size=BLOCK))
    assert verdicts(plan) == {part: "stale-partial", base: "too-young"}
    assert plan.budget.by_age == 2 * BLOCK


# -- never chosen -----------------------------------------------------------------------


def test_in_use_pinned_held_too_young_and_hard_linked_are_never_chosen(node, tmp_path):
    in_use = filled(node, sha1("in-use"), age=80 * DAY, blocks=3)
    node.disk(node.folder(), node.cache / in_use)
    pinned = filled(node, sha1("golden"), age=80 * DAY)
    pinned_resized = filled(node, f"{sha1('golden')}_10737418240", age=80 * DAY)
    pinned_file = filled(node, "swap_2048", age=80 * DAY)
    held = filled(node, "ephemeral_1_0706d66", age=80 * DAY)
    truncate(node.disk(node.folder(), node.cache / held, name="disk.local"))
    young = filled(node, sha1("young"), age=10 * 60)  # downloaded 10 min ago
    recently_used = filled(node, sha1("recent"), age=80 * DAY)  # in use 10 min ago
    linked = filled(node, sha1("linked"), age=80 * DAY)
    os.link(node.cache / linked, tmp_path / "elsewhere")
    victim = filled(node, sha1("victim"), age=20 * DAY)
    total = cache_total(node)

    pins = Pins((Pin("image", "golden", "state"), Pin("file", "swap_*", "config")))
    plan = plan_for(node, config(max_cache_size=KiB), pins=pins,
                    last_used={in_use: NOW - 79 * DAY, recently_used: NOW - 10 * 60})

    assert verdicts(plan) == {
        in_use: "in-use", pinned: "pinned", pinned_resized: "pinned", pinned_file: "pinned",
        held: "held", young: "too-young", recently_used: "too-young",
        linked: "too-young", victim: "evict",
    }
    assert [d.name for d in plan.removals] == [victim]
    budget = plan.budget
    assert budget.need == total - KiB
    assert budget.shortfall == plan.shortfall == total - KiB - BLOCK
    assert budget.kept == {"in-use": 3 * BLOCK, "pinned": 3 * BLOCK, "held": BLOCK,
                           "too young to evict": 2 * BLOCK, "hard-linked": BLOCK}
    assert budget.shortfall_words() == (
        f"{(total - KiB - BLOCK) / KiB:.1f} KiB short (what remains is in-use 192.0 KiB, "
        "pinned 192.0 KiB, too young to evict 128.0 KiB, held 64.0 KiB, "
        "hard-linked 64.0 KiB)")
    assert "CANNOT MEET BUDGET" in budget.words()
    d = by_name(plan)
    assert d[pinned].reason == "pinned: image golden (cache pin)"
    assert d[pinned_file].reason == "pinned: matches 'swap_*' (nova.conf)"


@pytest.mark.parametrize("idle, chosen", [(HOUR, True), (HOUR - 1, False)])
def test_eviction_min_age_boundary(node, idle, chosen):
    """Idle for exactly eviction_min_age_seconds is old enough (as nova's `age < min`)."""
    by_mtime = filled(node, sha1("by-mtime"), age=idle)
    by_use = filled(node, sha1("by-use"), age=50 * DAY)
    plan = plan_for(node, config(max_cache_size=1, eviction_min_age_seconds=HOUR),
                    last_used={by_use: NOW - idle})
    expected = "evict" if chosen else "too-young"
    assert verdicts(plan) == {by_mtime: expected, by_use: expected}
    if not chosen:
        assert plan.budget.kept == {"too young to evict": 2 * BLOCK}


def test_eviction_min_age_zero_evicts_a_base_just_past_the_spawn_hold(node):
    fresh = filled(node, sha1("fresh"), age=0)
    settled = filled(node, sha1("settled"), age=120)
    plan = plan_for(node, config(max_cache_size=1, eviction_min_age_seconds=0))
    # a base modified within spawn_hold_seconds (120 s) may be about to get its disk
    assert verdicts(plan) == {fresh: "too-young", settled: "evict"}


def test_a_hard_linked_base_is_skipped_and_the_next_one_goes(node, tmp_path):
    oldest = filled(node, sha1("oldest"), age=50 * DAY)
    os.link(node.cache / oldest, tmp_path / "a-copy")
    next_one = filled(node, sha1("next"), age=40 * DAY)
    last = filled(node, sha1("last"), age=30 * DAY)
    plan = plan_for(node, config(max_cache_size=2 * BLOCK))  # one base must go
    assert verdicts(plan) == {oldest: "too-young", next_one: "evict", last: "too-young"}
    assert plan.shortfall == 0


def test_an_in_use_base_is_kept_however_long_ago_it_was_last_seen_in_use(node):
    """last_used comes from the database; the scan's disks are what decide in-use."""
    used = filled(node, sha1("used"), age=300 * DAY)
    node.disk(node.folder(), node.cache / used)
    plan = plan_for(node, config(max_cache_size=1), last_used={used: NOW - 300 * DAY})
    assert verdicts(plan) == {used: "in-use"}
    assert plan.shortfall == BLOCK - 1
    assert plan.budget.kept == {"in-use": BLOCK}


# -- remove_unused_base_images = False --------------------------------------------------


def test_remove_unused_base_images_false_still_evicts_for_the_budget(node):
    """Documented choice: nova's switch governs its age rule, not the budget; a budget
    set in [novakeeper] is the operator asking for eviction."""
    old = filled(node, sha1("old"), age=60 * DAY)
    newer = filled(node, sha1("newer"), age=30 * DAY)
    off = PolicyConfig(remove_unused_base_images=False)
    assert verdicts(plan_for(node, off)) == {old: "kept-by-config", newer: "kept-by-config"}

    off_with_budget = PolicyConfig(remove_unused_base_images=False,
                                   budget=BudgetConfig(max_cache_size=BLOCK))
    plan = plan_for(node, off_with_budget)
    assert verdicts(plan) == {old: "evict", newer: "kept-by-config"}
    assert plan.budget.by_age == 0


# -- file-system limits, measured elsewhere and given as data ---------------------------


def fs_at(used: int, size: int = 1024 * KiB) -> FsUsage:
    return FsUsage(size=size, used=used, avail=size - used)


def test_watermarks_hysteresis_on_a_real_tree(node):
    names = [filled(node, sha1(f"img-{i}"), age=(30 - i) * DAY) for i in range(6)]
    cfg = config(high_watermark=90, low_watermark=80)

    # 87.9 % used: between the watermarks, nothing goes
    plan = plan_for(node, cfg, fs=fs_at(900 * KiB))
    assert not plan.removals
    assert plan.budget.need == 0
    assert plan.budget.words().startswith("within budget: file system 87.9% used "
                                          "(high 90%, low 80%)")

    # 92.8 % used: free down to 80 % (819.2 KiB): 130.8 KiB, three bases
    used = 950 * KiB
    plan = plan_for(node, cfg, fs=fs_at(used))
    assert evicted(plan) == names[:3]
    assert plan.budget.need == used - int(1024 * KiB * 0.8)
    report = node.execute(plan)
    assert sorted(o.name for o in report.removed) == sorted(names[:3])
    assert report.freed == 3 * BLOCK

    # the next pass: 77.5 % used, below low; then 89 %: still no eviction
    used -= report.freed
    assert not plan_for(node, cfg, fs=fs_at(used)).removals
    assert not plan_for(node, cfg, fs=fs_at(int(1024 * KiB * 0.89))).removals
    assert sorted(os.listdir(node.cache)) == sorted(names[3:])


def test_min_free_space_from_a_measured_file_system(node):
    names = [filled(node, sha1(f"img-{i}"), age=(30 - i) * DAY) for i in range(4)]
    # 10 KiB available, 100 KiB wanted: 90 KiB, two bases
    plan = plan_for(node, config(min_free_space=100 * KiB), fs=fs_at(1014 * KiB))
    assert evicted(plan) == names[:2]
    assert plan.budget.state.binding.name == "min_free_space"
    plan = plan_for(node, config(min_free_percent=5), fs=fs_at(1014 * KiB))  # 51.2 KiB
    assert evicted(plan) == names[:1]


def test_an_unmeasured_file_system_evicts_nothing(node):
    for i in range(3):
        filled(node, sha1(f"img-{i}"), age=30 * DAY)
    why = f"statvfs {node.cache} failed: Permission denied"
    plan = plan_for(node, config(high_watermark=50, min_free_space=1 << 40), fs=None,
                    fs_error=why)
    assert not plan.removals
    assert plan.budget.need == 0
    assert plan.budget.state.unmeasured == why
    assert plan.budget.words() == f"within budget ({why})"


def test_file_system_reading_is_ignored_without_file_system_limits(node):
    filled(node, sha1("a"), age=30 * DAY)
    plan = plan_for(node, config(max_cache_size=10 * BLOCK), fs=fs_at(1020 * KiB),
                    fs_error="ignored")
    assert plan.budget.state.fs is None
    assert plan.budget.state.unmeasured is None
    assert [lim.name for lim in plan.budget.state.limits] == ["max_cache_size"]


def test_watermark_need_beyond_what_the_cache_holds_is_a_shortfall(node):
    """The file system is full of other things: evicting the whole cache is not enough."""
    names = [filled(node, sha1(f"img-{i}"), age=30 * DAY) for i in range(2)]
    used_elsewhere = filled(node, sha1("used"), age=30 * DAY)
    node.disk(node.folder(), node.cache / used_elsewhere)
    plan = plan_for(node, config(high_watermark=90, low_watermark=50),
                    fs=fs_at(1000 * KiB))
    need = 1000 * KiB - 512 * KiB
    assert sorted(evicted(plan)) == sorted(names)
    assert plan.shortfall == need - 2 * BLOCK
    assert plan.budget.kept == {"in-use": BLOCK}


# -- no budget --------------------------------------------------------------------------


def test_without_a_budget_nothing_is_evicted_and_the_plan_has_no_budget(node):
    filled(node, sha1("a"), age=30 * DAY)
    plan = plan_for(node, config(), fs=fs_at(1023 * KiB), last_used={sha1("a"): 0.0})
    assert plan.budget is None
    assert plan.shortfall == 0
    assert not plan.removals
    assert plan.to_dict()["budget"] is None


def test_within_budget_nothing_is_evicted(node):
    names = [filled(node, sha1(f"img-{i}"), age=30 * DAY) for i in range(3)]
    plan = plan_for(node, config(max_cache_size=3 * BLOCK))
    assert set(verdicts(plan).values()) == {"too-young"}
    assert plan.budget.need == 0
    assert plan.budget.state.headroom == 0
    assert len(names) == 3


def test_evicted_files_are_removed_by_the_executor(node):
    keep = filled(node, sha1("keep"), age=2 * DAY)
    goes = filled(node, sha1("goes"), age=20 * DAY, blocks=2)
    plan = plan_for(node, config(max_cache_size=2 * BLOCK))
    assert evicted(plan) == [goes]
    report = node.execute(plan)
    assert [o.name for o in report.removed] == [goes]
    assert report.freed == plan.budget.by_eviction == 2 * BLOCK
    assert os.listdir(node.cache) == [keep]
