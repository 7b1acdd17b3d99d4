"""`novakeeper cache serve` as a real subprocess against a real tree: passes happen, the
metrics file appears and parses, /metrics answers, SIGHUP with a broken configuration
keeps the old one, SIGTERM mid-pass finishes the current removal and exits 0, systemd
hears READY and WATCHDOG. Everything is synchronised on the service's own log lines and
datagrams, never on sleeps."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from _cli_tree import ORIG_USED, Tree, build_tree, make_base, run_cli

DAY = 86400.0
TIMEOUT = 60.0


class Served:
    """A running `cache serve` whose stderr lines arrive on a queue."""

    def __init__(self, tree: Tree, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "novakeeper", *tree.cli("cache", "serve", *args)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})})
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.signalled = False
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text: str) -> str:
        while True:
            line = self.lines.get(timeout=TIMEOUT)
            if line is None:
                raise AssertionError(f"service exited before {text!r}:\n" +
                                     "\n".join(self.seen[-30:]))
            self.seen.append(line)
            assert "Traceback" not in line, "\n".join(self.seen[-30:])
            if text in line:
                return line

    def signal(self, signum: int) -> None:
        self.signalled |= signum == signal.SIGTERM
        self.proc.send_signal(signum)

    def stop(self) -> int:
        if not self.signalled:  # a second SIGTERM could land in interpreter shutdown
            self.signal(signal.SIGTERM)
        code = self.proc.wait(timeout=TIMEOUT)
        while True:  # drain, for the assertions on what it said
            line = self.lines.get(timeout=TIMEOUT)
            if line is None:
                return code
            self.seen.append(line)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    t = build_tree(str(tmp_path / "node"))
    with open(t.config, "a") as f:
        f.write("[image_cache]\nmanager_interval = 1\n")
    return t


@pytest.fixture
def served() -> Iterator[list[Served]]:
    running: list[Served] = []
    yield running
    for s in running:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def metrics_of(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def test_plan_mode_passes_export_metrics_and_remove_nothing(tree: Tree, tmp_path: Path,
                                                            served: list[Served]) -> None:
    prom = tmp_path / "textfile" / "novakeeper.prom"
    before = sorted(os.listdir(tree.cache_path))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    svc = Served(tree, "--metrics-file", str(prom), "--metrics-port", str(port))
    served.append(svc)
    svc.wait_for("service_mode = plan: passes plan, record and export metrics but remove "
                 "nothing")
    svc.wait_for("Pass 1 done")
    svc.wait_for("Pass 2 done")  # a second pass, one interval later
    m = metrics_of(prom.read_text())
    assert m["novakeeper_cache_pass_success"] == 1
    assert m["novakeeper_cache_passes_total{outcome=ok}"] >= 1
    assert m["novakeeper_service_deleting"] == 0 and m["novakeeper_service_interval_seconds"] == 1
    assert m["novakeeper_cache_files{kind=original,verdict=in-use}"] == 2
    assert m["novakeeper_cache_reclaimable_bytes"] > 0
    assert m["novakeeper_cache_disks"] == 3
    # the disk report's figures, from the pass's own scan, as `disk report` gives them
    proc = run_cli(*tree.cli("disk", "report", "--json"))
    assert proc.returncode == 0, proc.stderr
    disk = json.loads(proc.stdout)
    assert m["novakeeper_disk_over_commit_bytes"] == disk["over_commit"]["total"] > 0
    assert m["novakeeper_disk_worst_case_shortfall_bytes"] == disk["worst_case"]["shortfall"]
    assert m["novakeeper_disk_bytes{holder=instance-disks}"] == disk["bytes"]["instance_disks"]
    # free space on the shared /tmp moves between the pass and the command
    assert m["novakeeper_disk_available_least_gib"] == pytest.approx(
        disk["nova"]["disk_available_least"], abs=1.0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        live = metrics_of(r.read().decode())
    assert live["novakeeper_cache_disks"] == 3 and "process_cpu_seconds_total" in live
    assert svc.stop() == 0
    assert sorted(os.listdir(tree.cache_path)) == before  # plan mode removes nothing
    # unchanged files are not logged again at INFO on the second pass
    second = svc.seen[svc.seen.index(next(x for x in svc.seen if "Pass 1 done" in x)):]
    assert not any(f"in-use original: {tree.cache_file(ORIG_USED)}" in x for x in second)


def test_a_broken_config_on_sighup_keeps_the_old_one(tree: Tree,
                                                     served: list[Served]) -> None:
    svc = Served(tree)
    served.append(svc)
    svc.wait_for("Pass 1 done")
    with open(tree.config, "a") as f:
        f.write("[novakeeper]\nmax_cache_size = lots\n")
    svc.signal(signal.SIGHUP)
    line = svc.wait_for("Configuration reload failed, keeping the previous configuration")
    assert "max_cache_size: invalid value" in line
    svc.wait_for("Pass 2 done")  # still serving with the old configuration
    # a good one is taken
    with open(tree.config, "w") as f:
        f.write("[image_cache]\nmanager_interval = 1\n[novakeeper]\nmax_cache_size = 1G\n")
    svc.signal(signal.SIGHUP)
    svc.wait_for("Configuration reloaded from")
    assert svc.stop() == 0


def test_sigterm_mid_pass_finishes_the_current_batch_and_exits_0(
        tree: Tree, served: list[Served]) -> None:
    now = __import__("time").time()
    names = [f"{i:040x}" for i in range(1, 7)]
    for name in names:
        make_base(tree.cache_file(name), age=30 * DAY, now=now)
    with open(tree.config, "a") as f:
        f.write("[novakeeper]\nservice_mode = clean\nlock_wait_seconds = 60\n"
                "removal_batch_size = 3\n")
    locks = os.path.join(tree.instances_path, "locks")
    # nova holds its lock on the third file: the pass is provably mid-way while it waits
    hold = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\nfrom oslo_concurrency import lockutils\n"
         "l = lockutils.external_lock(sys.argv[1], lock_file_prefix='nova-', "
         "lock_path=sys.argv[2])\nl.acquire()\nprint('locked', flush=True)\n"
         "sys.stdin.readline()\n", names[2], locks],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert hold.stdout is not None and hold.stdout.readline().strip() == "locked"
    svc = Served(tree, env={"OS_IMAGE_CACHE__MANAGER_INTERVAL": "3600"})
    served.append(svc)
    svc.wait_for("REMOVES what its plan allows")
    # the first batch (three files) takes nova's locks before any removal
    svc.wait_for(f"Waiting up to 60 s for nova's lock {locks}/nova-{names[2]}")
    svc.signal(signal.SIGTERM)  # arrives while it waits for nova's lock
    assert hold.stdin is not None
    hold.stdin.close()  # nova lets go: the current batch completes
    hold.wait(timeout=TIMEOUT)
    assert svc.stop() == 0
    assert any("Stopping between removals" in x for x in svc.seen), svc.seen[-10:]
    left = set(os.listdir(tree.cache_path))
    assert not {names[0], names[1], names[2]} & left  # the batch in progress finished
    assert {names[3], names[4], names[5]} <= left  # the next batch was not started
    assert tree.in_use <= left
    db = sqlite3.connect(os.environ["OS_NOVAKEEPER__STATE_PATH"])
    rows = dict(db.execute("SELECT name, outcome FROM journal").fetchall())
    assert {n: rows.get(n) for n in names[:3]} == {n: "removed" for n in names[:3]}
    assert "started" not in rows.values()
    history = json.loads(run_cli(*tree.cli("cache", "history", "--json")).stdout)
    assert {e["name"] for e in history["entries"]} >= set(names[:3])


def test_disabled_interval_idles_and_says_so(tree: Tree, served: list[Served]) -> None:
    svc = Served(tree, env={"OS_IMAGE_CACHE__MANAGER_INTERVAL": "-1"})
    served.append(svc)
    svc.wait_for("manager_interval is -1: passes are disabled")
    assert svc.stop() == 0
    assert not any("Pass 1" in x for x in svc.seen)


def test_systemd_hears_ready_and_watchdog(tree: Tree, tmp_path: Path,
                                          served: list[Served]) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(TIMEOUT)
        svc = Served(tree, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
        served.append(svc)
        got: list[str] = []
        while not ({"READY=1", "WATCHDOG=1"} <= set(got)):
            got += sock.recv(4096).decode().splitlines()
        assert any(x.startswith("STATUS=") for x in got)
        assert svc.stop() == 0
        while "STOPPING=1" not in got:
            got += sock.recv(4096).decode().splitlines()


def test_a_bad_config_at_start_is_a_one_line_error(tree: Tree) -> None:
    with open(tree.config, "a") as f:
        f.write("[novakeeper]\nservice_mode = sometimes\n")
    proc = run_cli(*tree.cli("cache", "serve"))
    assert proc.returncode == 3
    [line] = proc.stderr.splitlines()
    assert line.startswith("novakeeper: error: ") and "service_mode" in line


def test_the_service_verifies_and_reports_a_corrupt_in_use_base_loudly(
        tree: Tree, tmp_path: Path, served: list[Served]) -> None:
    prom = tmp_path / "novakeeper.prom"
    with open(tree.config, "a") as f:
        f.write("[novakeeper]\nverify_files_per_pass = 20\n")
    svc = Served(tree, "--metrics-file", str(prom))
    served.append(svc)
    svc.wait_for("Pass 1 done")
    svc.wait_for("Verified")  # every base read once and recorded
    base = tree.cache_file(ORIG_USED)
    st = os.stat(base)
    with open(base, "r+b") as f:  # bit rot: one byte, size and mtime unchanged
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    os.utime(base, ns=(st.st_atime_ns, st.st_mtime_ns))
    line = svc.wait_for(f"In-use base file is CORRUPT: {base}")
    assert " ERROR novakeeper.cache [-] " in line and "instances at risk: " in line
    svc.wait_for("Pass")  # the metrics of that pass are written after it
    svc.wait_for("Pass")
    m = metrics_of(prom.read_text())
    assert m["novakeeper_cache_in_use_corrupt_bases"] == 1
    assert svc.stop() == 0
    assert os.path.isfile(base)  # in use: reported, never moved


def test_a_metrics_port_already_taken_is_a_one_line_error(tree: Tree) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run_cli(*tree.cli("cache", "serve", "--metrics-port", str(port)))
    assert proc.returncode == 2
    [line] = [x for x in proc.stderr.splitlines() if "novakeeper: error:" in x]
    assert line == (f"novakeeper: error: --metrics-port: cannot listen on 127.0.0.1:{port}: "
                    "Address already in use")
    assert "Traceback" not in proc.stderr
