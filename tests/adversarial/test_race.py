"""The race test: a second process plays nova flat out while `clean` runs flat out with
every age at zero. Over at least 1,000 clean rounds no base with a live user and no base
being fetched may ever be removed.

The nova player (this file run as a script) does what nova 34's libvirt driver does for a
qcow2 instance, with the same lock (oslo.concurrency external lock `nova-<name>` in
`$instances_path/locks`, i.e. `utils.synchronized(filename, external=True, lock_path=...)`):

    _create_image:   the instance folder is made first (ensure_tree)
    by_name('disk'): Qcow2's constructor writes the disk's entry into disk.info
    Qcow2.create_image:
        if not exists(base): fetch_func_sync(base)      # under the lock: re-check, then
                                                        #   write <base>.part, rename it
        _update_utime_ignore_eacces(base)                # no lock
        verify_base_size(base)                           # no lock (reads the header)
        copy_qcow2_image(base, disk)                     # under the lock, a second hold
    spawn:           console.log, right after the last disk
    delete: the folder renamed to <uuid>_del, then removed (rm -r); a base no live instance
            uses is then backdated a day ("time passes"), so clean wants it again at once

Its bases are raw files; its disks are copies of one qcow2 made by qemu-img once, with the
backing name (same length for every base) patched in, so novakeeper's native reader
follows them. It checks, each time it holds the lock to create a disk, that the base it
fetched is still there (the window between the two lock holds is what the spawning hold
must cover), and periodically and at the end that every live instance's backing file is
the very file (same inode) it was created on. Any violation fails the test with details.

Nothing waits on a clock: both loops run flat out and are started and stopped through
pipes. NOVAKEEPER_RACE_ROUNDS sets the number of clean rounds (default 1000),
NOVAKEEPER_RACE_SEED the player's random seed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import select
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

QEMU_IMG = shutil.which("qemu-img") or "qemu-img"
IMAGES = 5
"""Image ids the player boots: few, so that bases are reused, removed and fetched again."""
MAX_LIVE = 6
BASE_BYTES = 64 << 10
TEMPLATE_NAME = hashlib.sha1(b"template").hexdigest()


def base_name(image: int) -> str:
    return hashlib.sha1(f"race-image-{image}".encode()).hexdigest()


def make_template(cache: str, out: str) -> bytes:
    """A qcow2 disk backed by `cache/<sha1>`: every base name has the same length, so a
    disk for any base is this file with its name patched in."""
    backing = os.path.join(cache, TEMPLATE_NAME)
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "raw",
                    out, "64M"], check=True, capture_output=True, timeout=60)
    data = Path(out).read_bytes()
    assert data.count(backing.encode()) == 1, "the backing name must appear once"
    return data


# -- the nova player (runs in its own process) ------------------------------------------


class Nova:
    def __init__(self, instances: str, template: bytes, seed: int, fast_path: bool) -> None:
        from oslo_concurrency import lockutils

        self.lockutils = lockutils
        self.instances = instances
        self.cache = os.path.join(instances, "_base")
        self.lock_path = os.path.join(instances, "locks")
        self.template = template
        self.template_backing = os.path.join(self.cache, TEMPLATE_NAME).encode()
        self.rng = random.Random(seed)
        self.fast_path = fast_path
        self.live: dict[str, tuple[str, str, int]] = {}  # uuid -> (disk, base, base inode)
        self.live_base: dict[str, str] = {}
        self.violations: list[str] = []
        self.stats: Counter[str] = Counter()

    def lock(self, name: str):  # type: ignore[no-untyped-def]
        """nova.utils.synchronized(name, external=True, lock_path=...)."""
        return self.lockutils.lock(name, lock_file_prefix="nova-", external=True,
                                   lock_path=self.lock_path)

    def violation(self, what: str) -> None:
        self.violations.append(f"[action {sum(self.stats.values())}] {what}")
        print("violation", flush=True)  # the test may stop at the first one

    def fetch_func_sync(self, name: str, base: str) -> None:
        with self.lock(name):
            if os.path.exists(base):
                os.utime(base)  # another spawn fetched it meanwhile: only mark it used
                self.stats["fetch-found"] += 1
                return
            part = base + ".part"
            with open(part, "wb") as f:
                f.write(bytes([len(self.live) + 1]) * BASE_BYTES)
            os.rename(part, base)
            self.stats["fetched"] += 1

    def spawn(self) -> None:
        image = self.rng.randrange(IMAGES)
        name = base_name(image)
        base = os.path.join(self.cache, name)
        instance = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        folder = os.path.join(self.instances, instance)
        os.mkdir(folder)  # _create_image: the instance folder exists before the fetch
        disk = os.path.join(folder, "disk")
        info = os.path.join(folder, "disk.info")  # Image.resolve_driver_format
        with open(info + ".tmp", "w") as f:
            f.write(json.dumps({disk: "qcow2"}) + "\n")
        os.rename(info + ".tmp", info)
        # Qcow2.create_image: nova 34 looks without the lock first (fast_path); otherwise
        # every spawn goes through fetch_func_sync, which takes the lock and re-checks.
        how = "fetched"
        if not self.fast_path or not os.path.exists(base):
            self.fetch_func_sync(name, base)
        else:
            how = "seen without the lock (nova's fast path)"
            self.stats["fast-path"] += 1
        try:  # _update_utime_ignore_eacces(base); verify_base_size(base): no lock
            os.utime(base)
            # verify_base_size -> disk.get_disk_size -> images.qemu_img_info: nova runs
            # `qemu-img info` here, which is what makes this window milliseconds long
            subprocess.run([QEMU_IMG, "info", "--output=json", base], check=True,
                           capture_output=True, timeout=60)
        except (FileNotFoundError, subprocess.CalledProcessError):
            self.violation(f"{name} vanished after it was {how}, before instance "
                           f"{instance}'s disk was made (no lock held: nova's utime and "
                           "qemu-img info)")
            shutil.rmtree(folder)
            return
        with self.lock(name):  # copy_qcow2_image
            try:
                st = os.stat(base)
            except FileNotFoundError:
                self.violation(f"{name} removed while instance {instance} was spawning on "
                               f"it: {how}, then gone when nova took the lock to create "
                               "the disk")
                shutil.rmtree(folder)
                return
            data = self.template.replace(self.template_backing, base.encode())
            with open(disk, "xb") as f:
                f.write(data)
        with open(os.path.join(folder, "console.log"), "w"):  # spawn: after the disks
            pass
        self.live[instance] = (disk, base, st.st_ino)
        self.live_base[instance] = base
        self.stats["spawned"] += 1

    def delete(self) -> None:
        instance = self.rng.choice(sorted(self.live))
        self.check(instance)
        del self.live[instance]
        folder = os.path.join(self.instances, instance)
        os.rename(folder, folder + "_del")  # nova's delete_instance_files
        shutil.rmtree(folder + "_del")
        self.stats["deleted"] += 1
        base = self.live_base.pop(instance)
        if base not in self.live_base.values():  # a day passes: clean wants it again
            with contextlib.suppress(FileNotFoundError):
                os.utime(base, (1, 1))
                self.stats["backdated"] += 1

    def check(self, instance: str) -> None:
        disk, base, ino = self.live[instance]
        try:
            st = os.stat(base)
        except FileNotFoundError:
            self.violation(f"base {os.path.basename(base)} of live instance {instance} "
                           "was removed")
            return
        if st.st_ino != ino:
            self.violation(f"base {os.path.basename(base)} of live instance {instance} was "
                           f"replaced (inode {ino} -> {st.st_ino}): removed and fetched again")
        with open(disk, "rb") as f:
            if base.encode() not in f.read(4096):
                self.violation(f"disk {disk} no longer names {base}")

    def check_all(self) -> None:
        for instance in sorted(self.live):
            self.check(instance)
        self.stats["checks"] += 1

    def oracle(self) -> None:
        """qemu-img's view of one live disk: its chain must end at the base it was made on.
        It also gives `clean` moments with no spawn in progress, when it can remove."""
        instance = self.rng.choice(sorted(self.live))
        disk, base, _ = self.live[instance]
        proc = subprocess.run([QEMU_IMG, "info", "-U", "--backing-chain", "--output=json",
                               disk], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            self.violation(f"qemu-img cannot open live instance {instance}'s chain: "
                           f"{proc.stderr.strip()}")
        elif json.loads(proc.stdout)[-1]["filename"] != base:
            self.violation(f"qemu-img sees {instance}'s chain end elsewhere: {proc.stdout}")
        self.check(instance)
        self.stats["oracle"] += 1

    def step(self) -> None:
        r = self.rng.random()
        if len(self.live) >= MAX_LIVE or (self.live and r < 0.3):
            self.delete()
        elif not self.live or r < 0.6:
            self.spawn()
        else:
            self.oracle()


def player_main(argv: list[str]) -> int:
    instances, template_path, seed, fast_path = argv
    nova = Nova(instances, Path(template_path).read_bytes(), int(seed), fast_path == "1")
    print("ready", flush=True)
    steps = 0
    while not select.select([sys.stdin], [], [], 0)[0]:  # flat out until told to stop
        nova.step()
        steps += 1
        if steps % 16 == 0:
            nova.check_all()
    nova.check_all()
    live = [{"instance": i, "disk": d, "base": b, "ino": n} for i, (d, b, n) in
            sorted(nova.live.items())]
    print(json.dumps({"violations": nova.violations, "stats": dict(nova.stats),
                      "live": live}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(player_main(sys.argv[1:]))


# -- the test (runs under pytest) -------------------------------------------------------

import pytest  # noqa: E402

from novakeeper.cache.executor import Action  # noqa: E402
from novakeeper.cache.plan import Verdict  # noqa: E402
from novakeeper.cache.policy import PolicyConfig  # noqa: E402
from novakeeper.passes import executor_for, plan_pass  # noqa: E402
from novakeeper.settings import Settings  # noqa: E402

ROUNDS = int(os.environ.get("NOVAKEEPER_RACE_ROUNDS", "1000"))
SEED = int(os.environ.get("NOVAKEEPER_RACE_SEED", "0")) or random.randrange(1, 1 << 30)
STALE_PARTIAL_SECONDS = 30
"""Small, but far longer than any spawn's window between fetch and disk on a busy CI box."""
SPAWN_HOLD_SECONDS = 30
"""Likewise: far longer than a spawn's unlocked window, short enough that the bases the
player backdates are removed again and again."""


