"""The budget arithmetic (novakeeper.cache.budget): each limit alone, several at once (the
strictest wins), the watermarks' hysteresis, min_free_space in bytes and percent, and a
file system that could not be measured (it evicts nothing).

Pure numbers in, numbers out; the expected values are worked out by hand in each test.
"""

from __future__ import annotations

import os

import pytest

from novakeeper.cache.budget import (
    WATERMARK_GAP,
    BudgetConfig,
    BudgetOutcome,
    FsUsage,
    measure,
    watermarks,
)

GiB = 1 << 30


def fs(size_gib: float, used_gib: float) -> FsUsage:
    """A file system of `size_gib`, `used_gib` of it used, the rest available."""
    size, used = int(size_gib * GiB), int(used_gib * GiB)
    return FsUsage(size=size, used=used, avail=size - used)


def outcome(state, by_age=0, by_eviction=0, evicted=0, shortfall=0, kept=None):
    return BudgetOutcome(state, by_age, by_eviction, evicted, shortfall, kept or {})


# -- nothing set ------------------------------------------------------------------------


def test_no_limit_set_is_disabled_and_needs_nothing():
    config = BudgetConfig()
    assert not config.enabled
    assert not config.uses_file_system
    state = measure(config, 500 * GiB, fs(100, 99))
    assert state.limits == ()
    assert state.need == 0
    assert state.headroom is None
    assert state.binding is None
    assert outcome(state).words() == "no budget set"


@pytest.mark.parametrize("config, uses_fs", [
    (BudgetConfig(max_cache_size=GiB), False),
    (BudgetConfig(high_watermark=85), True),
    (BudgetConfig(low_watermark=80), True),
    (BudgetConfig(min_free_space=GiB), True),
    (BudgetConfig(min_free_percent=10), True),
])
def test_any_one_limit_enables_the_budget(config, uses_fs):
    assert config.enabled
    assert config.uses_file_system is uses_fs


# -- max_cache_size alone ---------------------------------------------------------------


@pytest.mark.parametrize("cache_gib, need_gib, headroom_gib", [
    (30, 0, 20),   # within
    (50, 0, 0),    # exactly at the limit: within (eviction starts above it)
    (62.5, 12.5, -12.5),
])
def test_max_cache_size_alone(cache_gib, need_gib, headroom_gib):
    config = BudgetConfig(max_cache_size=50 * GiB)
    state = measure(config, int(cache_gib * GiB), None)
    [limit] = state.limits
    assert limit.name == "max_cache_size"
    assert limit.threshold == 50 * GiB
    assert limit.value == int(cache_gib * GiB)
    assert state.need == limit.need == int(need_gib * GiB)
    assert state.headroom == limit.headroom == int(headroom_gib * GiB)
    assert state.binding is limit
    assert limit.words == f"cache holds {cache_gib:.1f} GiB of max_cache_size 50.0 GiB"


def test_max_cache_size_ignores_the_file_system():
    """A full file system does not matter to a limit on the cache's own size."""
    config = BudgetConfig(max_cache_size=50 * GiB)
    assert measure(config, 10 * GiB, fs(100, 99.9)).need == 0
    assert measure(config, 60 * GiB, fs(1000, 1)).need == 10 * GiB


# -- watermarks -------------------------------------------------------------------------


@pytest.mark.parametrize("high, low, expected", [
    (None, None, (None, None)),
    (85, 70, (85, 70)),
    (85, 85, (85, 85)),
    (85, None, (85, 85 - WATERMARK_GAP)),  # kubelet's 85/80
    (90, None, (90, 85)),
    (8, None, (8, 4)),  # never below half of high
    (1, None, (1, 0.5)),
    (None, 80, (80, 80)),  # low alone: start and stop at the same level
])
def test_watermarks_in_force(high, low, expected):
    assert watermarks(BudgetConfig(high_watermark=high, low_watermark=low)) == expected


def test_watermark_gap_is_five_points():
    assert WATERMARK_GAP == 5.0


def test_hysteresis_between_low_and_high_nothing_is_evicted():
    config = BudgetConfig(high_watermark=90, low_watermark=80)
    for used in (0, 50, 80, 80.5, 85, 89.9, 90):  # 90 % exactly is not *above* high
        state = measure(config, 10 * GiB, fs(100, used))
        assert state.need == 0, used
        [limit] = state.limits
        assert limit.name == "high_watermark"
        assert limit.threshold == 90 * GiB
        assert limit.headroom == int(90 * GiB) - int(used * GiB)


def test_above_high_frees_down_to_low_not_to_high():
    config = BudgetConfig(high_watermark=90, low_watermark=80)
    state = measure(config, 30 * GiB, fs(100, 95))
    [limit] = state.limits
    assert state.need == limit.need == 15 * GiB  # 95 % -> 80 %, not 95 % -> 90 %
    assert limit.headroom == -5 * GiB  # past high by 5 GiB
    assert limit.words == "file system 95.0% used (high 90%, low 80%)"


