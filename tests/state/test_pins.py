"""Pins (novakeeper.state.pins): Glance image ids mapped to cache names by sha1, glob
patterns of cache file names, from the configuration and from `cache pin` (stored in a
real SQLite state database), merged into the one Pins value the policy reads; and the
policy's rule: a pinned file is never removed, by age or by budget.
"""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from _inventory_data import DAY, KiB, base_file, inventory
from novakeeper.cache.budget import BudgetConfig
from novakeeper.cache.layout import BaseKind, classify
from novakeeper.cache.plan import Verdict
from novakeeper.cache.policy import Observed, PolicyConfig, decide
from novakeeper.state import pins
from novakeeper.state.db import open_state
from novakeeper.state.pins import Pin, Pins

IMAGE = "6a1c5c1e-0d4f-4a8e-9a63-0a5d2f7b3c11"
HASH = hashlib.sha1(IMAGE.encode()).hexdigest()
NOW = 1_700_000_000.0


@pytest.fixture
def db(tmp_path):
    state = open_state(str(tmp_path / "nk" / "state.db"), write=True)
    yield state
    state.close()


def match(p: Pins, name: str) -> Pin | None:
    c = classify(name)
    return p.match(name, c.kind, c.image_hash)


# -- names ------------------------------------------------------------------------------


def test_hash_for_an_image_id_is_novas_cache_name():
    assert pins.hash_for(IMAGE) == HASH
    assert pins.hash_for(f"  {IMAGE}\n") == HASH


def test_hash_for_a_cache_name_is_itself_lowercased():
    assert pins.hash_for(HASH) == HASH
    assert pins.hash_for(HASH.upper()) == HASH
    assert pins.hash_for(HASH[:39]) != HASH[:39]  # not 40 hex digits: an image id


@pytest.mark.parametrize("image, why", [
    ("", "an image id cannot be empty"),
    ("   ", "an image id cannot be empty"),
    ("a b", "'a b' is not an image id (it contains white space)"),
    (IMAGE, None),
    (HASH, None),
])
def test_check_image_id(image, why):
    assert pins.check_image_id(image) == why


@pytest.mark.parametrize("pattern, why", [
    ("", "a file pattern cannot be empty"),
    ("../*", "'../*': a pattern matches names inside the cache folder, without '/'"),
    ("/etc/passwd", "'/etc/passwd': a pattern matches names inside the cache folder, "
                    "without '/'"),
    ("swap_*", None),
    ("ephemeral_[0-9]*", None),
])
def test_check_pattern(pattern, why):
    assert pins.check_pattern(pattern) == why


# -- matching ---------------------------------------------------------------------------


def test_an_image_pin_keeps_the_base_and_its_resized_copies_only():
    p = Pins((Pin("image", IMAGE, "config"),))
    assert match(p, HASH) is p.pins[0]
    assert match(p, f"{HASH}_21474836480") is p.pins[0]
    assert match(p, f"{HASH}_sm") is p.pins[0]
    # a dead download or a leftover of it is not the image
    for name in (f"{HASH}.part", f"{HASH}.converted", f"{HASH}.info",
                 hashlib.sha1(b"other").hexdigest(), "swap_512"):
        assert match(p, name) is None, name


def test_an_image_pin_by_cache_name_works_the_same():
    p = Pins((Pin("image", HASH.upper(), "state"),))
    assert match(p, HASH) is p.pins[0]
    assert p.pins[0].hash == HASH


def test_a_file_pin_is_a_case_sensitive_glob_on_any_kind():
    p = Pins((Pin("file", "swap_*", "config"), Pin("file", f"{HASH[:6]}*.part", "state")))
    assert match(p, "swap_512") is p.pins[0]
    assert match(p, "SWAP_512") is None
    assert match(p, f"{HASH}.part") is p.pins[1]
    assert match(p, "ephemeral_1_0706d66") is None


def test_the_first_pin_for_an_image_is_the_one_reported():
    first = Pin("image", IMAGE, "config")
    p = Pins((first, Pin("image", HASH, "state"), Pin("file", HASH, "state")))
    assert match(p, HASH) is first
    assert len(p) == 3


def test_keeps_lists_the_names_a_pin_keeps():
    p = Pins((Pin("image", IMAGE, "config"), Pin("file", "swap_*", "config")))
    names = [HASH, f"{HASH}_20", f"{HASH}.part", "swap_1", "ephemeral_1_0706d66", "README"]
    assert p.keeps(names) == [HASH, f"{HASH}_20", "swap_1"]


