"""`novakeeper demo`: builds a sandbox compute node with real qcow2 disks, then plans and
cleans it. Checked from outside: what it prints, what it leaves behind, and that qemu-img
still finds every backing file of every disk afterwards."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from _cli_tree import QEMU_IMG, run_cli
from novakeeper import demo as demo_mod
from novakeeper.cache.executor import Executor, Report
from novakeeper.cache.plan import Verdict
from novakeeper.errors import ExitCode, NovakeeperError

REMOVED = re.compile(r"^removed (\d+) files, freed .+ in [\d.]+ s; marked (\d+) in-use bases$",
                     re.M)


def plan_rows(stdout: str, verdict: str) -> set[str]:
    """Names in the rows of the demo's printed plan table with `verdict`."""
    section = stdout.split("novakeeper cache plan", 1)[1].split("novakeeper cache clean", 1)[0]
    return {line.split()[2] for line in section.splitlines()
            if len(line.split()) > 2 and line.split()[0] == verdict}


def backing_files(instances_path: str) -> dict[str, str | None]:
    """Each disk outside the cache -> the backing file qemu-img reads from its header."""
    out: dict[str, str | None] = {}
    for dirpath, dirnames, filenames in os.walk(instances_path):
        dirnames[:] = [d for d in dirnames if d != "_base"]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if name in ("console.log", "libvirt.xml") or os.path.getsize(path) < 512:
                continue  # not disks, or the demo's deliberately truncated one
            proc = subprocess.run([QEMU_IMG, "info", "-U", "--output=json", path],
                                  capture_output=True, text=True, check=True)
            info = json.loads(proc.stdout)
            if info["format"] == "qcow2":
                out[path] = info.get("full-backing-filename")
    return out


def test_demo_runs_and_leaves_nothing_behind(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = run_cli("demo", "--instances", "20", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr
    out = proc.stdout
    assert "Sandbox compute node in " in out
    assert "27 instance folders" in out  # 20 asked for, plus the 7 special routes
    m = REMOVED.search(out)
    assert m is not None, out
    assert int(m.group(1)) > 0 and int(m.group(2)) > 0
    assert len(re.findall(r"^removed  ", out, re.M)) == int(m.group(1))  # one row each
    assert "nothing in use was removed; 0 files still removable (none)" in out
    assert "sandbox kept" not in out
    assert os.listdir(scratch) == []  # its temp folder is gone


def test_demo_keep_leaves_a_clean_tree_with_every_in_use_base(tmp_path: Path) -> None:
    root = tmp_path / "sandbox"
    proc = run_cli("demo", "--instances", "20", "--path", str(root), "--keep")
    assert proc.returncode == 0, proc.stderr
    ipath = root / "instances"
    conf = root / "novakeeper.conf"
    assert f"sandbox kept: try  novakeeper --config-file {conf} cache plan" in proc.stdout
    printed_in_use = plan_rows(proc.stdout, "in-use")
    evicted = plan_rows(proc.stdout, "evict")
    printed_removals = (plan_rows(proc.stdout, "remove") | evicted
                        | plan_rows(proc.stdout, "stale-partial"))
    pinned = plan_rows(proc.stdout, "pinned")
    assert printed_in_use and printed_removals and evicted and pinned
    cache = set(os.listdir(ipath / "_base"))
    assert printed_in_use <= cache
    assert pinned <= cache  # pinned and unused for days: kept by the pin alone
    assert not printed_removals & cache
    # every removal is in the journal the demo printed
    assert all(re.search(rf"^\S+ \S+ +removed +\S+ +{name} ", proc.stdout, re.M)
               for name in printed_removals), proc.stdout

    # the sandbox's own configuration: budget met, nothing left to remove
    after = run_cli("--config-file", str(conf), "cache", "plan", "--json")
    assert after.returncode == 0, after.stderr
    plan = json.loads(after.stdout)
    assert plan["summary"]["removals"] == 0
    assert plan["budget"]["need"] == 0 and plan["budget"]["headroom"] >= 0
    history = run_cli("--config-file", str(conf), "cache", "history", "--json")
    assert {e["name"] for e in json.loads(history.stdout)["entries"]} == printed_removals
    assert plan["summary"]["problems"] == 1  # the demo's truncated disk.swap ...
    held = [d for d in plan["decisions"] if d["verdict"] == "held"]
    assert [d["kind"] for d in held] == ["swap"]  # ... still holds the unused swap base
    assert os.path.isfile(held[0]["path"])
    in_use = {d["name"] for d in plan["decisions"] if d["verdict"] == "in-use"}
    assert in_use == printed_in_use
    assert all(os.path.isfile(ipath / "_base" / name) for name in in_use)

    # Independently of novakeeper: every disk's backing file is still there.
    chains = backing_files(str(ipath))
    assert len(chains) >= 20
    missing = {disk: b for disk, b in chains.items() if b is not None and not os.path.exists(b)}
    assert missing == {}
    used = {os.path.basename(b) for b in chains.values()
            if b is not None and os.path.dirname(b) == str(ipath / "_base")}
    assert used and used <= in_use


def test_demo_refuses_a_path_already_used(tmp_path: Path) -> None:
    root = tmp_path / "sandbox"
    (root / "instances").mkdir(parents=True)
    proc = run_cli("demo", "--instances", "10", "--path", str(root))
    assert proc.returncode == ExitCode.PATH
    assert proc.stderr == (f"novakeeper: error: {root}/instances already exists; "
                           "pick an empty --path\n")
    assert os.listdir(root) == ["instances"]  # the existing folder is left alone


def test_demo_relative_path(tmp_path: Path) -> None:
    # qemu-img resolves a relative backing name against the new image's folder, so the
    # sandbox must be built from absolute paths whatever --path looks like
    proc = run_cli("demo", "--instances", "10", "--path", "rel/sandbox", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    ipath = tmp_path / "rel" / "sandbox" / "instances"
    assert (ipath / "_base").is_dir()
    assert "nothing in use was removed" in proc.stdout


def test_demo_instances_below_minimum_is_a_usage_error() -> None:
    proc = run_cli("demo", "--instances", "5")
    assert proc.returncode == ExitCode.USAGE
    assert "Traceback" not in proc.stderr


def test_demo_checks_its_claim_that_nothing_in_use_was_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo must not print its safety claim when an in-use base did go."""

    class Careless(Executor):
        def run(self) -> Report:
            report = super().run()
            victim = next(d for d in self.plan.decisions if d.verdict is Verdict.IN_USE)
            os.unlink(victim.path)
            return report

    real = demo_mod.executor_for

    def careless(result, conf):  # the demo's executor, then one in-use base removed
        e = real(result, conf)
        return Careless(e.scanner, e.inventory, e.plan, e.touch_in_use, e.journal, e.locks)

    monkeypatch.setattr(demo_mod, "executor_for", careless)
    buf = io.StringIO()
    with pytest.raises(NovakeeperError) as info:
        demo_mod.run(str(tmp_path / "sandbox"), 10, False, Console(file=buf, width=200))
    assert info.value.code is ExitCode.INTERNAL
    assert info.value.message.startswith("in-use bases were removed: ")
    assert "nothing in use was removed" not in buf.getvalue()
