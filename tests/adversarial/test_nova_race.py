"""The race test against nova 34.0.0's REAL spawn code.

tests/adversarial/nova_player.py runs nova's own `LibvirtDriver._create_image` (folder,
`disk.info`, `Image.cache` -> `Qcow2.create_image`, privsep `utime`, `qemu-img`) in the
virtualenv `.ci/nova-setup` makes, with a local stand-in for Glance. Meanwhile this test
runs the installed `novakeeper cache clean --yes --json` in a loop, flat out, with every
minimum age at zero, on a node of 2,000 idle instance folders (real qcow2 disks over
in-use bases) plus old unused bases of the images the player boots.

Nova looks for an existing base without any lock (`os.path.exists(base)` in
`Image.cache` and `Qcow2.create_image`), then inspects it, sets its mtime through privsep
and runs `qemu-img info` on it, still without the lock, and takes `nova-<sha1>` only to
create the disk. A cleaner that removes the base anywhere in that span makes the spawn
fail. The test asserts that over NOVAKEEPER_NOVA_RACE_SPAWNS spawns (default 1000) no
spawn failed, no disk (the player's or the idle ones) lost its backing file, and clean
did remove bases meanwhile.

The second test runs a naive cleaner (a `find -mtime -delete` loop, as a cron script
would) against the same player and asserts that the player DOES see failures: the harness
can fail.

Both print how long nova's spawn takes from the instance folder's creation, and from
`disk.info`'s write, to the disk's creation (median, p90, max): what a cleaner's hold on
young, diskless instance folders must cover. Nothing waits on a clock: the player and the
cleaner run flat out and are started and stopped through pipes. NOVAKEEPER_NOVA_RACE_SEED
fixes the player's choices (not its threads' interleaving) and the node.

The player has two spawner threads, so a real cleaner's weak spot shows up only when a
spawn on the very base being removed starts within the cleaner's gap between its last
look and its act: with nova's real costs (~0.1-0.5 s a spawn on 2 cores) that is rare, a
few times per thousand spawns for a gap of tens of milliseconds. A failure here is always
real; a pass is evidence, not proof (tests/adversarial/test_race.py drives the gaps
deterministically).
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import struct
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nova_player import DAY, base_name, image_bytes, image_id

from conftest import side_venv_python

HERE = Path(__file__).resolve().parent
PLAYER = HERE / "nova_player.py"
QEMU_IMG = shutil.which("qemu-img") or "qemu-img"
SPAWNS = int(os.environ.get("NOVAKEEPER_NOVA_RACE_SPAWNS", "1000"))
SEED = int(os.environ.get("NOVAKEEPER_NOVA_RACE_SEED", "0")) or random.randrange(1, 1 << 30)
IDLE_FOLDERS = 2000
IDLE_BASES = 40
PLAYER_IMAGES = 6
OLD_UNUSED = 3
"""The player's images 0..2 start as bases unused for days; 3..5 are fetched on first use."""
BLOCK = 4096
IDLE = 0.05
"""The player's chance per step of a quiet moment lasting until the current pass ends."""
THREADS = 2
"""Spawns in flight at once, as nova's compute manager builds several at a time."""


@pytest.fixture(scope="module")
def nova() -> Path:
    return side_venv_python("nova", "NOVAKEEPER_NOVA_VENV")