def test_hysteresis_over_successive_passes():
    """Fill, evict to low, fill again: eviction only restarts once above high."""
    config = BudgetConfig(high_watermark=90, low_watermark=80)
    used = 91.0
    history = []
    for arrival in (0, 3, 3, 3, 3, 3, 3):  # GiB of new images between passes
        used += arrival
        need = measure(config, 40 * GiB, fs(100, used)).need / GiB
        history.append((used, need))
        used -= need  # the plan's evictions free exactly what was needed
    assert history == [
        (91, 11), (83, 0), (86, 0), (89, 0), (92, 12), (83, 0), (86, 0),
    ]


def test_high_alone_frees_five_points_below_it():
    state = measure(BudgetConfig(high_watermark=85), 40 * GiB, fs(100, 86))
    assert state.need == 6 * GiB  # 86 % -> 80 %
    assert state.limits[0].words == "file system 86.0% used (high 85%, low 80%)"
    assert measure(BudgetConfig(high_watermark=85), 40 * GiB, fs(100, 84)).need == 0


def test_low_alone_starts_and_stops_at_low():
    config = BudgetConfig(low_watermark=80)
    assert measure(config, 40 * GiB, fs(100, 80)).need == 0
    assert measure(config, 40 * GiB, fs(100, 81)).need == 1 * GiB
    state = measure(config, 40 * GiB, fs(100, 70))
    assert state.headroom == 10 * GiB
    assert state.limits[0].words == "file system 70.0% used (high 80%, low 80%)"


# -- min_free_space ---------------------------------------------------------------------


def test_min_free_space_bytes():
    config = BudgetConfig(min_free_space=20 * GiB)
    state = measure(config, 40 * GiB, fs(100, 85))  # 15 GiB free
    [limit] = state.limits
    assert limit.name == "min_free_space"
    assert limit.threshold == 20 * GiB
    assert limit.value == 15 * GiB
    assert state.need == 5 * GiB
    assert limit.headroom == -5 * GiB
    assert limit.words == "15.0 GiB free (min_free_space 20.0 GiB)"
    assert measure(config, 40 * GiB, fs(100, 80)).need == 0  # exactly 20 GiB free
    assert measure(config, 40 * GiB, fs(100, 70)).headroom == 10 * GiB


def test_min_free_space_percent_is_of_the_file_system():
    config = BudgetConfig(min_free_percent=10)
    assert measure(config, 40 * GiB, fs(500, 460)).need == 10 * GiB  # 40 free, 50 wanted
    assert measure(config, 40 * GiB, fs(200, 185)).need == 5 * GiB  # 15 free, 20 wanted
    assert measure(config, 40 * GiB, fs(200, 180)).need == 0


def test_min_free_space_bytes_and_percent_the_larger_floor_wins():
    both = BudgetConfig(min_free_space=30 * GiB, min_free_percent=10)
    state = measure(both, 40 * GiB, fs(100, 80))  # floors: 30 GiB and 10 GiB
    assert state.limits[0].threshold == 30 * GiB
    assert state.need == 10 * GiB
    state = measure(both, 40 * GiB, fs(1000, 950))  # floors: 30 GiB and 100 GiB
    assert state.limits[0].threshold == 100 * GiB
    assert state.need == 50 * GiB


# -- several limits: the strictest wins -------------------------------------------------


def test_several_limits_the_one_needing_most_wins():
    config = BudgetConfig(max_cache_size=50 * GiB, high_watermark=90, low_watermark=80,
                          min_free_space=8 * GiB)
    state = measure(config, 60 * GiB, fs(100, 95))
    needs = {lim.name: lim.need for lim in state.limits}
    assert needs == {"max_cache_size": 10 * GiB, "high_watermark": 15 * GiB,
                     "min_free_space": 3 * GiB}
    assert state.need == 15 * GiB
    assert state.binding.name == "high_watermark"
    assert state.headroom == -10 * GiB  # max_cache_size is 10 GiB over


@pytest.mark.parametrize("cache_gib, used, binding, need_gib", [
    (70, 85, "max_cache_size", 20),  # only the size limit is over
    (40, 97, "high_watermark", 7),  # 97 % -> 90 %; and 5 GiB short of 8 GiB free
    (40, 93, "min_free_space", 1),  # below high, but 7 GiB free of 8
])
def test_strictest_wins_whichever_it_is(cache_gib, used, binding, need_gib):
    config = BudgetConfig(max_cache_size=50 * GiB, high_watermark=95, low_watermark=90,
                          min_free_space=8 * GiB)
    state = measure(config, cache_gib * GiB, fs(100, used))
    assert state.need == need_gib * GiB
    assert state.need == max(lim.need for lim in state.limits)
    assert state.binding.name == binding


def test_within_every_limit_the_binding_one_is_closest_to_firing():
    config = BudgetConfig(max_cache_size=50 * GiB, high_watermark=90, low_watermark=80,
                          min_free_space=5 * GiB)
    state = measure(config, 45 * GiB, fs(100, 70))
    assert state.need == 0
    headrooms = {lim.name: lim.headroom for lim in state.limits}
    assert headrooms == {"max_cache_size": 5 * GiB, "high_watermark": 20 * GiB,
                         "min_free_space": 25 * GiB}
    assert state.headroom == 5 * GiB
    assert state.binding.name == "max_cache_size"


