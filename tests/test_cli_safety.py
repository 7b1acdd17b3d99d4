"""The safety commands and options end to end through the CLI: one run per cache (exit
11), the trash and `cache restore`, --ignore-unreadable, shared storage and lock files in
`cache status`, and the usage sources shown by `cache plan`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _cli_tree import (
    ORIG_OLD,
    SWAP_OLD,
    Tree,
    build_tree,
    run_cli,
)
from novakeeper.cache.layout import TRASH_NAME
from novakeeper.errors import ExitCode


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return build_tree(str(tmp_path / "node"))


def with_config(tree: Tree, text: str) -> Tree:
    with open(tree.config, "a") as f:
        f.write(text)
    return tree


def test_a_second_clean_exits_11_while_one_runs(tree: Tree) -> None:
    script = ("import sys\nfrom novakeeper.cache.locks import run_lock\n"
              "with run_lock(sys.argv[1], sys.argv[2]):\n"
              "    print('in', flush=True)\n    sys.stdin.readline()\n")
    holder = subprocess.Popen([sys.executable, "-c", script, tree.instances_path,
                               tree.cache_path], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "in"
        before = sorted(os.listdir(tree.cache_path))
        proc = run_cli(*tree.cli("cache", "clean", "--yes"))
        assert proc.returncode == ExitCode.BUSY == 11
        [line] = proc.stderr.splitlines()
        assert line.startswith("novakeeper: error: another novakeeper run is cleaning ")
        assert f"pid {holder.pid}" in line
        assert sorted(os.listdir(tree.cache_path)) == before
        # planning is never locked out
        assert run_cli(*tree.cli("cache", "plan")).returncode == 0
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    assert run_cli(*tree.cli("cache", "clean", "--yes")).returncode == 0


def test_trash_then_restore_then_history(tree: Tree) -> None:
    with_config(tree, "[novakeeper]\ntrash_grace_seconds = 86400\n")
    proc = run_cli(*tree.cli("cache", "clean", "--yes"))
    assert proc.returncode == 0, proc.stderr
    assert f"moved {len(tree.removable)} to the trash" in proc.stdout
    trash = os.path.join(tree.cache_path, TRASH_NAME)
    assert set(os.listdir(trash)) == tree.removable
    status = json.loads(run_cli(*tree.cli("cache", "status", "--json")).stdout)
    assert {t["name"] for t in status["trash"]} == tree.removable

    proc = run_cli(*tree.cli("cache", "restore", ORIG_OLD))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"restored {tree.cache_file(ORIG_OLD)} ")
    assert os.path.isfile(tree.cache_file(ORIG_OLD))
    again = run_cli(*tree.cli("cache", "restore", ORIG_OLD))
    assert again.returncode == ExitCode.PATH
    assert again.stderr.startswith("novakeeper: error: ") and "not in the trash" in again.stderr

    history = json.loads(run_cli(*tree.cli("cache", "history", "--json")).stdout)["entries"]
    outcomes = [(e["name"], e["outcome"]) for e in history]
    assert (ORIG_OLD, "trashed") in outcomes and outcomes[-1] == (ORIG_OLD, "restored")


def test_ignore_unreadable_lets_a_broken_disk_hold_nothing(tmp_path: Path) -> None:
    tree = build_tree(str(tmp_path / "node"), broken_swap=True)
    held = json.loads(run_cli(*tree.cli("cache", "plan", "--json")).stdout)
    assert {d["name"]: d["verdict"] for d in held["decisions"]}[SWAP_OLD] == "held"
    proc = run_cli(*tree.cli("cache", "plan", "--json", "--ignore-unreadable"))
    assert proc.returncode == 0
    plan = json.loads(proc.stdout)
    assert {d["name"]: d["verdict"] for d in plan["decisions"]}[SWAP_OLD] == "remove"
    assert "WARNING novakeeper.cache [-] --ignore-unreadable: 1 unreadable" in proc.stderr
    assert any(n.startswith("--ignore-unreadable") for n in plan["notes"])
    assert plan["summary"]["problems"] == 1  # still listed


def test_ignore_unreadable_applies_to_the_executor_too(tmp_path: Path) -> None:
    """The executor re-checks by the plan's rules and options: with one corrupt disk on the
    node, `clean --ignore-unreadable` removes what its plan says (it used to skip every
    file as 'now held by disk-corrupt' and exit 6)."""
    tree = build_tree(str(tmp_path / "node"), broken_swap=True)
    proc = run_cli(*tree.cli("cache", "clean", "--yes", "--json", "--ignore-unreadable"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)["result"]
    removed = {o["name"] for o in result["outcomes"] if o["action"] == "removed"}
    assert SWAP_OLD in removed
    assert removed == tree.removable | {SWAP_OLD}
    assert not [o for o in result["outcomes"] if o["action"] == "skipped"]
    assert not os.path.exists(tree.cache_file(SWAP_OLD))
    # without the option the same node keeps it, and says why
    tree2 = build_tree(str(tmp_path / "node2"), broken_swap=True)
    proc = run_cli(*tree2.cli("cache", "clean", "--yes"))
    assert proc.returncode == ExitCode.PROBLEMS
    assert os.path.exists(tree2.cache_file(SWAP_OLD))


def test_status_shows_shared_storage_and_orphaned_locks(tree: Tree) -> None:
    now = time.time()
    with open(os.path.join(tree.instances_path, "compute_nodes"), "w") as f:
        json.dump({"cmp-1": now - 60, "cmp-2": now - 120, "cmp-old": now - 3 * 86400}, f)
    orphan = os.path.join(tree.instances_path, "locks", "nova-" + "0" * 40)
    open(orphan, "w").close()
    os.utime(orphan, (now - 2 * 86400, now - 2 * 86400))
    proc = run_cli(*tree.cli("cache", "status"))
    assert proc.returncode == 0, proc.stderr
    assert "SHARED storage: 3 compute hosts registered in compute_nodes, 2 active" in proc.stdout
    assert "cmp-old" in proc.stdout and "STALE" in proc.stdout
    assert orphan in proc.stdout
    data = json.loads(run_cli(*tree.cli("cache", "status", "--json")).stdout)
    assert data["storage"]["shared"] is True
    assert [u["host"] for u in data["storage"]["users"] if u["stale"]] == ["cmp-old"]
    assert [o["path"] for o in data["orphaned_locks"]] == [orphan]


def test_an_undecodable_registry_is_reported_not_fatal(tree: Tree) -> None:
    with open(os.path.join(tree.instances_path, "compute_nodes"), "w") as f:
        f.write('{"cmp-1": 17')  # nova rewrites it in place: a read can catch it half done
    proc = run_cli(*tree.cli("cache", "status"))
    assert proc.returncode == 0
    assert "cannot decode JSON from" in proc.stdout


def test_a_process_holding_a_base_open_keeps_it_and_the_plan_says_so(tree: Tree) -> None:
    path = tree.cache_file(ORIG_OLD)
    with open(path, "rb") as held:
        holder = subprocess.Popen(["sleep", "60"], pass_fds=(held.fileno(),))
    try:
        plan = json.loads(run_cli(*tree.cli("cache", "plan", "--json")).stdout)
        d = {x["name"]: x for x in plan["decisions"]}[ORIG_OLD]
        assert d["verdict"] == "in-use" and d["sources"] == ["open-files"]
        assert d["seen_by"] == [f"open-files: pid {holder.pid} (sleep)"]
        assert run_cli(*tree.cli("cache", "clean", "--yes")).returncode == 0
        assert os.path.isfile(path)
    finally:
        holder.kill()
        holder.wait()
    # a configured source that cannot answer keeps everything nova made
    with_config(tree, "[novakeeper]\nusage_sources = libvirt\n"
                      "[libvirt]\nconnection_uri = test:///nonexistent/node.xml\n")
    proc = run_cli(*tree.cli("cache", "plan", "--json"))
    plan = json.loads(proc.stdout)
    verdicts = {x["name"]: x["verdict"] for x in plan["decisions"]}
    assert verdicts[ORIG_OLD] == "held"
    assert plan["summary"]["removals"] == 0
    assert "Usage source libvirt failed" in proc.stderr
