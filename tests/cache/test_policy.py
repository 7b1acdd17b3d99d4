"""Every verdict the policy gives, on real trees, with nova's age rules at their exact
boundaries (nova: `if age < maxage: too young`, so age == min age is removable)."""

from __future__ import annotations

import os
import shutil

import pytest
from _tree import DAY, HOUR, NOW, MiB, Node, allocated, by_name, sha1, truncate, verdicts

from novakeeper.cache.layout import BaseKind
from novakeeper.cache.plan import Verdict
from novakeeper.cache.policy import PolicyConfig, decide

ORIGINAL = sha1("image-a")
RESIZED = f"{sha1('image-b')}_21474836480"
SWAP = "swap_512"
EPHEMERAL = "ephemeral_20_0706d66"


@pytest.fixture
def node(tmp_path):
    return Node(tmp_path)


# -- in use ---------------------------------------------------------------------------


def test_in_use_whatever_its_age_and_kind(node):
    young = node.original("young", age=0)
    old = node.original("old", age=400 * DAY)
    partial = node.base(f"{sha1('p')}.part", age=400 * DAY)  # odd, but a chain is a chain
    control = node.original("control", age=400 * DAY)
    f = node.folder()
    node.disk(f, young)
    node.disk(f, old, name="disk.rescue")
    g = node.folder()
    node.disk(g, old)
    node.disk(g, partial, name="disk.config")

    plan = node.plan(PolicyConfig(remove_unused_original_minimum_age_seconds=0,
                                  stale_partial_seconds=0))

    assert verdicts(plan) == {
        young.name: "in-use",
        old.name: "in-use",
        partial.name: "in-use",
        control.name: "remove",
    }
    d = by_name(plan)[old.name]
    assert sorted(d.users) == [f.name, g.name]
    assert sorted(d.disks) == sorted([str(f / "disk.rescue"), str(g / "disk")])
    assert d.reason.startswith("in use by 2 instances (2 disks)")
    assert d.frees == 0
    assert not d.removes


# -- remove -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        (ORIGINAL, BaseKind.ORIGINAL),
        (RESIZED, BaseKind.RESIZED),
        (f"{sha1('image-b')}_20", BaseKind.RESIZED),
        (f"{sha1('image-b')}_5", BaseKind.RESIZED),  # one digit: nova never cleans it
        (f"{sha1('image-b')}_sm", BaseKind.RESIZED),
        (SWAP, BaseKind.SWAP),
        (EPHEMERAL, BaseKind.EPHEMERAL),
        ("ephemeral_1_40d1d2c", BaseKind.EPHEMERAL),
    ],
)
def test_remove_every_unused_kind_past_its_age(node, name, kind):
    path = node.base(name, age=2 * DAY, size=64 * MiB, data=b"x" * MiB)
    in_use = node.original("in-use", age=2 * DAY)
    node.disk(node.folder(), in_use)

    plan = node.plan()

    d = by_name(plan)[name]
    assert d.kind is kind
    assert d.verdict is Verdict.REMOVE
    assert d.reason.startswith(f"unused {kind}, unused for 2 d")
    assert d.size == 64 * MiB
    assert d.allocated == allocated(path) > 0
    assert d.frees == d.allocated
    assert [r.name for r in plan.removals] == [name]
    assert plan.frees == d.allocated


# -- the age boundaries ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "limit"),
    [(ORIGINAL, 86400), (RESIZED, 3600), (SWAP, 86400), (EPHEMERAL, 86400)],
    ids=["original", "resized", "swap", "ephemeral"],
)
def test_default_minimum_age_boundary(node, name, limit):
    node.base(name, age=limit)
    plan = node.plan()
    d = by_name(plan)[name]
    assert d.verdict is Verdict.REMOVE, d.reason
    assert d.age == limit
    assert d.min_age == limit

    node.age(node.cache / name, limit - 1)
    plan = node.plan()
    d = by_name(plan)[name]
    assert d.verdict is Verdict.TOO_YOUNG
    assert d.reason == f"unused {d.kind}, too young: removable in 1 s"
    assert d.min_age == limit
    assert not plan.removals


