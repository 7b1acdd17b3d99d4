"""Small compute-node trees for the CLI and demo tests, made with the real qemu-img.

Kept apart from conftest.py (written elsewhere) so these tests depend on nothing but
themselves. Every tree records the verdict each cache file must get, so a test can compare
novakeeper's plan with what the tree was built to mean.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from novakeeper.cache.layout import image_hash

QEMU_IMG = shutil.which("qemu-img") or "/usr/bin/qemu-img"

DAY = 86400
HOUR = 3600
MiB = 1 << 20

UUID_A = "0a0a0a0a-0000-4000-8000-00000000000a"
UUID_B = "0b0b0b0b-0000-4000-8000-00000000000b"
UUID_BROKEN = "0c0c0c0c-0000-4000-8000-00000000000c"


def qemu_img(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QEMU_IMG, *args], check=True, capture_output=True, text=True,
                          cwd=cwd)


def make_base(path: str, size: int = MiB, age: float = 0.0, now: float | None = None) -> str:
    """A sparse raw base with a little real data, `age` seconds old."""
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(b"\xab" * 8192)
    set_age(path, age, now)
    return path


def set_age(path: str, age: float, now: float | None = None) -> None:
    now = time.time() if now is None else now
    os.utime(path, (now - age, now - age))


def make_overlay(path: str, backing: str, backing_format: str = "raw") -> str:
    """A qcow2 disk backed by `backing` (absolute path stored in the header)."""
    qemu_img("create", "-q", "-f", "qcow2", "-b", backing, "-F", backing_format, path)
    return path


@dataclass
class Tree:
    root: str
    instances_path: str
    cache_path: str
    config: str
    """An empty nova.conf-style file: tests never read /etc/nova/nova.conf."""
    expected: dict[str, str] = field(default_factory=dict)
    """Cache file name -> the verdict it must get."""
    in_use: set[str] = field(default_factory=set)

    def cache_file(self, name: str) -> str:
        return os.path.join(self.cache_path, name)

    @property
    def removable(self) -> set[str]:
        return {n for n, v in self.expected.items() if v in ("remove", "stale-partial")}

    def cli(self, *args: str) -> list[str]:
        """Global options every invocation needs, then `args`."""
        return ["--config-file", self.config, "--instances-path", self.instances_path, *args]


ORIG_USED = image_hash("image-in-use")
ORIG_OLD = image_hash("image-unused-old")
ORIG_YOUNG = image_hash("image-unused-young")
ORIG_LOCAL = image_hash("image-used-by-b")
RESIZED_OLD = ORIG_OLD + "_20"
PART_STALE = image_hash("dead-download") + ".part"
PART_FRESH = image_hash("live-download") + ".part"
SWAP_OLD = "swap_512"
EPHEMERAL_USED = "ephemeral_10_0706d66"
UNKNOWN = "README.operator"


def build_tree(root: str, broken_swap: bool = False) -> Tree:
    """instances/_base with one file of every verdict, and two instances using three bases.

    Ages are exact at build time (`now - age`), so the human ages printed stay the same for
    a minute: two runs a moment apart print identical tables.

    broken_swap: add a deferred-delete folder whose disk.swap is a truncated qcow2; it
    could use any swap base, so SWAP_OLD is held instead of removed.
    """
    now = time.time()
    ipath = os.path.join(root, "instances")
    cpath = os.path.join(ipath, "_base")
    os.makedirs(cpath)
    config = os.path.join(root, "nova.conf")
    with open(config, "w") as f:
        f.write("[DEFAULT]\n")
    tree = Tree(root, ipath, cpath, config)

    def base(name: str, age: float, verdict: str) -> str:
        tree.expected[name] = verdict
        return make_base(os.path.join(cpath, name), age=age, now=now)

    # In use whatever its age: nova's rule, and ours.
    used = base(ORIG_USED, 10 * DAY, "in-use")
    local = base(EPHEMERAL_USED, 10 * DAY, "in-use")
    used_b = base(ORIG_LOCAL, 10 * DAY, "in-use")
    base(ORIG_OLD, 3 * DAY, "remove")
    base(RESIZED_OLD, 2 * HOUR, "remove")  # resized copies may go after 1 h
    base(ORIG_YOUNG, 2 * HOUR, "too-young")  # originals wait 24 h
    base(SWAP_OLD, 3 * DAY, "held" if broken_swap else "remove")
    base(PART_STALE, 2 * DAY, "stale-partial")
    base(PART_FRESH, 30 * 60, "downloading")
    base(UNKNOWN, 60 * DAY, "unknown")
    tree.in_use = {ORIG_USED, EPHEMERAL_USED, ORIG_LOCAL}

    a = os.path.join(ipath, UUID_A)
    os.makedirs(a)
    make_overlay(os.path.join(a, "disk"), used)
    make_overlay(os.path.join(a, "disk.local"), local)
    with open(os.path.join(a, "console.log"), "w") as f:
        f.write("boot\n")
    b = os.path.join(ipath, UUID_B)
    os.makedirs(b)
    make_overlay(os.path.join(b, "disk"), used_b)
    open(os.path.join(b, "console.log"), "w").close()  # nova made it after the last disk
    os.makedirs(os.path.join(ipath, "locks"))
    if broken_swap:
        d = os.path.join(ipath, UUID_BROKEN + "_del")
        os.makedirs(d)
        with open(os.path.join(d, "disk.swap"), "wb") as f:
            f.write(b"QFI\xfb\x00\x00\x00\x03")  # a qcow2 magic, then nothing
    return tree


def snapshot(root: str) -> dict[str, tuple[int, int, int]]:
    """Every path under `root` -> (mode, size, mtime_ns), links not followed."""
    out: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def run_cli(*args: str, cwd: str | None = None, stdin: int | None = subprocess.DEVNULL,
            env: dict[str, str] | None = None, timeout: float = 60,
            prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """`python -m novakeeper ARGS` in a child process; stdin is not a tty unless given."""
    return subprocess.run([*prefix, sys.executable, "-m", "novakeeper", *args],
                          capture_output=True, text=True, stdin=stdin, cwd=cwd, env=env,
                          timeout=timeout)


_NO_DAC = ("--bounding-set=-dac_override,-dac_read_search",
           "--inh-caps=-dac_override,-dac_read_search")


@functools.cache
def permission_prefix() -> tuple[str, ...] | None:
    """A command prefix under which file permission bits apply to the child.

    Nothing for an ordinary user. For root: `setpriv` dropping CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH, the capabilities that let root ignore permission bits, so a
    mode-000 folder really gives EACCES. None when neither works (then skip).
    """
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = (setpriv, *_NO_DAC)
    with tempfile.TemporaryDirectory() as tmp:
        locked = os.path.join(tmp, "locked")
        os.mkdir(locked, 0)
        try:
            proc = subprocess.run([*prefix, sys.executable, "-c",
                                   "import os, sys; os.listdir(sys.argv[1])", locked],
                                  capture_output=True, timeout=30)
        except OSError:
            return None
    return prefix if b"PermissionError" in proc.stderr else None


def verdicts(plan_json: str) -> dict[str, str]:
    return {d["name"]: d["verdict"] for d in json.loads(plan_json)["decisions"]}