def zero_age_settings(instances: str, state: str) -> Settings:
    return Settings(
        instances_path=instances, subdirectory_name="_base", manager_interval=0, host="race",
        policy=PolicyConfig(remove_unused_original_minimum_age_seconds=0,
                            remove_unused_resized_minimum_age_seconds=0,
                            stale_partial_seconds=STALE_PARTIAL_SECONDS,
                            spawn_hold_seconds=SPAWN_HOLD_SECONDS),
        touch_in_use=True, config_files=(), state_path=state, lock_wait_seconds=5.0)


def backing_chain(disk: str) -> list[str]:
    """qemu-img's own view of a disk's chain (the oracle), -U: nothing holds it anyway."""
    out = subprocess.run([QEMU_IMG, "info", "-U", "--backing-chain", "--output=json", disk],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return [image["filename"] for image in json.loads(out)]


def race(tmp_path: Path, rounds: int, fast_path: bool, stop_early: bool = False
         ) -> tuple[dict, Counter[str]]:
    """Run `rounds` clean rounds against the nova player; its report and clean's counts.
    stop_early: stop at the first violation the player reports."""
    instances = tmp_path / "instances"
    (instances / "_base").mkdir(parents=True)
    (instances / "locks").mkdir()
    template = tmp_path / "template.qcow2"
    make_template(os.fspath(instances / "_base"), os.fspath(template))
    settings = zero_age_settings(os.fspath(instances), os.fspath(tmp_path / "state.db"))
    errors = tmp_path / "player.stderr"
    with errors.open("w") as stderr:
        player = subprocess.Popen(
            [sys.executable, __file__, os.fspath(instances), os.fspath(template), str(SEED),
             "1" if fast_path else "0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert player.stdin is not None and player.stdout is not None
    seen: Counter[str] = Counter()
    try:
        assert player.stdout.readline().strip() == "ready", errors.read_text()
        for _ in range(rounds):
            with plan_pass(settings, write_state=True) as result:
                verdicts = result.plan.by_verdict()
                report = executor_for(result, settings).run()
            seen["rounds"] += 1
            seen["planned"] += len(result.plan.removals)
            seen["in-use"] += verdicts[Verdict.IN_USE]
            seen["held"] += verdicts[Verdict.HELD]
            for o in report.outcomes:
                if o.action is Action.REMOVED:
                    seen["removed"] += 1
                elif o.action is Action.FAILED:
                    seen["failed"] += 1
                else:
                    why = o.reason.split(" at /")[0].split(":")[0].split(" (")[0]
                    seen["skipped: " + why] += 1
            assert not report.failed, report.failed
            assert player.poll() is None, f"the nova player died: {errors.read_text()}"
            if stop_early and select.select([player.stdout], [], [], 0)[0]:
                break
    finally:
        if player.poll() is None:
            player.stdin.write("stop\n")
        player.stdin.close()
        out = player.stdout.read()
        player.wait(timeout=120)
    assert player.returncode == 0, errors.read_text()
    return json.loads(out.strip().splitlines()[-1]), seen


def describe(result: dict, seen: Counter[str]) -> str:
    return (f"seed {SEED} (NOVAKEEPER_RACE_SEED); nova: {result['stats']}; "
            f"clean: {dict(seen)}")


# nova's own fast path: Qcow2.create_image checks os.path.exists(base) WITHOUT the lock
# and, when the base is there, does not fetch; it takes the lock only later, to create
# the disk. The instance folder exists before that look: the executor rescans under
# nova's lock (a young folder whose disk is missing holds its bases), then looks at
# instances_path once more right before each unlink; a new entry means another rescan.


@pytest.mark.parametrize("fast_path", [
    pytest.param(False, id="fetch-under-lock"),
    pytest.param(True, id="novas-unlocked-exists-check"),
])
def test_clean_with_zero_ages_never_removes_a_base_nova_uses(tmp_path: Path,
                                                             fast_path: bool) -> None:
    """fetch-under-lock: every spawn goes through fetch_func_sync (an existing base: take
    the lock, find it, touch it). novas-unlocked-exists-check is nova 34 exactly: a base
    already there is only looked at, without the lock, until the disk is made."""
    rounds = ROUNDS
    start = time.monotonic()
    result, seen = race(tmp_path, rounds, fast_path, stop_early=fast_path)
    elapsed = time.monotonic() - start
    words = describe(result, seen) + f"; {elapsed:.1f} s"
    assert not result["violations"], "\n".join([words, *result["violations"]])
    # the protections were exercised, not idle: nova fetched and spawned, clean removed
    # what nova let go while nova was running, saw bases in use and held spawns
    assert seen["rounds"] == rounds
    stats = result["stats"]
    assert stats.get("spawned", 0) >= 50 and stats.get("fetched", 0) >= 10, words
    assert seen["removed"] >= 10, words
    assert seen["in-use"] > 0 and seen["held"] > 0, words
    # the oracle, after the fact: qemu-img follows every live disk to its very base
    for inst in result["live"]:
        chain = backing_chain(inst["disk"])
        assert chain[-1] == inst["base"] and os.stat(inst["base"]).st_ino == inst["ino"]
    print(words)


def _spawn_begins(instances: Path, base: Path) -> bool:
    """What nova 34 does before it uses an existing base: the folder, the disk.info entry,
    then `os.path.exists(base)` without any lock. Returns what that look saw."""
    folder = instances / str(uuid.uuid4())
    folder.mkdir()  # _create_image
    (folder / "disk.info").write_text(json.dumps({os.fspath(folder / "disk"): "qcow2"}))
    return base.exists()  # Qcow2.create_image's unlocked look


def _one_removable(tmp_path: Path) -> tuple[Path, Path, Settings]:
    instances = tmp_path / "instances"
    (instances / "_base").mkdir(parents=True)
    base = instances / "_base" / base_name(0)
    base.write_bytes(b"\1" * BASE_BYTES)
    os.utime(base, (1, 1))
    return instances, base, zero_age_settings(os.fspath(instances),
                                              os.fspath(tmp_path / "state.db"))


def test_a_spawn_that_looks_while_the_batch_is_journaled_keeps_its_base(
        tmp_path: Path) -> None:
    """Deterministic: nova's unlocked look lands after clean took nova's lock, while it
    writes the journal's 'before' rows. The rescan that follows sees the young folder."""
    from novakeeper.state import journal

    instances, base, settings = _one_removable(tmp_path)
    seen: list[bool] = []

    class NovaSpawnsDuringTheJournalWrite(journal.Journal):
        def begin_many(self, items, now):  # type: ignore[no-untyped-def]
            seen.append(_spawn_begins(instances, base))
            return super().begin_many(items, now)

    with plan_pass(settings, write_state=True) as result:
        assert [d.name for d in result.plan.removals] == [base.name]
        executor = executor_for(result, settings)
        assert result.state is not None
        executor.journal = NovaSpawnsDuringTheJournalWrite(result.state, result.plan.policy)
        report = executor.run()
    assert seen == [True]  # nova saw the base, so it will not fetch it...
    assert base.exists(), "...so clean must keep it"
    [o] = report.outcomes
    assert o.action is Action.SKIPPED and "spawning" in o.reason


def test_a_spawn_that_looks_after_the_rescan_keeps_its_base(tmp_path: Path) -> None:
    """Deterministic: nova's unlocked look lands after clean's rescan and judgement, before
    the unlink. The last look at instances_path sees the new folder: rescan, then kept."""
    instances, base, settings = _one_removable(tmp_path)
    seen: list[bool] = []
    with plan_pass(settings, write_state=True) as result:
        executor = executor_for(result, settings)
        judge = executor.rejudge

        def judge_then_nova_looks(inventory, now, planned):  # type: ignore[no-untyped-def]
            verdicts = judge(inventory, now, planned)
            if not seen:
                seen.append(_spawn_begins(instances, base))
            return verdicts

        executor.rejudge = judge_then_nova_looks
        report = executor.run()
    assert seen == [True]
    assert base.exists()
    assert executor.rescans == 2  # the new folder sent the batch back for a second look
    [o] = report.outcomes
    assert o.action is Action.SKIPPED and "spawning" in o.reason
