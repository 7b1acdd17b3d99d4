"""The space budget from the command line, end to end: a real tree (raw bases holding real
data, qcow2 disks made by qemu-img), usage recorded by earlier scans of that tree, and
`python -m novakeeper` in child processes (exit codes, stderr as an operator sees it).
Error-message matrices run `cli.main` in-process, which prints the same one line.

The tree: eight 256 KiB bases, nova's age rule keeping every unused one (90 days):
  D  never seen in use, modified 30 d ago      -> evicted first
  A  last used 20 d ago                        -> evicted second
  B  last used 10 d ago                        -> evicted third
  C  last used 3 d ago                         -> kept: the budget is met without it
  E  in use by an instance
  F  pinned in nova.conf (pinned_images), G pinned with `cache pin`, swap_512 pinned
     by pattern (pinned_files)
max_cache_size = 1300K: 2 MiB held, 748 KiB over.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from _cli_tree import DAY, make_overlay, run_cli, set_age
from novakeeper import cli as cli_mod
from novakeeper.cache.inventory import Scanner
from novakeeper.cache.layout import BaseKind, image_hash
from novakeeper.cache.plan import Decision, Verdict
from novakeeper.errors import ExitCode
from novakeeper.state import pins, usage
from novakeeper.state.db import SCHEMA_VERSION, open_state
from novakeeper.state.journal import Entry, Journal

KiB = 1 << 10
SIZE = 256 * KiB
D, A, B, C, E, F, G = (image_hash(f"image-{k}") for k in "dabcefg")
SWAP = "swap_512"
AGES = {D: 30 * DAY, A: 40 * DAY, B: 40 * DAY, C: 40 * DAY, E: 40 * DAY, F: 50 * DAY,
        G: 50 * DAY, SWAP: 50 * DAY}
CONFIG = """\
[image_cache]
remove_unused_original_minimum_age_seconds = 7776000

[novakeeper]
max_cache_size = {max_cache_size}
pinned_images = image-f
pinned_files = swap_*
"""


@dataclass
class BudgetTree:
    root: Path
    instances: Path
    cache: Path
    config: Path
    state: Path

    def cli(self, *args: str) -> list[str]:
        return ["--config-file", str(self.config), "--instances-path", str(self.instances),
                *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*self.cli(*args))

    def names(self) -> set[str]:
        """The cache's files, without novakeeper's own run lock (a dot file)."""
        return {n for n in os.listdir(self.cache) if not n.startswith(".")}

    def configure(self, max_cache_size: str = "1300K", extra: str = "") -> None:
        self.config.write_text(CONFIG.format(max_cache_size=max_cache_size) + extra)


def settle(cache: Path, now: float) -> None:
    for name, age in AGES.items():
        set_age(str(cache / name), age, now)


@pytest.fixture
def tree(tmp_path: Path, _private_state_database: Path) -> BudgetTree:
    now = time.time()
    instances = tmp_path / "instances"
    cache = instances / "_base"
    cache.mkdir(parents=True)
    for name in AGES:
        (cache / name).write_bytes(b"\xa5" * SIZE)
        assert (cache / name).stat().st_blocks * 512 == SIZE, "unexpected allocation"
    folders = {}
    for n, name in enumerate((A, B, C, E), start=1):
        folder = instances / f"{n:08x}-0000-4000-8000-{n:012x}"
        folder.mkdir()
        (folder / "console.log").touch()  # a finished spawn
        make_overlay(str(folder / "disk"), str(cache / name))
        folders[name] = folder
    # earlier scans: A, B and C were in use 20, 10 and 3 days ago, then their instances went
    db = open_state(str(_private_state_database), write=True)
    try:
        for name, ago in ((A, 20), (B, 10), (C, 3)):
            settle(cache, now)
            usage.record(db, Scanner(str(instances), "_base").scan(), now - ago * DAY)
            shutil.rmtree(folders[name])
    finally:
        db.close()
    settle(cache, now)
    t = BudgetTree(tmp_path, instances, cache, tmp_path / "nova.conf", _private_state_database)
    t.configure()
    db = open_state(str(_private_state_database), write=True)
    try:  # as `cache pin image-g` does (that command is tested below)
        pins.add(db, "image", "image-g", "golden", now)
    finally:
        db.close()
    return t


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """Exactly one `novakeeper: error:` line, the last one, and no traceback."""
    lines = proc.stderr.splitlines()
    errors = [line for line in lines if line.startswith("novakeeper: error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]


def main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """cli.main in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        cli_mod.main(args)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def plan_json(tree: BudgetTree, capsys: pytest.CaptureFixture[str]) -> dict:
    code, out, err = main(tree.cli("cache", "plan", "--json"), capsys)
    assert code == 0, err
    return json.loads(out)


