"""Plays nova 34.0.0's real spawn code against a cleaner (run by the nova venv's python).

tests/adversarial/test_nova_race.py runs this script with the python of the virtualenv
`.ci/nova-setup` makes. Nova's own code does the work; the script only sets the stage:

* nova's CONF in-process: instances_path, `[image_cache] subdirectory_name = _base`,
  `[libvirt] images_type = qcow2`, `use_cow_images` and `force_raw_images` (nova's
  defaults, set explicitly); no database, no message bus, no libvirt connection;
* privsep: a real fork-mode daemon (as root: `sys_admin_pctxt.start(Method.FORK)` before
  any thread starts, so `nova.privsep.path.utime` goes over privsep's socket and a missing
  file comes back as nova's FileNotFound), or inline (`client_mode = False`, what nova's
  own PrivsepFixture does) when not root or when asked;
* Glance: `nova.virt.images.IMAGE_API` is replaced by a local stand-in whose `download`
  writes the image's bytes (a small raw file) to `dest_path` and whose `get` says
  `disk_format: raw`; nova's own `fetch_to_raw` does the rest (`.part`, deep inspection,
  `qemu-img info`, rename), under nova's lock `nova-<sha1>`;
* each spawn calls nova's own `LibvirtDriver._create_image(context, instance,
  disk_mapping)`, unbound, on a driver object that has what `LibvirtDriver.__init__` sets
  for this path (`image_backend = imagebackend.Backend(CONF.use_cow_images)`):
  `__init__` itself needs the libvirt module. So the instance folder is made by
  `fileutils.ensure_tree`, `by_name(instance, 'disk')` writes `disk.info`, and
  `Image.cache` -> `Qcow2.create_image` -> `libvirt_utils.create_image` run exactly as
  in a real spawn, with unpersisted `objects.Instance`/`Flavor` built here. Flavors:
  root_gb 1 (nova passes a size: `verify_base_size` runs `qemu-img info` on the base with
  no lock, and the disk is resized after its creation) and root_gb 0 (neither).

Observation only (nothing of nova's behaviour changes): `libvirt_utils.create_image` and
`Image.resolve_driver_format` are wrapped to note when each disk was created (and the
inode of its backing file, read under nova's lock right after `qemu-img create`) and when
`disk.info` was written.

`--threads` spawners work at once, as nova's compute manager builds several instances
at a time. Each step is one of: spawn an image; delete an instance as nova does (folder
renamed to `<uuid>_del`, then rmtree), then set the now-unused base's mtime back a day
(time passing, so a cleaner wants it again) and, often, boot the same image again at once
(a rebuild, an autoscaling group: the hardest case for a cleaner); check a live disk's
chain with qemu-img; or (`--idle`) a quiet moment. A fresh spawn often (`--cold`) boots an
image that no instance here runs: its base is unused, which is what a cleaner removes.
Every disk's backing file is checked (same inode as at creation) before its instance is
deleted and at the end; every spawn failure is recorded (exception type and message).

Protocol (pipes, no clock): prints `ready` when nova is configured and privsep started;
waits for `go` on stdin; then works flat out until `--spawns` spawns were attempted, or
any other line (or EOF) arrives on stdin; prints one JSON summary line and exits 0. A quiet
moment: no step runs on any thread, the script prints `idle` and waits for `tick` on
stdin. The test answers when its current cleaner pass has ended, so the cleaner also
meets moments with no spawn in progress, as on a real node.

The helpers above `Player` use only the standard library: the test imports them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

DAY = 86400
BASE_BYTES = 64 << 10
"""Size of every image: a small raw file, read whole by nova's deep inspection."""
IMAGE_NAMESPACE = uuid.UUID("6f1c1e0e-8b59-4b1c-9d5e-6e6f7661726b")
QEMU_IMG = shutil.which("qemu-img") or "qemu-img"


def image_id(i: int) -> str:
    """The Glance id of the player's image number i."""
    return str(uuid.uuid5(IMAGE_NAMESPACE, f"nova-race-image-{i}"))


def base_name(image: str) -> str:
    """nova.virt.libvirt.imagecache.get_cache_fname: sha1 hex of the image id."""
    return hashlib.sha1(image.encode()).hexdigest()