@pytest.mark.parametrize(("original_age", "resized_age"), [(86400, 3600), (100, 10), (0, 0)])
def test_resized_and_original_thresholds_side_by_side(node, original_age, resized_age):
    """The same ages on files of each kind: each kind goes by its own threshold."""
    config = PolicyConfig(remove_unused_original_minimum_age_seconds=original_age,
                          remove_unused_resized_minimum_age_seconds=resized_age,
                          spawn_hold_seconds=0)
    h = sha1("side")
    ages = sorted({original_age, max(original_age - 1, 0), resized_age,
                   max(resized_age - 1, 0)})
    expected = {}
    for age in ages:
        for name, limit in (
            (f"{h}_{age}", resized_age),  # <sha1>_<digits>: resized
            (sha1(f"o{age}"), original_age),
            (f"swap_{age + 1}", original_age),
            (f"ephemeral_{age + 1}_0706d66", original_age),
        ):
            node.base(name, age=age)
            expected[name] = "remove" if age >= limit else "too-young"
    assert verdicts(node.plan(config)) == expected


def test_zero_ages_still_wait_out_the_spawn_hold(node):
    """Nova touches a base right before creating a disk on it, without its lock: with
    minimum ages of zero, a base modified within spawn_hold_seconds is still too young."""
    config = PolicyConfig(remove_unused_original_minimum_age_seconds=0,
                          remove_unused_resized_minimum_age_seconds=0, spawn_hold_seconds=120)
    touched = sha1("touched")
    settled = sha1("settled")
    node.base(touched, age=119)
    node.base(settled, age=120)
    plan = node.plan(config)
    assert verdicts(plan) == {touched: "too-young", settled: "remove"}
    assert "inside the spawn hold (2 min)" in by_name(plan)[touched].reason
    assert by_name(plan)[touched].min_age == 120


def test_boundary_by_clock_alone(node):
    """The policy's clock is an argument: replay the boundary without touching a file."""
    node.base(ORIGINAL, age=0)
    node.base(RESIZED, age=0)
    inventory = node.scan()
    config = PolicyConfig()
    mtime = NOW
    at = {
        t: verdicts(decide(inventory, config, mtime + t))
        for t in (3599, 3600, 86399, 86400)
    }
    assert at[3599] == {ORIGINAL: "too-young", RESIZED: "too-young"}
    assert at[3600] == {ORIGINAL: "too-young", RESIZED: "remove"}
    assert at[86399] == {ORIGINAL: "too-young", RESIZED: "remove"}
    assert at[86400] == {ORIGINAL: "remove", RESIZED: "remove"}


def test_too_young_reason_says_time_left(node):
    node.base(ORIGINAL, age=DAY - 90 * 60)
    node.base(RESIZED, age=HOUR - 125)
    node.base(SWAP, age=0)
    d = by_name(node.plan())
    assert d[ORIGINAL].reason == "unused original, too young: removable in 1 h 30 min"
    assert d[RESIZED].reason == "unused resized, too young: removable in 2 min 5 s"
    assert d[SWAP].reason == "unused swap, too young: removable in 1 d"
    assert {x.verdict for x in d.values()} == {Verdict.TOO_YOUNG}


# -- partials -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        (f"{ORIGINAL}.part", BaseKind.PARTIAL),
        (f"{RESIZED}.part", BaseKind.PARTIAL),
        (f"{ORIGINAL}.converted", BaseKind.CONVERTED),
        (f"{ORIGINAL}.info", BaseKind.INFO),
    ],
)
def test_stale_partial_at_and_past_the_limit(node, name, kind):
    node.base(name, age=HOUR)
    d = by_name(node.plan())[name]
    assert d.kind is kind
    assert d.verdict is Verdict.STALE_PARTIAL
    assert d.reason.startswith("stale ")
    assert "untouched for 1 h" in d.reason
    assert d.removes

    node.age(node.cache / name, 30 * DAY)
    assert by_name(node.plan())[name].verdict is Verdict.STALE_PARTIAL