def words(text: str) -> str:
    """Output with rich's line wrapping undone: one space between words."""
    return " ".join(text.split())


# -- plan -------------------------------------------------------------------------------


def test_plan_shows_evictions_in_lru_order_and_the_budget_line(tree, capsys):
    proc = tree.run("cache", "plan")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "LAST USED" in lines[0]
    rows = [line.split() for line in lines if line.split()[:1] in (["evict"], ["too-young"],
                                                                    ["pinned"], ["in-use"])]
    assert [r[2] for r in rows if r[0] == "evict"] == [D, A, B]  # least recently used first
    assert {r[2] for r in rows if r[0] == "pinned"} == {F, G, SWAP}
    assert [r[2] for r in rows if r[0] == "in-use"] == [E]
    assert [r[2] for r in rows if r[0] == "too-young"] == [C]
    assert ("budget: over budget by 748.0 KiB (cache holds 2.0 MiB of max_cache_size "
            "1.3 MiB); evicting 3 least recently used bases frees 768.0 KiB") in lines

    plan = plan_json(tree, capsys)
    d = {x["name"]: x for x in plan["decisions"]}
    assert {n: x["verdict"] for n, x in d.items()} == {
        D: "evict", A: "evict", B: "evict", C: "too-young", E: "in-use", F: "pinned",
        G: "pinned", SWAP: "pinned"}
    assert d[D]["reason"] == ("over budget by 748.0 KiB; least recently used (never seen "
                              "in use, modified 30 d ago); frees 256.0 KiB")
    assert d[A]["reason"] == ("over budget by 492.0 KiB; least recently used (last used "
                              "20 d ago); frees 256.0 KiB")
    assert d[B]["reason"] == ("over budget by 236.0 KiB; least recently used (last used "
                              "10 d ago); frees 256.0 KiB")
    assert d[G]["reason"] == "pinned: image image-g (cache pin)"
    assert d[F]["reason"] == "pinned: image image-f (nova.conf)"
    assert d[SWAP]["reason"] == "pinned: matches 'swap_*' (nova.conf)"
    budget = plan["budget"]
    assert (budget["need"], budget["evicted"], budget["by_eviction"], budget["shortfall"]) == (
        748 * KiB, 3, 3 * SIZE, 0)
    assert budget["binding"] == "max_cache_size"
    assert plan["policy"]["budget"]["max_cache_size"] == 1300 * KiB


def test_status_shows_budget_usage_and_headroom(tree, capsys):
    code, out, _ = main(tree.cli("cache", "status"), capsys)
    assert code == 0
    assert "headroom     OVER BUDGET by 748.0 KiB" in out
    assert ("  max_cache_size   cache holds 2.0 MiB of max_cache_size 1.3 MiB; "
            "headroom -748.0 KiB") in out
    code, out, _ = main(tree.cli("cache", "status", "--json"), capsys)
    assert json.loads(out)["budget"]["headroom"] == -748 * KiB

    tree.configure("4M")
    code, out, _ = main(tree.cli("cache", "status"), capsys)
    assert "headroom     2.0 MiB before eviction starts" in out
    assert "budget       within budget: cache holds 2.0 MiB of max_cache_size 4.0 MiB; " \
           "headroom 2.0 MiB" in out

    tree.config.write_text("[DEFAULT]\n")
    code, out, _ = main(tree.cli("cache", "status"), capsys)
    assert "budget       none set" in out


# -- clean and history --------------------------------------------------------------------


