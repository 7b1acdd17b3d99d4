#!/usr/bin/env python3
"""Benchmark: `novakeeper trace ID` against `grep -F ID` (and `zgrep -F ID`) on ~1 GiB of
OpenStack logs, side by side in one run.

    python bench/logs.py [--size 1G] [--runs 5] [--jobs N] [--keep DIR] [--seed 1]

It builds, in a temp folder, a realistic log set with the generator the tests use
(tests/logs/loggen.py): a controller (nova-api, -scheduler, -conductor, neutron-server,
glance-api, placement-api, keystone, cinder-volume) and three compute hosts (one logging
in UTC+1), background traffic with a request context on every line, and the test
scenarios, among them a boot that fails with a traceback on compute2. `--size` counts the
log text, uncompressed. Two copies of the same text are timed:

* rotated: as logrotate leaves it, `.log`, `.log.1` and `.log.2.gz` (a third of each
  service's text, compressed). grep cannot look inside .gz files, so the baseline is
  `zgrep -F ID` over all the files, which is what an operator runs there;
* plain: the .gz files decompressed, every file plain: the baseline is `grep -F ID`.

On each copy, after reading every file once (warm page cache), it times the baseline and
`novakeeper trace ID <folder> --tz-offset 'compute2/*=+01:00'` (text output to a file, as
grep's), best and median of --runs, and their CPU time (user + system, workers included).
The commands of a copy take turns, one run each per round, so that the baseline and the
trace meet the same state of the machine (page cache, other load). `python -c pass` and
`novakeeper --help` are timed for the fixed start-up cost, `trace --depth 0` (one pass:
the same work as grep) for the cost of a pass, `trace --hop-window 0` for the trace that
searches every request id in whole files. Peak memory is the largest process's ru_maxrss
(the CLI or one of its workers), measured at --size and at a quarter of it.

Each measured command runs under a small fork-and-wait4 wrapper, a fresh interpreter, so
no child inherits this (larger) process's high-water RSS. The CLI runs from its compiled
bytecode, as an installed package does (pip compiles it at install time): this script
clears PYTHONDONTWRITEBYTECODE for its children and points PYTHONPYCACHEPREFIX into its
work folder, so the checks' runs write the bytecode and the timed runs read it, and the
source tree is left alone.

Checks before timing: the trace finds the failing boot's components, its records hold
every line grep finds, and it finds the same records as with `--hop-window 0`. Exits 1 if
a target is missed: trace under 10 s and within 2x of the
baseline on each copy, peak memory flat (at most 1.25x between the sizes).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests" / "logs")]

import loggen  # noqa: E402 - the test suite's generator

from novakeeper.units import human_bytes, parse_size  # noqa: E402

TZ = ["--tz-offset", "compute2/*=+01:00"]
# Runs argv[2:] as a child, waits for it with wait4 and writes wall time, user and system
# CPU and ru_maxrss (KiB) as JSON to argv[1]; stdout goes to the file named by $BENCH_OUT.
WRAPPER = r"""
import json, os, sys, time
out = os.open(os.environ["BENCH_OUT"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.dup2(out, 1)
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t
with open(sys.argv[1], "w") as f:
    json.dump({"wall": wall, "user": ru.ru_utime, "sys": ru.ru_stime, "maxrss": ru.ru_maxrss,
               "status": os.waitstatus_to_exitcode(status)}, f)
"""


@dataclass
class Timing:
    best: float
    median: float
    cpu: float  # user + system of the best run
    maxrss_kib: int
    runs: int


def run_once(cmd: list[str], out: Path, env: dict[str, str]) -> dict[str, Any]:
    stats = out.with_suffix(".json")
    subprocess.run([sys.executable, "-c", WRAPPER, str(stats), *cmd], check=True,
                   env={**env, "BENCH_OUT": str(out)})
    r: dict[str, Any] = json.loads(stats.read_text())
    if r["status"] not in (0, 1):  # grep exits 1 when nothing matched
        raise SystemExit(f"{' '.join(cmd)} failed with status {r['status']}")
    return r


def timing(results: list[dict[str, Any]]) -> Timing:
    best = min(results, key=lambda r: r["wall"])
    return Timing(best["wall"], statistics.median(r["wall"] for r in results),
                  best["user"] + best["sys"], max(r["maxrss"] for r in results), len(results))


def measure(cmd: list[str], runs: int, out: Path, env: dict[str, str]) -> Timing:
    return timing([run_once(cmd, out, env) for _ in range(runs)])


def measure_together(cmds: dict[str, list[str]], runs: int, out: Path, env: dict[str, str]
                     ) -> dict[str, Timing]:
    """Each command once per round, in turn: a change in the machine's state (another
    job's load, the page cache being reclaimed) meets them all alike."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, cmd in cmds.items():
            results[name].append(run_once(cmd, out / name, env))
    return {name: timing(r) for name, r in results.items()}


def generate(root: Path, size: int, seed: int) -> loggen.LogSet:
    """`size` bytes of log text over as many simulated days as that takes."""
    sample = loggen.build(root / "calibrate", span=timedelta(minutes=30), seed=seed,
                          scenarios={})
    rate = sample.bytes_written / 1800  # bytes per simulated second
    shutil.rmtree(root / "calibrate")
    span = timedelta(seconds=size / rate * 1.02)
    return loggen.build(root / "rotated", span=span, size=size, seed=seed)


def plain_copy(src: Path, dst: Path) -> None:
    """The same text with every file plain: .gz decompressed, the rest hard-linked."""
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fin, open(target.with_suffix(""), "wb") as fout:
                shutil.copyfileobj(fin, fout, 16 << 20)
        else:
            os.link(path, target)


def warm(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(16 << 20):
                    pass


def files_of(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


def trace_json(nk: list[str], target: str, root: Path, cfg: list[str],
               env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run([*nk, "trace", target, str(root), *TZ, "--json", *cfg],
                          capture_output=True, text=True, env=env, check=True)
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def check(data: dict[str, Any], grep_lines: list[str], scenario: loggen.Scenario) -> None:
    labels = {r["label"] for r in data["records"]}
    if labels != scenario.services:
        raise SystemExit(f"trace found {sorted(labels)}, expected {sorted(scenario.services)}")
    traced = [ln for r in data["records"] for ln in r["lines"] if scenario.instance in ln]
    grepped = [ln.split(":", 1)[1] if ln.startswith("/") else ln for ln in grep_lines]
    if sorted(traced) != sorted(grepped):
        raise SystemExit(f"trace's records hold {len(traced)} lines naming the instance, "
                         f"grep found {len(grepped)}")


def grep_version() -> str:
    proc = subprocess.run(["grep", "--version"], capture_output=True, text=True)
    return proc.stdout.splitlines()[0]


def procedure(base: list[str], target: str, data: dict[str, Any], files: list[str]
              ) -> list[str]:
    """The procedure by hand, as one shell command: grep ID, then grep the request ids
    found at each hop, one grep per hop (the ids the trace followed)."""
    hops: dict[int, list[str]] = {}
    for r in data["summary"]["request_ids"]:
        if r["followed"] and r["hop"] > 0:
            hops.setdefault(r["hop"], []).append(r["id"])
    greps = [[*base, target, *files]]
    for hop in sorted(hops):
        greps.append([*base, *(a for i in hops[hop] for a in ("-e", i)), *files])
    return ["sh", "-c", "; ".join(" ".join(shlex.quote(a) for a in g) for g in greps)]


def loadavg() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G", help="log text to generate (default 1G)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per command (best of)")
    ap.add_argument("--jobs", type=int, default=None, help="trace --jobs (default: CPUs)")
    ap.add_argument("--keep", metavar="DIR", help="build (or reuse) the log sets here")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    size = parse_size(args.size)
    nk = [sys.executable, "-m", "novakeeper"]
    jobs = ["--jobs", str(args.jobs)] if args.jobs else []
    workdir = Path(args.keep or tempfile.mkdtemp(prefix="nk-logbench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update({"PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "PYTHONPYCACHEPREFIX": str(workdir / "pycache"),
        "LC_ALL": os.environ.get("LC_ALL", "C.UTF-8")})
    out = workdir / "out"
    out.mkdir(exist_ok=True)
    conf = workdir / "nova.conf"
    conf.write_text("[DEFAULT]\n")
    cfg = ["--config-file", str(conf)]
    print(f"# novakeeper log trace benchmark, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{grep_version()}")
    rows: dict[str, dict[str, object]] = {}
    failed = []
    try:
        sets = {}
        for label, n in (("full", size), ("quarter", size // 4)):
            root = workdir / label
            t = time.perf_counter()
            if not (root / "rotated").is_dir():
                logset = generate(root, n, args.seed)
                plain_copy(root / "rotated", root / "plain")
                (root / "ids.json").write_text(json.dumps(
                    {k: {"instance": s.instance, "services": sorted(s.services)}
                     for k, s in logset.scenarios.items()}))
            ids = json.loads((root / "ids.json").read_text())
            sc = loggen.Scenario("disk_full", ids["disk_full"]["instance"],
                                 services=set(ids["disk_full"]["services"]))
            sets[label] = (root, sc)
            text = sum(p.stat().st_size for p in (root / "plain").rglob("*") if p.is_file())
            disk = sum(p.stat().st_size for p in (root / "rotated").rglob("*") if p.is_file())
            print(f"# {label}: {human_bytes(text)} of log text in "
                  f"{len(files_of(root / 'rotated'))} files ({human_bytes(disk)} on disk "
                  f"rotated); ready in {time.perf_counter() - t:.0f} s")
        root, sc = sets["full"]
        target = sc.instance
        print(f"# traced: {target} (the disk_full boot, compute2 in UTC+1)")
        # correctness first, on both copies
        by_hand: dict[str, list[str]] = {}
        for copy, base in (("plain", ["grep", "-F"]), ("rotated", ["zgrep", "-F"])):
            grep = subprocess.run([*base, target, *files_of(root / copy)], capture_output=True,
                                  text=True, env=env)
            data = trace_json(nk, target, root / copy, cfg, env)
            check(data, grep.stdout.splitlines(), sc)
            whole = trace_json(nk, target, root / copy, [*cfg, "--hop-window", "0"], env)
            if [(r["file"], r["offset"]) for r in data["records"]] != [
                    (r["file"], r["offset"]) for r in whole["records"]]:
                raise SystemExit("trace found other records than with --hop-window 0")
            by_hand[copy] = procedure(base, target, data, files_of(root / copy))
        print(f"# checks passed; load average before timing: {loadavg()}")
        rows["python"] = {"timing": measure([sys.executable, "-c", "pass"], args.runs,
                                            out / "python", env)}
        rows["start-up"] = {"timing": measure([*nk, "--help"], args.runs, out / "help", env)}
        for copy, base in (("plain", ["grep", "-F"]), ("rotated", ["zgrep", "-F"])):
            files = files_of(root / copy)
            warm(root / copy)
            trace = [*nk, "trace", target, str(root / copy), *TZ, *jobs, *cfg]
            t = measure_together({
                f"grep-{copy}": [*base, target, *files],
                f"trace-{copy}": trace,
                f"trace0-{copy}": [*trace, "--depth", "0"],
                f"whole-{copy}": [*trace, "--hop-window", "0"],
                f"hand-{copy}": by_hand[copy]}, args.runs, out, env)
            rows[copy] = {"baseline": " ".join(base), "grep": t[f"grep-{copy}"],
                          "trace": t[f"trace-{copy}"], "depth0": t[f"trace0-{copy}"],
                          "whole": t[f"whole-{copy}"], "hand": t[f"hand-{copy}"]}
            # the passes of one more (warm) run of each, for the breakdown
            for name, extra in (("", []), (" whole", ["--hop-window", "0"])):
                rows[f"passes {copy}{name}"] = {"passes": trace_json(
                    nk, target, root / copy, [*cfg, *extra], env)["passes"]}
        qroot, qsc = sets["quarter"]
        warm(qroot / "rotated")
        quarter = measure([*nk, "trace", qsc.instance, str(qroot / "rotated"), *TZ, *jobs, *cfg],
                          args.runs, out / "trace-quarter", env)
        rows["quarter"] = {"trace": quarter}
        print(f"# load average after timing: {loadavg()}")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print("| set | command | best s | median s | CPU s | peak RSS MiB | trace / baseline |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for key, what in (("python", "`python -c pass` (the interpreter alone)"),
                      ("start-up", "`novakeeper --help` (start-up)")):
        s = rows[key]["timing"]
        assert isinstance(s, Timing)
        print(f"| - | {what} | {s.best:.3f} | {s.median:.3f} | {s.cpu:.3f} "
              f"| {s.maxrss_kib / 1024:.0f} | |")
    for copy in ("plain", "rotated"):
        r = rows[copy]
        g, tr, d0, hand, whole = r["grep"], r["trace"], r["depth0"], r["hand"], r["whole"]
        assert isinstance(g, Timing) and isinstance(tr, Timing) and isinstance(d0, Timing)
        assert isinstance(hand, Timing) and isinstance(whole, Timing)
        print(f"| {copy} | `{r['baseline']} ID` | {g.best:.3f} | {g.median:.3f} | "
              f"{g.cpu:.3f} | {g.maxrss_kib / 1024:.0f} | |")
        print(f"| {copy} | the procedure by hand: `{r['baseline']}` ID, then the ids of each "
              f"hop | {hand.best:.3f} | {hand.median:.3f} | {hand.cpu:.3f} | "
              f"{hand.maxrss_kib / 1024:.0f} | |")
        print(f"| {copy} | `novakeeper trace ID` | {tr.best:.3f} | {tr.median:.3f} | "
              f"{tr.cpu:.3f} | {tr.maxrss_kib / 1024:.0f} | {tr.best / g.best:.2f}x "
              f"(median {tr.median / g.median:.2f}x; {tr.best / hand.best:.2f}x by hand) |")
        print(f"| {copy} | `novakeeper trace ID --depth 0` | {d0.best:.3f} | {d0.median:.3f} "
              f"| {d0.cpu:.3f} | {d0.maxrss_kib / 1024:.0f} | {d0.best / g.best:.2f}x |")
        print(f"| {copy} | `novakeeper trace ID --hop-window 0` | {whole.best:.3f} | "
              f"{whole.median:.3f} | {whole.cpu:.3f} | {whole.maxrss_kib / 1024:.0f} | "
              f"{whole.best / g.best:.2f}x |")
        if tr.best >= 10:
            failed.append(f"{copy}: trace took {tr.best:.2f} s (target < 10 s)")
        if tr.best > 2 * g.best:
            failed.append(f"{copy}: trace is {tr.best / g.best:.2f}x {r['baseline']} "
                          "(target <= 2x)")
    q = rows["quarter"]["trace"]
    full = rows["rotated"]["trace"]
    assert isinstance(q, Timing) and isinstance(full, Timing)
    print(f"| rotated, {human_bytes(size // 4)} | `novakeeper trace ID` | {q.best:.3f} | "
          f"{q.median:.3f} | {q.cpu:.3f} | {q.maxrss_kib / 1024:.0f} | |")
    growth = full.maxrss_kib / q.maxrss_kib
    print(f"\npeak RSS at {human_bytes(size)} / at {human_bytes(size // 4)}: {growth:.2f}x")
    if growth > 1.25:
        failed.append(f"peak memory grew {growth:.2f}x for 4x the logs (target <= 1.25x)")
    for copy in ("plain", "plain whole", "rotated", "rotated whole"):
        passes = rows[f"passes {copy}"]["passes"]
        assert isinstance(passes, list)
        what = copy.replace(" whole", " copy, --hop-window 0") if "whole" in copy else (
            f"{copy} copy")
        print(f"passes over the {what}: " + "; ".join(
            f"{p['files']} {p['ids']} ids -> {p['records']} records, "
            f"{human_bytes(p['bytes'])} in {p['seconds']:.2f} s" for p in passes))
    for f in failed:
        print(f"TARGET MISSED: {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