@pytest.mark.parametrize("suffix", [".part", ".converted"])
def test_fresh_partial_is_downloading(node, suffix):
    name = ORIGINAL + suffix
    node.base(name, age=HOUR - 1)
    plan = node.plan(PolicyConfig(remove_unused_original_minimum_age_seconds=0))
    d = by_name(plan)[name]
    assert d.verdict is Verdict.DOWNLOADING
    assert d.reason.endswith("in progress: touched 59 min ago, stale in 1 s")
    assert not plan.removals

    # the stale limit is the partial's own, not the original's minimum age
    plan = node.plan(PolicyConfig(stale_partial_seconds=HOUR - 1))
    assert by_name(plan)[name].verdict is Verdict.STALE_PARTIAL


# -- held -----------------------------------------------------------------------------


def test_held_by_a_truncated_disk(node):
    orig = node.original("held", age=30 * DAY)
    swap = node.base(SWAP, age=30 * DAY)
    f = node.folder()
    bad = truncate(node.disk(f, orig))
    plan = node.plan()
    d = by_name(plan)
    assert d[orig.name].verdict is Verdict.HELD
    assert d[orig.name].reason == f"held: disk-corrupt at {bad}"
    assert d[orig.name].held_by == (str(bad),)
    assert d[swap.name].verdict is Verdict.REMOVE
    assert [r.name for r in plan.removals] == [SWAP]


def test_held_by_a_missing_backing_file(node):
    old = node.original("old", age=30 * DAY)
    f = node.folder()
    node.disk(f, node.cache / sha1("gone"), unsafe=True)  # backing file never existed
    d = by_name(node.plan())
    assert d[old.name].verdict is Verdict.HELD
    assert d[old.name].reason == f"held: chain-broken at {f / 'disk'}"

    g = node.folder()
    truncate(node.disk(g, old, name="disk.rescue"))
    d = by_name(node.plan())
    assert d[old.name].verdict is Verdict.HELD
    assert d[old.name].reason.endswith(" and 1 more")
    assert sorted(d[old.name].held_by) == sorted([str(f / "disk"), str(g / "disk.rescue")])


def test_in_use_wins_over_a_hold(node):
    used = node.original("used", age=30 * DAY)
    truncate(node.disk(node.folder(), used))
    node.disk(node.folder(), used)
    assert verdicts(node.plan()) == {used.name: "in-use"}


# -- unknown --------------------------------------------------------------------------


UNKNOWN_NAMES = [
    "README",
    ORIGINAL.upper(),
    ORIGINAL[:39],
    ORIGINAL + "0",
    "swap_",
    "swap_1g",
    "ephemeral_20_0706d6",
    "ephemeral_20",
    f"{ORIGINAL}.part.part",
    f"{ORIGINAL}.tmp",
    f"{ORIGINAL}_",
    f"{ORIGINAL}_big",
    ".nfs000000000001",
    "swap_512.info",
]


def test_unknown_names_directories_links_and_specials(node):
    for name in UNKNOWN_NAMES:
        node.base(name, age=400 * DAY)
    folder = node.cache / sha1("a-directory")
    folder.mkdir()
    (folder / "inner").write_bytes(b"x")
    node.age(folder, 400 * DAY)
    target = node.original("target", age=400 * DAY)
    link = node.cache / sha1("a-link")
    link.symlink_to(target.name)
    node.age(link, 400 * DAY)
    fifo = node.cache / "swap_1024"
    os.mkfifo(fifo)
    node.age(fifo, 400 * DAY)

    plan = node.plan(PolicyConfig(remove_unused_original_minimum_age_seconds=0,
                                  remove_unused_resized_minimum_age_seconds=0,
                                  stale_partial_seconds=0))

    d = by_name(plan)
    for name in UNKNOWN_NAMES:
        assert d[name].verdict is Verdict.UNKNOWN, name
        assert d[name].kind is BaseKind.UNKNOWN
        assert d[name].reason.startswith("unknown file")
    assert d[folder.name].kind is BaseKind.DIRECTORY
    assert d[folder.name].verdict is Verdict.UNKNOWN
    assert d[link.name].kind is BaseKind.SYMLINK
    assert d[link.name].verdict is Verdict.UNKNOWN
    assert d[fifo.name].kind is BaseKind.SPECIAL
    assert d[fifo.name].verdict is Verdict.UNKNOWN
    # the link's target is an ordinary unused original: the link does not protect it
    assert [r.name for r in plan.removals] == [target.name]