def test_clean_evicts_them_keeps_pinned_and_in_use_and_history_lists_them(tree, capsys):
    proc = tree.run("cache", "clean", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert tree.names() == {C, E, F, G, SWAP}
    assert "removed 3 files, freed 768.0 KiB" in proc.stdout

    code, out, err = main(tree.cli("cache", "history", "--json"), capsys)
    assert code == 0, err
    entries = json.loads(out)["entries"]
    assert sorted(e["name"] for e in entries) == sorted([D, A, B])
    for e in entries:
        assert (e["verdict"], e["outcome"], e["bytes"], e["kind"]) == (
            "evict", "removed", SIZE, "original")
        assert e["path"] == str(tree.cache / e["name"])
        assert e["image_hash"] == e["name"]
        assert e["reason"].startswith("over budget by ")
        assert e["finished"] >= e["started"]
        assert e["policy"]["budget"]["max_cache_size"] == 1300 * KiB
    assert len({e["run"] for e in entries}) == 1

    proc = tree.run("cache", "history")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(" removed ") == 3
    assert proc.stdout.rstrip().endswith("3 entries; 768.0 KiB freed")

    plan = plan_json(tree, capsys)  # the next pass: within budget, nothing more to do
    assert plan["budget"]["need"] == 0
    assert not [d for d in plan["decisions"] if d["verdict"] == "evict"]


def test_history_since_and_limit(tree, capsys):
    db = open_state(str(tree.state), write=True)
    try:
        journal = Journal(db, {"max_cache_size": 1})
        for name, ago in ((D, 10 * DAY), (A, 2 * DAY), (B, 60)):
            d = Decision(name, str(tree.cache / name), kind=BaseKind.ORIGINAL,
                         verdict=Verdict.EVICT, reason="over budget", age=0, min_age=None,
                         size=SIZE, allocated=SIZE, frees=SIZE)
            when = time.time() - ago
            journal.end(journal.begin(d, SIZE, when), Entry.REMOVED, SIZE, "", when)
    finally:
        db.close()

    def names(*args: str) -> list[str]:
        code, out, err = main(tree.cli("cache", "history", "--json", *args), capsys)
        assert code == 0, err
        return [e["name"] for e in json.loads(out)["entries"]]

    assert names() == [D, A, B]
    assert names("--since", "7d") == [A, B]
    assert names("--since", "1h") == [B]
    assert names("--limit", "2") == [A, B]
    assert names("--since", "30d", "--limit", "1") == [B]

    proc = tree.run("cache", "history", "--since", "soon")
    assert proc.returncode == ExitCode.USAGE
    assert one_error_line(proc) == ("novakeeper: error: --since: 'soon' is not a duration "
                                    "(examples: 7d, 12h, 30m)")


def test_an_empty_history(tree, capsys):
    code, out, _ = main(tree.cli("cache", "history"), capsys)
    assert (code, out.strip()) == (0, "no removals recorded")


# -- shortfall ------------------------------------------------------------------------------


def test_clean_exits_10_when_the_budget_cannot_be_met(tree, capsys):
    tree.configure("1K")
    plan = plan_json(tree, capsys)  # a plan is no failure: it says so and exits 0
    assert plan["budget"]["shortfall"] == 1023 * KiB
    assert plan["budget"]["kept"] == {"in-use": SIZE, "pinned": 3 * SIZE}

    proc = tree.run("cache", "clean", "--yes")
    assert proc.returncode == ExitCode.SHORTFALL == 10, proc.stderr
    assert one_error_line(proc) == (
        "novakeeper: error: cannot meet the cache budget: 1023.0 KiB short (what remains is "
        "pinned 768.0 KiB, in-use 256.0 KiB)")
    assert tree.names() == {E, F, G, SWAP}  # every evictable base went, nothing else
    assert "CANNOT MEET BUDGET" in proc.stdout
    assert "WARNING novakeeper.cache [-] Cache budget: over budget by" in proc.stderr


# -- pins -----------------------------------------------------------------------------------


def test_pin_pins_and_unpin(tree, capsys):
    proc = tree.run("cache", "pin", "image-d", "--note", "keep for the demo")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"pinned image image-d (cache name {D})\n"
    code, out, _ = main(tree.cli("cache", "pin", "image-d"), capsys)
    assert (code, out) == (0, f"image image-d (cache name {D}) was already pinned\n")
    code, out, _ = main(tree.cli("cache", "pin", "--file", "ephemeral_*"), capsys)
    assert (code, out) == (0, "pinned pattern 'ephemeral_*'\n")

    # the plan keeps D now; C goes in its place
    verdicts = {d["name"]: d["verdict"] for d in plan_json(tree, capsys)["decisions"]}
    assert (verdicts[D], verdicts[A], verdicts[B], verdicts[C]) == (
        "pinned", "evict", "evict", "evict")

    code, out, _ = main(tree.cli("cache", "pins", "--json"), capsys)
    pins = {(p["kind"], p["value"]): p for p in json.loads(out)["pins"]}
    assert set(pins) == {("image", "image-f"), ("file", "swap_*"), ("image", "image-g"),
                         ("image", "image-d"), ("file", "ephemeral_*")}
    assert pins[("image", "image-f")]["source"] == "config"
    assert pins[("image", "image-d")]["source"] == "state"
    assert pins[("image", "image-d")]["note"] == "keep for the demo"
    assert pins[("image", "image-d")]["files"] == [D]
    assert pins[("image", "image-g")]["hash"] == G
    assert pins[("file", "swap_*")]["files"] == [SWAP]
    assert pins[("file", "ephemeral_*")]["files"] == []
    code, out, _ = main(tree.cli("cache", "pins"), capsys)
    assert "FILES KEPT" in out and "keep for the demo" in out

    code, out, _ = main(tree.cli("cache", "unpin", D), capsys)  # by cache name
    assert (code, out) == (0, f"unpinned {D}\n")
    code, _, err = main(tree.cli("cache", "unpin", "image-d"), capsys)
    assert code == ExitCode.USAGE
    assert err == "novakeeper: error: image-d is not pinned with `cache pin`\n"
    code, _, err = main(tree.cli("cache", "unpin", "image-f"), capsys)
    assert code == ExitCode.USAGE
    assert err == ("novakeeper: error: image-f is not pinned with `cache pin` (it is pinned "
                   "in the configuration: edit [novakeeper] there)\n")


@pytest.mark.parametrize("args, message", [
    (["--file", "../x*"], "'../x*': a pattern matches names inside the cache folder, "
                          "without '/'"),
    (["image d"], "'image d' is not an image id (it contains white space)"),
    ([" "], "an image id cannot be empty"),
])
def test_pin_refuses_what_is_not_a_pin(tree, capsys, args, message):
    code, out, err = main(tree.cli("cache", "pin", *args), capsys)
    assert (code, out, err) == (ExitCode.USAGE, "", f"novakeeper: error: {message}\n")


def test_pins_without_any(tree, capsys):
    tree.config.write_text("[DEFAULT]\n")
    main(tree.cli("cache", "unpin", "image-g"), capsys)
    code, out, _ = main(tree.cli("cache", "pins"), capsys)
    assert (code, out.strip()) == (0, "no pins")


# -- invalid options --------------------------------------------------------------------------


@pytest.mark.parametrize("text, option, reason", [
    ("max_cache_size = lots", "max_cache_size",
     "'lots' is not a size (examples: 50G, 500M, 1.5T)"),
    ("max_cache_size = 0", "max_cache_size",
     "0 would evict every unused base; unset it instead"),
    ("high_watermark = 120%", "high_watermark",
     "'120%': a percentage must be between 0% and 100%, exclusive"),
    ("high_watermark = 70%\nlow_watermark = 80%", "low_watermark",
     "80% is above high_watermark 70%; eviction stops below low"),
    ("low_watermark = 0%", "low_watermark",
     "'0%': a percentage must be between 0% and 100%, exclusive"),
    ("min_free_space = 10X", "min_free_space",
     "'10X' is not a size (examples: 50G, 500M, 1.5T)"),
    ("min_free_space = 150%", "min_free_space",
     "'150%': a percentage must be between 0% and 100%, exclusive"),
    ("eviction_min_age_seconds = -5", "eviction_min_age_seconds",
     "Should be greater than or equal to 0"),
    ("pinned_files = swap_*, a/b", "pinned_files",
     "'a/b': a pattern matches names inside the cache folder, without '/'"),
    ("pinned_images = good, not good", "pinned_images",
     "'not good' is not an image id (it contains white space)"),
], ids=["size", "zero", "high", "low>high", "low0", "free-size", "free-pct", "min-age",
        "files", "images"])
def test_invalid_budget_options_exit_3_naming_file_section_and_option(
        tmp_path, capsys, text, option, reason):
    config = tmp_path / "nova.conf"
    config.write_text(f"[DEFAULT]\n[novakeeper]\n{text}\n")
    code, out, err = main(["--config-file", str(config), "--instances-path", str(tmp_path),
                           "cache", "plan"], capsys)
    assert (code, out) == (ExitCode.CONFIG, "")
    assert err == f"novakeeper: error: {config}: [novakeeper] {option}: invalid value: " \
                  f"{reason}\n"


def test_invalid_budget_option_from_the_environment_is_named_as_such(tree, monkeypatch,
                                                                       capsys):
    monkeypatch.setenv("OS_NOVAKEEPER__HIGH_WATERMARK", "120%")
    code, _, err = main(tree.cli("cache", "plan"), capsys)
    assert code == ExitCode.CONFIG
    assert err == ("novakeeper: error: environment OS_NOVAKEEPER__HIGH_WATERMARK: "
                   "[novakeeper] high_watermark: invalid value: '120%': a percentage must be "
                   "between 0% and 100%, exclusive\n")


def test_clean_with_an_invalid_budget_removes_nothing(tree):
    names = tree.names()
    tree.configure("lots")
    proc = tree.run("cache", "clean", "--yes")
    assert proc.returncode == ExitCode.CONFIG
    assert one_error_line(proc) == (f"novakeeper: error: {tree.config}: [novakeeper] "
                                    "max_cache_size: invalid value: 'lots' is not a size "
                                    "(examples: 50G, 500M, 1.5T)")
    assert tree.names() == names


# -- the state database, unusable -----------------------------------------------------------


def test_unusable_state_database_plan_goes_on_with_a_note_clean_refuses(tree, monkeypatch):
    blocker = tree.root / "blocker"
    blocker.write_text("a file where a folder should be\n")
    bad = blocker / "state.db"
    monkeypatch.setenv("OS_NOVAKEEPER__STATE_PATH", str(bad))
    names = tree.names()

    proc = tree.run("cache", "plan")
    assert proc.returncode == 0, proc.stderr
    out = words(proc.stdout)
    assert f"note: state database {bad}: cannot read it: " in out
    assert out.endswith("pins made with `cache pin` and last-used times are unknown to this "
                        "plan; `clean` will refuse to run")
    assert "WARNING novakeeper.cache [-] state database" in proc.stderr
    assert any(line.startswith("budget: over budget by") for line in proc.stdout.splitlines())

    proc = tree.run("cache", "clean", "--yes")
    assert proc.returncode == ExitCode.PATH, proc.stderr
    assert one_error_line(proc) == f"novakeeper: error: state database {bad}: Not a directory"
    assert tree.names() == names
    assert blocker.read_text() == "a file where a folder should be\n"


def test_newer_state_schema_plan_notes_it_clean_refuses(tree):
    conn = sqlite3.connect(tree.state)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    names = tree.names()
    proc = tree.run("cache", "plan")
    assert proc.returncode == 0, proc.stderr
    assert f"has schema {SCHEMA_VERSION + 1}, newer than this novakeeper knows" \
        in words(proc.stdout)
    proc = tree.run("cache", "clean", "--yes")
    assert proc.returncode == ExitCode.CONFIG
    assert one_error_line(proc).startswith(
        f"novakeeper: error: state database {tree.state} has schema {SCHEMA_VERSION + 1}")
    assert tree.names() == names


def test_corrupt_state_database_is_rebuilt_and_the_plan_goes_on(tree, capsys):
    tree.state.write_bytes(b"\x00garbage\xff" * 1000)
    code, out, err = main(tree.cli("cache", "plan", "--json"), capsys)
    assert code == 0, err
    assert f"WARNING novakeeper.cache [-] State database {tree.state} is unusable" in err
    assert [p.name for p in tree.state.parent.iterdir() if ".corrupt-" in p.name]
    plan = json.loads(out)
    verdicts = {d["name"]: d["verdict"] for d in plan["decisions"]}
    # the `cache pin` pin and the last-used times were in the lost database: G is
    # evictable again and goes first (oldest mtime, 50 d); A, B and C tie at 40 d and go
    # by name (C, B), so the base used 3 days ago goes before the one used 20 days ago
    assert {n for n, v in verdicts.items() if v == "evict"} == {G, C, B}
    assert (verdicts[F], verdicts[SWAP], verdicts[E]) == ("pinned", "pinned", "in-use")
    assert plan["budget"]["shortfall"] == 0
