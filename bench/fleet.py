#!/usr/bin/env python3
"""Benchmark: `novakeeper fleet report` through ansible-runner against the same commands
run directly, node after node, on a fleet of local hosts.

    python bench/fleet.py [--nodes 1,4,8] [--forks 1,8] [--instances 20] [--runs 3]

Each node is a demo sandbox (tests/fleet/_lab.py: real qcow2 disks over a real _base)
with its own configuration and state; all share one venv built from this checkout's
wheels (the role's install is timed by tests/fleet, not here). For each node count N and
each --forks F it times `fleet report` (the playbook, ansible-runner's event parsing and
the merge, in this process; median of --runs), and, as the baseline in the same run,
the four commands the playbook runs on a node (--version, cache status --json, cache
history --json, disk report --help, and disk report --json where that exists) run
directly one node after another. Ansible's
connection is `local`: SSH would add its handshake per task (pipelining and
ControlPersist amortise it; measure on your own fleet).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]
from tests.fleet import _lab  # noqa: E402

from novakeeper.demo import write_config  # noqa: E402
from novakeeper.fleet import report as report_mod  # noqa: E402
from novakeeper.fleet import runner  # noqa: E402


def shared_venv(root: Path) -> Path:
    wheels = _lab.build_wheels(root / "wheels")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links",
                    str(wheels), "novakeeper"], check=True, env=_lab.node_env())
    return venv


def direct(nodes: list[_lab.Node]) -> float:
    started = time.perf_counter()
    for node in nodes:
        for command in (("--version",), ("cache", "status", "--json"),
                        ("cache", "history", "--json", "--limit", "1000")):
            argv = [str(node.bin), "--version"] if command == ("--version",) else node.argv(
                *command)
            subprocess.run(argv, capture_output=True, check=True, env=_lab.node_env())
        has_disk = subprocess.run([str(node.bin), "disk", "report", "--help"],
                                  capture_output=True, check=False, env=_lab.node_env())
        if has_disk.returncode == 0:
            subprocess.run(node.argv("disk", "report", "--json"), capture_output=True,
                           check=True, env=_lab.node_env())
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="1,4,8")
    ap.add_argument("--forks", default="1,8")
    ap.add_argument("--instances", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(x) for x in args.nodes.split(",")]
    forks_list = [int(x) for x in args.forks.split(",")]
    root = Path(tempfile.mkdtemp(prefix="novakeeper-bench-fleet-"))
    try:
        venv = shared_venv(root)
        nodes = []
        for i in range(max(sizes)):
            node = _lab.build_node(root, f"node{i}", args.instances, i + 1, root / "wheels")
            node.vars["novakeeper_venv"] = str(venv)
            node.vars["novakeeper_config_path"] = write_config(node.sandbox, str(node.root))
            nodes.append(node)
        os.environ.update({k: v for k, v in _lab.ansible_env().items()
                           if k.startswith("ANSIBLE_")})
        for key in [k for k in os.environ if k.startswith("OS_NOVAKEEPER__")]:
            del os.environ[key]
        print(f"{'nodes':>5} {'forks':>5} {'fleet report':>13} {'per node':>9} "
              f"{'direct':>8} {'per node':>9} {'ratio':>6}")
        for n in sizes:
            inventory = _lab.write_inventory(root / f"inventory-{n}.yml", nodes[:n], down=False)
            base = statistics.median(direct(nodes[:n]) for _ in range(args.runs))
            for forks in forks_list:
                times = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    run = runner.run_playbook(runner.REPORT_PLAYBOOK, str(inventory),
                                              forks=forks)
                    data = report_mod.merge(run)
                    times.append(time.perf_counter() - t0)
                    assert data["totals"]["reporting"] == n, data["down"]
                t = statistics.median(times)
                print(f"{n:>5} {forks:>5} {t:>12.2f}s {t / n:>8.2f}s {base:>7.2f}s "
                      f"{base / n:>8.2f}s {t / base:>5.1f}x", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