# -- kept by configuration ------------------------------------------------------------


def test_remove_unused_base_images_false_keeps_everything(node):
    removable = [
        node.base(ORIGINAL, age=30 * DAY),
        node.base(RESIZED, age=30 * DAY),
        node.base(SWAP, age=30 * DAY),
        node.base(EPHEMERAL, age=30 * DAY),
        node.base(f"{ORIGINAL}.part", age=30 * DAY),
        node.base(f"{ORIGINAL}.converted", age=30 * DAY),
        node.base(f"{ORIGINAL}.info", age=30 * DAY),
        node.base(sha1("young"), age=0),
    ]
    used = node.original("used", age=30 * DAY)
    node.disk(node.folder(), used)
    node.base("stray", age=30 * DAY)

    on = node.plan()
    assert len(on.removals) == 7  # the same tree with the option on removes them

    off = node.plan(PolicyConfig(remove_unused_base_images=False))
    v = verdicts(off)
    assert {v[p.name] for p in removable} == {"kept-by-config"}
    assert v[used.name] == "in-use"
    assert v["stray"] == "unknown"
    assert off.removals == ()
    assert off.frees == 0
    assert by_name(off)[ORIGINAL].reason == "kept: remove_unused_base_images is False"


# -- purity and accounting ------------------------------------------------------------


def test_policy_is_pure_and_replays_a_week(node, tmp_path):
    node.base(ORIGINAL, age=0)
    node.base(f"{ORIGINAL}.part", age=0)
    inventory = node.scan()
    shutil.rmtree(tmp_path / "instances")  # the policy must not need the files

    config = PolicyConfig()
    first = decide(inventory, config, NOW)
    assert first == decide(inventory, config, NOW)
    # a fresh .part of it: nova is fetching it again under its lock
    assert verdicts(first) == {ORIGINAL: "held", f"{ORIGINAL}.part": "downloading"}
    week = decide(inventory, config, NOW + 7 * DAY)
    assert verdicts(week) == {ORIGINAL: "remove", f"{ORIGINAL}.part": "stale-partial"}
    assert first.policy["remove_unused_original_minimum_age_seconds"] == 86400


def test_hard_linked_base_frees_nothing(node):
    path = node.base(ORIGINAL, age=30 * DAY, data=b"y" * MiB)
    os.link(path, node.cache / f"{ORIGINAL}_10")
    d = by_name(node.plan())
    for name in (ORIGINAL, f"{ORIGINAL}_10"):
        assert d[name].verdict is Verdict.REMOVE
        assert d[name].frees == 0
        assert "hard-linked (2 links)" in d[name].reason
        assert d[name].allocated > 0


def test_every_file_gets_exactly_one_decision(node):
    names = [ORIGINAL, RESIZED, SWAP, EPHEMERAL, f"{ORIGINAL}.part", "stray"]
    for name in names:
        node.base(name, age=DAY)
    plan = node.plan()
    assert sorted(d.name for d in plan.decisions) == sorted(names)
    assert sum(plan.by_verdict().values()) == len(names)
    js = plan.to_dict()
    assert js["summary"]["files"] == len(names)
    assert js["summary"]["removals"] == len(plan.removals) == 5
    assert {d["name"] for d in js["decisions"]} == set(names)


def test_a_rule_that_would_remove_a_symlink_is_overruled(node, monkeypatch):
    """Defence in depth: whatever a rule says, only nova's own kinds can be removed."""
    from novakeeper.cache import policy

    target = node.root / "elsewhere"
    target.write_bytes(b"x")
    os.symlink(target, node.cache / "link")
    original = node.original("img", age=30 * DAY)

    def remove_everything(f):
        return policy._decide(f, Verdict.REMOVE, "rule gone wrong")

    monkeypatch.setattr(policy, "RULES", (remove_everything,))
    plan = node.plan()

    assert verdicts(plan) == {"link": "unknown", original.name: "remove"}