def child_env() -> dict[str, str]:
    """No OS_* overrides reach novakeeper or nova from the caller's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env["PYTHONWARNINGS"] = "ignore"  # eventlet's deprecation banner, on every import
    return env


# -- the node ---------------------------------------------------------------------------


@dataclass
class Node:
    root: Path
    instances: Path
    cache: Path
    config: list[str]
    idle: list[tuple[str, str, int]] = field(default_factory=list)
    """(disk, backing file, its inode) of every idle instance."""

    def cli(self, *args: str) -> list[str]:
        exe = shutil.which("novakeeper")
        prefix = [exe] if exe else [sys.executable, "-m", "novakeeper"]
        options = [o for path in self.config for o in ("--config-file", path)]
        return [*prefix, *options, *args]

    def broken_idle_disks(self) -> list[str]:
        broken = []
        for disk, base, ino in self.idle:
            try:
                if os.stat(base).st_ino != ino:
                    broken.append(f"{disk}: backing file {base} replaced")
            except FileNotFoundError:
                broken.append(f"{disk}: backing file {base} removed")
        return broken


class DiskMaker:
    """qcow2 disks at the cost of a file write: one real disk by `qemu-img create`, then
    copies of its non-zero 4 KiB blocks (sparse) with another backing name of the same
    length patched into the header (bench/scan.py's and test_race.py's method)."""

    def __init__(self, scratch: Path, backing: str) -> None:
        template = scratch / "template.qcow2"
        subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", backing, "-F", "raw",
                        "-u", str(template), "1G"], check=True, capture_output=True,
                       timeout=60)
        data = template.read_bytes()
        self.offset, self.length = struct.unpack_from(">QI", data, 8)
        assert data[self.offset:self.offset + self.length] == backing.encode()
        assert self.offset + self.length <= BLOCK, "the backing name must be in block 0"
        self.size = len(data)
        self.blocks = [(i, data[i:i + BLOCK]) for i in range(0, len(data), BLOCK)
                       if data[i:i + BLOCK].strip(b"\0")]

    def make(self, path: Path, backing: str) -> None:
        name = backing.encode()
        assert len(name) == self.length
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for offset, block in self.blocks:
                if offset == 0:
                    block = block[:self.offset] + name + block[self.offset + self.length:]
                os.pwrite(fd, block, offset)
            os.ftruncate(fd, self.size)
        finally:
            os.close(fd)


def build_node(root: Path, folders: int) -> Node:
    """`folders` idle instances over IDLE_BASES bases (in use, and days old: in use
    whatever their age), the player's first OLD_UNUSED images as bases unused for days,
    and a config that removes any unused base at once."""
    rng = random.Random(SEED)
    now = time.time()
    instances = root / "instances"
    cache = instances / "_base"
    cache.mkdir(parents=True)
    (instances / "locks").mkdir()

    def raw(path: Path, data: bytes, age: float) -> None:
        path.write_bytes(data)
        os.utime(path, (now - age, now - age))

    idle_bases = []
    for i in range(IDLE_BASES):
        image = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        path = cache / base_name(image)
        raw(path, image_bytes(image), 10 * DAY + i)
        idle_bases.append(str(path))
    for i in range(OLD_UNUSED):
        image = image_id(i)
        raw(cache / base_name(image), image_bytes(image), 3 * DAY + i)

    maker = DiskMaker(root, idle_bases[0])
    idle: list[tuple[str, str, int]] = []
    for i in range(folders):
        folder = instances / str(uuid.UUID(int=rng.getrandbits(128), version=4))
        folder.mkdir()
        backing = idle_bases[i % IDLE_BASES]
        disk = folder / "disk"
        maker.make(disk, backing)
        (folder / "disk.info").write_text(json.dumps({str(disk): "qcow2"}) + "\n")
        (folder / "console.log").write_text("[    0.000000] Linux version 6.1.0\n")
        idle.append((str(disk), backing, os.stat(backing).st_ino))
    for made, backing, _ in (idle[0], idle[-1]):  # qemu-img reads the copies as meant
        chain = json.loads(subprocess.run(
            [QEMU_IMG, "info", "-U", "--backing-chain", "--output=json", made],
            check=True, capture_output=True, text=True, timeout=60).stdout)
        assert [c["filename"] for c in chain] == [made, backing]

    nova_conf = root / "nova.conf"
    nova_conf.write_text(
        f"[DEFAULT]\ninstances_path = {instances}\n"
        "[image_cache]\nremove_unused_original_minimum_age_seconds = 0\n"
        "remove_unused_resized_minimum_age_seconds = 0\n")
    keeper_conf = root / "novakeeper.conf"
    keeper_conf.write_text(f"[novakeeper]\nstate_path = {root / 'state.db'}\n")
    return Node(root, instances, cache, [str(nova_conf), str(keeper_conf)], idle)


# -- the race ---------------------------------------------------------------------------


@dataclass
class Cleaner:
    """What ran against the player: how many passes, what they removed."""

    rounds: int = 0
    removed: Counter[str] = field(default_factory=Counter)
    exits: Counter[int] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def describe(self) -> str:
        pace = (f", {sum(self.seconds) / len(self.seconds):.2f} s a pass"
                if self.seconds else "")
        return (f"{self.rounds} passes{pace}, removed {sum(self.removed.values())} "
                f"({dict(self.removed)}), exits {dict(self.exits)}, "
                f"skipped {dict(self.skipped.most_common(6))}")


def novakeeper_pass(node: Node, cleaner: Cleaner) -> None:
    started = time.monotonic()
    proc = subprocess.run(node.cli("cache", "clean", "--yes", "--json"), capture_output=True,
                          text=True, timeout=600, env=child_env(), stdin=subprocess.DEVNULL)
    cleaner.seconds.append(time.monotonic() - started)
    cleaner.rounds += 1
    cleaner.exits[proc.returncode] += 1
    if proc.returncode not in (0, 6):  # 6: a problem met while scanning held some files
        cleaner.errors.append(f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        return
    for outcome in json.loads(proc.stdout)["result"]["outcomes"]:
        if outcome["action"] in ("removed", "trashed"):
            cleaner.removed[outcome["name"][:8]] += 1
        else:
            why = outcome["reason"].split(" at /")[0].split(" by /")[0]
            cleaner.skipped[why.split(":")[0].split(" (")[0][:60]] += 1


def naive_pass(node: Node, cleaner: Cleaner) -> None:
    """A cron script: every file in _base untouched for an hour goes. No lock, no scan.
    (find exits 1 when a file it listed is gone before it is removed: not our concern.)"""
    subprocess.run(["find", str(node.cache), "-maxdepth", "1", "-type", "f", "-mmin", "+60",
                    "-print", "-delete"], check=False, capture_output=True, timeout=60)
    cleaner.rounds += 1


def race(node: Node, python: Path, spawns: int, clean_pass: Callable[[Node, Cleaner], None]
         ) -> tuple[dict[str, Any], Cleaner, float]:
    """The player's summary, what the cleaner did, and the seconds the race took."""
    errors = node.root / "player.stderr"
    with errors.open("w") as stderr:
        player = subprocess.Popen(
            [str(python), str(PLAYER), "--instances", str(node.instances),
             "--images", str(PLAYER_IMAGES), "--spawns", str(spawns), "--seed", str(SEED),
             "--idle", str(IDLE), "--threads", str(THREADS)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
            env=child_env())
    assert player.stdin is not None and player.stdout is not None
    cleaner = Cleaner()
    out = ""
    try:
        line = player.stdout.readline()
        assert line.strip() == "ready", f"{line!r}: {errors.read_text()[-3000:]}"
        started = time.monotonic()
        player.stdin.write("go\n")
        player.stdin.flush()
        # the player prints `idle` when it waits for the end of a pass, and its summary
        # when it is done (or nothing, when it dies)
        idle = False
        while True:
            if select.select([player.stdout], [], [], 0)[0]:
                line = player.stdout.readline()
                if line.strip() != "idle":
                    out = line
                    break
                idle = True
            clean_pass(node, cleaner)
            if cleaner.errors:
                break
            if idle:
                player.stdin.write("tick\n")
                player.stdin.flush()
                idle = False
        elapsed = time.monotonic() - started
    finally:
        try:
            if player.poll() is None:
                player.stdin.write("stop\n")
            player.stdin.close()
        except BrokenPipeError:
            pass
        out += player.stdout.read()
        player.wait(timeout=300)
    assert player.returncode == 0, errors.read_text()[-5000:]
    assert not cleaner.errors, "\n".join(cleaner.errors[:3])
    lines = out.strip().splitlines()
    assert lines, f"the nova player printed nothing: {errors.read_text()[-5000:]}"
    (node.root / "player-summary.json").write_text(lines[-1])  # with every traceback
    return json.loads(lines[-1]), cleaner, elapsed


def spawn_times(result: dict[str, Any]) -> str:
    rows = [f"  {name:42} n={d['n']:4}  median {d.get('median_ms', 0):7.1f} ms  "
            f"p90 {d.get('p90_ms', 0):7.1f} ms  max {d.get('max_ms', 0):7.1f} ms"
            for name, d in result["durations"].items()]
    return "nova 34 spawn, measured in nova's own code under the race:\n" + "\n".join(rows)


def failures(result: dict[str, Any], tracebacks: int = 3) -> list[str]:
    """One line per failed spawn; nova's own frames for the first few."""
    lines = []
    for i, f in enumerate(result["failures"]):
        lines.append(f"spawn {f['spawn']} ({f['how']}, base {os.path.basename(f['base'])[:8]} "
                     f"{'still there' if f['base_exists_after'] else 'gone'}): {f['type']}: "
                     f"{f['message']}")
        if i < tracebacks:
            lines.append(f["traceback"])
    return lines


def describe(result: dict[str, Any], cleaner: Cleaner, elapsed: float) -> str:
    return (f"seed {SEED} (NOVAKEEPER_NOVA_RACE_SEED); {elapsed:.0f} s; nova ("
            f"privsep {result['privsep']}): {result['spawns']} spawns, {result['spawned']} "
            f"spawned, {result['fetches']} fetches, {result['fast_path']} on an existing "
            f"base, {result['failed']} failed ({result['failed_base_vanished']} on a "
            f"vanished base), {len(result['broken'])} broken disks, stats "
            f"{result['stats']}; cleaner: {cleaner.describe()}")


def test_clean_loop_never_fails_a_nova_spawn(tmp_path: Path, nova: Path) -> None:
    node = build_node(tmp_path, IDLE_FOLDERS)
    result, cleaner, elapsed = race(node, nova, SPAWNS, novakeeper_pass)
    words = describe(result, cleaner, elapsed)
    print(words)
    print(spawn_times(result))
    assert result["spawns"] == SPAWNS, words
    assert not result["failures"], "\n".join([words, *failures(result)])
    assert not result["broken"], "\n".join([words, *result["broken"]])
    assert not node.broken_idle_disks(), "\n".join(
        [words, *node.broken_idle_disks()[:20]])
    # it was a race: nova used existing bases and fetched removed ones again, and clean
    # removed bases while nova spawned
    assert result["fast_path"] >= SPAWNS // 4 and result["fetches"] >= 5, words
    removed = sum(cleaner.removed.values())
    assert removed >= 5, words
    proc = subprocess.run(node.cli("cache", "history", "--json"), capture_output=True,
                          text=True, timeout=120, env=child_env(), check=True)
    journal = Counter(e["outcome"] for e in json.loads(proc.stdout)["entries"])
    assert journal["removed"] + journal["trashed"] == removed, (journal, words)


def test_the_harness_catches_a_naive_cleaner(tmp_path: Path, nova: Path) -> None:
    """A mtime-only cleaner with no lock: the player must see spawns fail or disks lose
    their base, or this harness could not fail."""
    node = build_node(tmp_path, 100)
    result, cleaner, elapsed = race(node, nova, min(SPAWNS, 200), naive_pass)
    words = describe(result, cleaner, elapsed)
    print(words)
    print(spawn_times(result))
    print("\n".join(failures(result, tracebacks=1)[:10] + result["broken"][:10]))
    print(f"the naive cleaner also broke {len(node.broken_idle_disks())} of {len(node.idle)} "
          "idle disks: their bases are old, so by mtime alone they went too")
    assert result["failed_base_vanished"] + len(result["broken"]) > 0, words