def image_bytes(image: str) -> bytes:
    """A raw image nova's format inspector takes for raw (no known magic anywhere)."""
    line = f"novakeeper race image {image}\n".encode()
    return (line * (BASE_BYTES // len(line) + 1))[:BASE_BYTES]


def summary_of(values: list[float]) -> dict[str, float | int]:
    """n, median, 90th percentile (nearest rank) and max of durations in s, as ms."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
    return {"n": len(ordered), "median_ms": round(statistics.median(ordered) * 1000, 1),
            "p90_ms": round(p90 * 1000, 1), "max_ms": round(ordered[-1] * 1000, 1)}


def read_line() -> str:
    """A line of stdin, read unbuffered; '' at EOF."""
    data = b""
    while not data.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            break
        data += byte
    return data.decode().strip()


# -- everything below runs nova ---------------------------------------------------------


@dataclass
class Live:
    image: str
    disk: str
    base: str
    ino: int


@dataclass
class SpawnMarks:
    """What one spawn's thread saw: disk.info and disk written when, the base's inode."""

    info_at: float | None = None
    disk_at: float | None = None
    base_ino: int | None = None
    base_error: str | None = None
    fetched: bool = False


class Gate:
    """Steps run through the gate; a quiet moment closes it and waits for them to end."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.active = 0
        self.closed = False

    @contextmanager
    def step(self) -> Iterator[None]:
        with self.cond:
            while self.closed:
                self.cond.wait()
            self.active += 1
        try:
            yield
        finally:
            with self.cond:
                self.active -= 1
                self.cond.notify_all()

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """Called outside any step: no step runs until the block ends."""
        with self.cond:
            while self.closed:
                self.cond.wait()
            self.closed = True
            while self.active:
                self.cond.wait()
        try:
            yield
        finally:
            with self.cond:
                self.closed = False
                self.cond.notify_all()


class Commands:
    """The only reader of stdin: `tick` ends a quiet moment; anything else, or EOF, stops."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.ticks = threading.Semaphore(0)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while read_line() == "tick":
            self.ticks.release()
        self.stop.set()
        self.ticks.release()  # a quiet moment waiting for its tick ends too

    def wait_tick(self) -> None:
        self.ticks.acquire()


@dataclass
class Player:
    instances: str
    images: list[str]
    rng: random.Random
    max_live: int
    respawn: float
    root_gb_0: float
    idle: float
    cold: float
    privsep: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Guards the bookkeeping below (and rng); never held while nova runs."""
    live: dict[str, Live] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)
    """Live instances a thread is checking: no other thread picks them."""
    spawning: Counter[str] = field(default_factory=Counter)
    """Base path -> spawns on it in flight: nobody backdates a base being used."""
    stats: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    durations: dict[str, list[float]] = field(default_factory=dict)
    local: threading.local = field(default_factory=threading.local)

    def __post_init__(self) -> None:
        self.cache = os.path.join(self.instances, "_base")
        self.gate = Gate()
        self._configure_nova()

    # -- set-up ---------------------------------------------------------------------

    def _configure_nova(self) -> None:
        import nova.conf
        import nova.privsep
        from nova import context, objects
        from nova.virt import images
        from nova.virt.libvirt import driver, imagebackend, imagecache
        from nova.virt.libvirt import utils as libvirt_utils
        from oslo_privsep import priv_context

        conf = nova.conf.CONF
        conf([], project="nova", default_config_files=[], default_config_dirs=[])
        conf.set_override("instances_path", self.instances)
        conf.set_override("state_path", os.path.dirname(self.instances))
        conf.set_override("use_cow_images", True)
        conf.set_override("force_raw_images", True)
        conf.set_override("subdirectory_name", "_base", group="image_cache")
        conf.set_override("images_type", "qcow2", group="libvirt")
        objects.register_all()
        assert imagecache.get_cache_fname(self.images[0]) == base_name(self.images[0])

        if self.privsep == "fork":
            # before any thread exists: the daemon is a fork of this process
            nova.privsep.sys_admin_pctxt.start(priv_context.Method.FORK)
        else:
            nova.privsep.sys_admin_pctxt.set_client_mode(False)

        player = self

        class LocalImageService:
            """nova.image.glance.API's two calls fetch_to_raw makes, served locally."""

            def get(self, ctx: Any, image_href: str, **kwargs: Any) -> dict[str, Any]:
                return {"id": image_href, "disk_format": "raw", "container_format": "bare",
                        "size": BASE_BYTES, "status": "active"}

            def download(self, ctx: Any, image_href: str, data: Any = None,
                         dest_path: str | None = None, trusted_certs: Any = None) -> None:
                assert dest_path is not None
                with open(dest_path, "wb") as f:
                    f.write(image_bytes(image_href))
                player.marks().fetched = True
                with player.lock:
                    player.stats["fetches"] += 1

        images.IMAGE_API = LocalImageService()

        create_image: Callable[..., None] = libvirt_utils.create_image

        def noted_create_image(path: str, disk_format: str, disk_size: Any,
                               backing_file: str | None = None, *args: Any,
                               **kwargs: Any) -> None:
            create_image(path, disk_format, disk_size, backing_file, *args, **kwargs)
            marks = self.marks()
            marks.disk_at = time.monotonic()
            if backing_file is not None:  # still under nova's lock nova-<sha1>
                try:
                    marks.base_ino = os.stat(backing_file).st_ino
                except OSError as exc:
                    marks.base_error = f"{type(exc).__name__}: {exc}"

        libvirt_utils.create_image = noted_create_image

        resolve: Callable[[Any], Any] = imagebackend.Image.resolve_driver_format

        def noted_resolve(image: Any) -> Any:
            out = resolve(image)
            marks = self.marks()
            if marks.info_at is None:
                marks.info_at = time.monotonic()
            return out

        imagebackend.Image.resolve_driver_format = noted_resolve

        self.objects = objects
        self.context = context.get_admin_context()
        # LibvirtDriver.__init__ needs the libvirt module; _create_image needs only this
        self.driver = driver.LibvirtDriver.__new__(driver.LibvirtDriver)
        self.driver.image_backend = imagebackend.Backend(conf.use_cow_images)
        self.flavors = [objects.Flavor(
            id=root_gb + 1, flavorid=str(root_gb + 1), name=f"root{root_gb}", memory_mb=512,
            vcpus=1, root_gb=root_gb, ephemeral_gb=0, swap=0, rxtx_factor=1.0, vcpu_weight=0,
            disabled=False, is_public=True, extra_specs={}, description=None)
            for root_gb in (0, 1)]

    def marks(self) -> SpawnMarks:
        marks: SpawnMarks | None = getattr(self.local, "marks", None)
        if marks is None:
            marks = self.local.marks = SpawnMarks()
        return marks

    def warm_up(self) -> None:
        """One privsep call before `ready`, so the daemon's start is not in a spawn."""
        import nova.privsep.path

        probe = os.path.join(self.instances, "locks", ".player-warm-up")
        with open(probe, "w"):
            pass
        nova.privsep.path.utime(probe)
        os.unlink(probe)

    # -- what nova does -------------------------------------------------------------

    def spawn(self, image: str, number: int) -> None:
        with self.lock:
            flavor = self.flavors[self.rng.random() >= self.root_gb_0]
        instance = self.objects.Instance(
            uuid=str(uuid.uuid4()),  # not from the seed: never an existing folder's
            image_ref=image, kernel_id="", ramdisk_id="", flavor=flavor,
            os_type=None, vm_mode=None, vm_state="building", task_state="spawning",
            config_drive="", launched_at=None, system_metadata={}, metadata={},
            migration_context=None, trusted_certs=None, root_gb=flavor.root_gb,
            ephemeral_gb=0, host="race", node="race", project_id="p", user_id="u")
        folder = os.path.join(self.instances, instance.uuid)
        base = os.path.join(self.cache, base_name(image))
        disk_mapping = {
            "disk": {"bus": "virtio", "dev": "vda", "type": "disk", "boot_index": "1"},
            "root": {"bus": "virtio", "dev": "vda", "type": "disk", "boot_index": "1"},
        }
        marks = self.local.marks = SpawnMarks()
        with self.lock:
            self.spawning[base] += 1
        started = time.monotonic()  # _create_image's first act is to make the folder
        try:
            type(self.driver)._create_image(self.driver, self.context, instance, disk_mapping)
        except Exception as exc:
            with self.lock:
                self.spawning[base] -= 1
            failure = {
                "spawn": number, "instance": instance.uuid, "image": image, "base": base,
                "how": "fetched" if marks.fetched else "fast-path",
                "type": f"{type(exc).__module__}.{type(exc).__name__}",
                "message": str(exc).strip()[:600], "base_exists_after": os.path.exists(base),
                "traceback": traceback.format_exc(limit=-4)[-1500:]}
            print(f"spawn failed: {failure['type']}: {exc}", file=sys.stderr, flush=True)
            with self.lock:
                self.failures.append(failure)
            self.delete_folder(folder)  # the build failed: nova cleans the instance up
            return
        done = time.monotonic()
        with self.lock:
            self.spawning[base] -= 1
        disk = os.path.join(folder, "disk")
        if marks.disk_at is None or marks.info_at is None:
            with self.lock:
                self.broken.append(
                    f"spawn {instance.uuid}: nova returned, but not through disk.info "
                    f"({marks.info_at}) and the disk's creation ({marks.disk_at})")
            return
        kind = (f"{'fetched' if marks.fetched else 'existing'} base, root_gb "
                f"{flavor.root_gb}")
        with self.lock:
            self.stats["fetched" if marks.fetched else "fast-path"] += 1
            for what, seconds in (("folder -> disk", marks.disk_at - started),
                                  ("disk.info -> disk", marks.disk_at - marks.info_at),
                                  ("whole _create_image", done - started)):
                self.durations.setdefault(f"{kind}: {what}", []).append(seconds)
            if marks.base_ino is None:
                self.broken.append(f"disk of {instance.uuid} created, but its backing file "
                                   f"{base} was gone right after ({marks.base_error})")
                return
            self.live[instance.uuid] = Live(image, disk, base, marks.base_ino)
            self.stats["spawned"] += 1

    def delete_folder(self, folder: str) -> None:
        """nova's delete_instance_files: rename to <uuid>_del, then remove the tree."""
        if not os.path.exists(folder):
            return
        os.rename(folder, folder + "_del")
        shutil.rmtree(folder + "_del")

    def delete(self, instance: str, live: Live) -> None:
        """`instance` already taken out of self.live by the caller."""
        self.check(instance, live)
        self.delete_folder(os.path.join(self.instances, instance))
        with self.lock:
            self.stats["deleted"] += 1
            if self.spawning[live.base] or any(
                    other.base == live.base for other in self.live.values()):
                return
            try:  # a day passes for the now-unused base: a cleaner wants it
                past = time.time() - DAY
                os.utime(live.base, (past, past))
                self.stats["backdated"] += 1
            except FileNotFoundError:
                pass

    # -- the checks -----------------------------------------------------------------

    def check(self, instance: str, live: Live) -> None:
        """The live disk's backing file is the very file it was created on."""
        name = os.path.basename(live.base)
        try:
            ino = os.stat(live.base).st_ino
        except FileNotFoundError:
            problem = f"backing file {name} of live instance {instance} was removed"
        else:
            problem = "" if ino == live.ino else (
                f"backing file {name} of live instance {instance} was replaced (inode "
                f"{live.ino} -> {ino}): removed, then fetched again")
        with self.lock:
            self.stats["checks"] += 1
            if problem:
                self.broken.append(problem)

    def oracle(self, instance: str, live: Live) -> None:
        """qemu-img's own view of the chain (an idle moment for this thread, too)."""
        proc = subprocess.run([QEMU_IMG, "info", "-U", "--backing-chain", "--output=json",
                               live.disk], capture_output=True, text=True, timeout=60)
        problem = ""
        if proc.returncode != 0:
            problem = f"qemu-img cannot open {instance}'s chain: {proc.stderr.strip()}"
        elif json.loads(proc.stdout)[-1]["filename"] != live.base:
            problem = f"{instance}'s chain ends elsewhere: {proc.stdout}"
        with self.lock:
            self.stats["oracle"] += 1
            if problem:
                self.broken.append(problem)
        self.check(instance, live)

    # -- the loop -------------------------------------------------------------------

    def take_spawn(self, target: int) -> int:
        """The next spawn's number, or 0 when `target` spawns were attempted."""
        with self.lock:
            if self.stats["spawns"] >= target:
                return 0
            self.stats["spawns"] += 1
            return self.stats["spawns"]

    def step(self, target: int, commands: Commands) -> bool:
        """One action of one thread; False when there is nothing left to do."""
        with self.lock:
            r = self.rng.random()
            respawn = self.rng.random() < self.respawn
            image = self.rng.choice(self.images)
            in_use = {lv.base for lv in self.live.values()} | {
                b for b, n in self.spawning.items() if n}
            cold = [i for i in self.images if os.path.join(self.cache, base_name(i))
                    not in in_use]
            if cold and self.rng.random() < self.cold:
                image = self.rng.choice(cold)  # one nothing here runs: its base is unused
            free = sorted(set(self.live) - self.busy)
            picked: tuple[str, Live] | None = None
            if free and (len(self.live) >= self.max_live or r < 0.5):
                instance = self.rng.choice(free)
                if r < 0.15:
                    self.busy.add(instance)  # checked, then left alive
                    picked = (instance, self.live[instance])
                else:
                    picked = (instance, self.live.pop(instance))  # to be deleted
            quiet = picked is None and 0.5 <= r < 0.5 + self.idle
        if quiet:
            with self.gate.quiet():
                if commands.stop.is_set():
                    return False
                with self.lock:
                    self.stats["idle"] += 1
                print("idle", flush=True)
                commands.wait_tick()
            return not commands.stop.is_set()
        with self.gate.step():
            if picked is not None and r < 0.15:
                self.oracle(*picked)
                with self.lock:
                    self.busy.discard(picked[0])
                return True
            if picked is not None:
                self.delete(*picked)
                if not respawn:
                    return True
                image = picked[1].image  # rebuilt at once on the base it just let go
                with self.lock:
                    self.stats["respawns"] += 1
            number = self.take_spawn(target)
            if not number:
                return False
            self.spawn(image, number)
        return True

    def work(self, target: int, commands: Commands) -> None:
        try:
            while not commands.stop.is_set() and self.step(target, commands):
                pass
        except BaseException:
            with self.lock:
                self.broken.append(f"player thread died: {traceback.format_exc()[-2000:]}")
            commands.stop.set()

    def summary(self, threads: int) -> dict[str, Any]:
        for instance, live in sorted(self.live.items()):
            self.check(instance, live)
        vanished = [f for f in self.failures if not f["base_exists_after"]
                    or "No such file" in f["message"] or "not found" in f["message"].lower()]
        return {
            "privsep": self.privsep, "threads": threads,
            "spawn_call": "nova.virt.libvirt.driver.LibvirtDriver._create_image",
            "spawns": self.stats["spawns"], "spawned": self.stats["spawned"],
            "fetches": self.stats["fetches"], "fast_path": self.stats["fast-path"],
            "failed": len(self.failures), "failed_base_vanished": len(vanished),
            "failures": sorted(self.failures, key=lambda f: int(f["spawn"])),
            "broken": self.broken, "live": len(self.live), "stats": dict(self.stats),
            "durations": {k: summary_of(v) for k, v in sorted(self.durations.items())},
        }


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--instances", required=True, help="nova's instances_path")
    ap.add_argument("--images", type=int, default=6, help="how many images it boots")
    ap.add_argument("--spawns", type=int, default=1000, help="stop after this many")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2, help="spawns in flight at most")
    ap.add_argument("--max-live", type=int, default=6,
                    help="live instances at most: few, so that bases are often unused")
    ap.add_argument("--respawn", type=float, default=0.5,
                    help="chance that a delete is followed by a spawn of the same image")
    ap.add_argument("--root-gb-0", type=float, default=0.5,
                    help="share of spawns whose flavor has root_gb 0 (the others: 1)")
    ap.add_argument("--cold", type=float, default=0.8,
                    help="chance that a fresh spawn boots an image no instance here runs")
    ap.add_argument("--idle", type=float, default=0.0,
                    help="chance per step of a quiet moment (prints `idle`, waits for `tick`)")
    ap.add_argument("--privsep", choices=["fork", "inline", "auto"], default="auto",
                    help="auto: a fork-mode daemon as root, inline otherwise")
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    privsep = args.privsep
    if privsep == "auto":
        privsep = "fork" if os.geteuid() == 0 else "inline"
    os.makedirs(os.path.join(args.instances, "locks"), exist_ok=True)
    player = Player(args.instances, [image_id(i) for i in range(args.images)],
                    random.Random(args.seed), args.max_live, args.respawn, args.root_gb_0,
                    args.idle, args.cold, privsep)
    player.warm_up()
    print("ready", flush=True)
    if read_line() != "go":
        return 2
    commands = Commands()
    workers = [threading.Thread(target=player.work, args=(args.spawns, commands))
               for _ in range(args.threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps(player.summary(args.threads)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
