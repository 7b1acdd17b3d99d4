#!/usr/bin/env python3
"""Benchmark: what the signatures issue 12 added cost `novakeeper diagnose`, in one run.

    python bench/diagnose.py [--size 256M] [--runs 5] [--keep DIR] [--seed 1]

It builds a plain log set of --size with the tests' generator (tests/logs/loggen.py, as
bench/logs.py does), then times `novakeeper diagnose DIR --json` with the whole shipped
knowledge base against the same command with the five added signatures turned off by a
`--signatures` file (`enabled = false`): the thirteen that shipped before, the baseline.
The two take turns, one run each per round (bench/logs.py's measure_together), so both
meet the same machine. Checks first that both find the generator's failures and that the
added five find nothing in its ordinary traffic. Exits 1 if the full set takes more than
1.5 times the baseline's median.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "bench"), str(REPO / "src"), str(REPO / "tests" / "logs")]

import logs as logbench  # noqa: E402 - bench/logs.py: generator, timing helpers
from novakeeper.units import human_bytes, parse_size  # noqa: E402

ADDED = ("module-unreadable", "console-proxy-unreachable-backend", "no-valid-host-disk",
         "forced-host-down", "guest-agent-not-enabled")
TARGET = 1.5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="256M", help="log text to generate (default 256M)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per command")
    ap.add_argument("--keep", metavar="DIR", help="build (or reuse) the log set here")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="nk-diagbench-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "rotated"
    if not logs.is_dir():
        logbench.generate(work, parse_size(args.size), args.seed)
    off = work / "without-added.toml"
    off.write_text("".join(f'[[signature]]\nid = "{sid}"\nenabled = false\n\n'
                           for sid in ADDED))
    conf = work / "nova.conf"
    conf.write_text("[DEFAULT]\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update({"PYTHONPATH": str(REPO / "src"),
                "PYTHONPYCACHEPREFIX": str(work / "pycache"),
                "LC_ALL": os.environ.get("LC_ALL", "C.UTF-8")})
    base = [sys.executable, "-m", "novakeeper", "diagnose", str(logs), "--json",
            "--config-file", str(conf), *logbench.TZ]
    cmds = {"thirteen": [*base, "--signatures", str(off)], "eighteen": base}
    out = work / "out"
    out.mkdir(exist_ok=True)
    found = {}
    for name, cmd in cmds.items():
        logbench.run_once(cmd, out / name, env)
        found[name] = {h["id"] for h in json.loads((out / name).read_text())["hits"]}
    if found["thirteen"] != found["eighteen"] or found["eighteen"] & set(ADDED):
        print(f"different findings: {found}", file=sys.stderr)
        return 1
    times = logbench.measure_together(cmds, args.runs, out, env)
    total = sum(p.stat().st_size for p in logs.rglob("*") if p.is_file())
    ratio = times["eighteen"].median / times["thirteen"].median
    print(f"# novakeeper diagnose: 13 vs 18 signatures, {os.cpu_count()} CPUs, "
          f"{human_bytes(total)} of logs on disk")
    for name, t in times.items():
        print(f"{name:9} signatures: best {t.best:.2f} s, median {t.median:.2f} s, cpu "
              f"{t.cpu:.2f} s, peak {t.maxrss_kib // 1024} MB ({t.runs} runs)")
    print(f"found {sorted(found['eighteen'])} with both; eighteen / thirteen (median) = "
          f"{ratio:.2f}x (target <= {TARGET}x)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