def test_words_and_dict():
    assert Pin("image", IMAGE, "config").words() == f"pinned: image {IMAGE} (nova.conf)"
    assert Pin("file", "swap_*", "state").words() == "pinned: matches 'swap_*' (cache pin)"
    assert Pin("image", IMAGE, "state", "golden", 5.0).to_dict() == {
        "kind": "image", "value": IMAGE, "source": "state", "hash": HASH, "note": "golden",
        "created": 5.0}
    assert Pin("file", "swap_*", "config").to_dict()["hash"] is None


def test_from_config_strips_and_drops_empty_entries():
    assert pins.from_config([f" {IMAGE} ", ""], ["swap_*", "  "]) == [
        Pin("image", IMAGE, "config"), Pin("file", "swap_*", "config")]


# -- stored pins --------------------------------------------------------------------------


def test_add_load_and_add_again(db):
    assert pins.add(db, "image", IMAGE, "golden image", NOW) is True
    assert pins.add(db, "file", "swap_*", "", NOW + 1) is True
    assert pins.add(db, "image", IMAGE, "again", NOW + 2) is False  # already pinned
    assert pins.load(db) == [Pin("image", IMAGE, "state", "golden image", NOW),
                             Pin("file", "swap_*", "state", "", NOW + 1)]
    stored = db.conn.execute("SELECT hash FROM pins WHERE kind = 'image'").fetchone()[0]
    assert stored == HASH


def test_remove_by_value_or_by_the_other_name(db):
    pins.add(db, "image", IMAGE, "", NOW)
    assert pins.remove(db, "image", HASH) is True  # pinned by id, unpinned by cache name
    assert pins.load(db) == []
    pins.add(db, "image", HASH, "", NOW)
    assert pins.remove(db, "image", IMAGE) is True  # and the other way round
    assert pins.load(db) == []


def test_remove_what_is_not_pinned(db):
    pins.add(db, "file", "swap_*", "", NOW)
    assert pins.remove(db, "image", IMAGE) is False
    assert pins.remove(db, "image", "swap_*") is False  # a pattern is not an image
    assert pins.remove(db, "file", "swap_1") is False  # nor is one name it matches
    assert pins.load(db) == [Pin("file", "swap_*", "state", "", NOW)]


def test_the_database_stores_no_unknown_pin_kind(db):
    """The CHECK constraint holds; INSERT OR IGNORE turns its violation into 'not added'."""
    assert pins.add(db, "folder", "x", "", NOW) is False
    assert pins.load(db) == []
    with pytest.raises(sqlite3.IntegrityError), db.write() as conn:
        conn.execute("INSERT INTO pins (kind, value, created) VALUES ('folder', 'x', 0)")


# -- the policy ---------------------------------------------------------------------------


def test_a_pinned_base_is_kept_by_age_and_by_budget():
    old = NOW - 400 * DAY
    inv = inventory([base_file(HASH, 64 * KiB, old), base_file(f"{HASH}_20", 64 * KiB, old),
                     base_file(f"{HASH}.part", 64 * KiB, old),
                     base_file("swap_512", 64 * KiB, old)])
    observed = Observed(pins=Pins((Pin("image", IMAGE, "state"),
                                   Pin("file", "swap_*", "config"))))
    plan = decide(inv, PolicyConfig(budget=BudgetConfig(max_cache_size=1)), NOW, observed)
    got = {d.name: d.verdict for d in plan.decisions}
    assert got == {HASH: Verdict.PINNED, f"{HASH}_20": Verdict.PINNED,
                   f"{HASH}.part": Verdict.STALE_PARTIAL, "swap_512": Verdict.PINNED}
    assert plan.shortfall == 3 * 64 * KiB - 1
    assert plan.budget.kept == {"pinned": 3 * 64 * KiB}


def test_in_use_wins_over_a_pin_in_the_plan():
    inv = inventory([base_file(HASH, 64 * KiB, NOW - DAY)], {HASH: ["i-1"]})
    observed = Observed(pins=Pins((Pin("image", IMAGE, "state"),)))
    [d] = decide(inv, PolicyConfig(), NOW, observed).decisions
    assert d.verdict is Verdict.IN_USE
    assert d.kind is BaseKind.ORIGINAL