# -- a file system that could not be measured -------------------------------------------


def test_unmeasured_file_system_evicts_nothing():
    config = BudgetConfig(high_watermark=90, low_watermark=80, min_free_space=50 * GiB)
    why = "statvfs /x/_base failed: Permission denied"
    state = measure(config, 900 * GiB, None, why)
    assert state.limits == ()
    assert state.need == 0
    assert state.unmeasured == why
    assert state.to_dict()["unmeasured"] == why
    assert state.to_dict()["file_system"] is None
    assert outcome(state).words() == f"within budget ({why})"


def test_unmeasured_file_system_still_applies_max_cache_size():
    config = BudgetConfig(max_cache_size=50 * GiB, high_watermark=90)
    state = measure(config, 60 * GiB, None, "statvfs failed")
    assert [lim.name for lim in state.limits] == ["max_cache_size"]
    assert state.need == 10 * GiB
    words = outcome(state, evicted=2, by_eviction=10 * GiB).words()
    assert words.startswith("over budget by 10.0 GiB (cache holds 60.0 GiB")


def test_empty_file_system_reading_evicts_nothing():
    state = measure(BudgetConfig(high_watermark=90), GiB, FsUsage(0, 0, 0))
    assert state.limits == () and state.need == 0


# -- FsUsage ----------------------------------------------------------------------------


def test_fs_usage_of_a_real_folder_is_dfs_view(tmp_path):
    usage = FsUsage.of(str(tmp_path))
    st = os.statvfs(tmp_path)
    assert usage.size == usage.used + usage.avail
    assert usage.avail == st.f_bavail * st.f_frsize
    assert usage.used == (st.f_blocks - st.f_bfree) * st.f_frsize
    assert 0 <= usage.used_percent <= 100
    # what root reserves is in neither: size is what users can fill
    assert usage.size <= st.f_blocks * st.f_frsize


def test_fs_usage_of_a_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        FsUsage.of(str(tmp_path / "missing"))


def test_used_percent():
    assert fs(200, 50).used_percent == 25.0
    assert FsUsage(0, 0, 0).used_percent == 0.0


# -- the outcome in words ---------------------------------------------------------------


def test_words_within_budget_names_the_binding_limit_and_headroom():
    state = measure(BudgetConfig(max_cache_size=50 * GiB), 30 * GiB, None)
    assert outcome(state).words() == (
        "within budget: cache holds 30.0 GiB of max_cache_size 50.0 GiB; headroom 20.0 GiB")


def test_words_over_budget_met_by_age_and_eviction():
    state = measure(BudgetConfig(max_cache_size=50 * GiB), 62 * GiB, None)
    words = outcome(state, by_age=2 * GiB, by_eviction=11 * GiB, evicted=3).words()
    assert words == ("over budget by 12.0 GiB (cache holds 62.0 GiB of max_cache_size "
                     "50.0 GiB); age-based removals free 2.0 GiB; evicting 3 least recently "
                     "used bases frees 11.0 GiB")
    one = outcome(state, by_eviction=12 * GiB, evicted=1).words()
    assert "evicting 1 least recently used base frees 12.0 GiB" in one


def test_words_shortfall_lists_what_remains_largest_first_and_skips_zeros():
    state = measure(BudgetConfig(max_cache_size=50 * GiB), 100 * GiB, None)
    result = outcome(state, by_eviction=10 * GiB, evicted=2, shortfall=40 * GiB,
                     kept={"pinned": 5 * GiB, "in-use": 40 * GiB, "held": 0})
    assert result.shortfall_words() == (
        "40.0 GiB short (what remains is in-use 40.0 GiB, pinned 5.0 GiB)")
    assert result.words().endswith(
        "; CANNOT MEET BUDGET: 40.0 GiB short (what remains is in-use 40.0 GiB, "
        "pinned 5.0 GiB)")
    assert outcome(state, shortfall=GiB).shortfall_words() == "1.0 GiB short"


def test_outcome_to_dict_carries_state_and_result():
    config = BudgetConfig(max_cache_size=50 * GiB, high_watermark=90, low_watermark=80)
    state = measure(config, 60 * GiB, fs(100, 95))
    d = outcome(state, by_age=GiB, by_eviction=14 * GiB, evicted=4).to_dict()
    assert d["need"] == 15 * GiB
    assert d["binding"] == "high_watermark"
    assert d["headroom"] == -10 * GiB
    assert d["file_system"] == {"size": 100 * GiB, "used": 95 * GiB, "avail": 5 * GiB,
                                "used_percent": 95.0}
    assert [lim["name"] for lim in d["limits"]] == ["max_cache_size", "high_watermark"]
    assert (d["by_age"], d["by_eviction"], d["evicted"], d["shortfall"]) == (
        GiB, 14 * GiB, 4, 0)
    assert d["words"].startswith("over budget by 15.0 GiB")
