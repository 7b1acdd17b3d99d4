"""--cross-check: ask `qemu-img info --backing-chain` about each disk and compare its chain
with ours. Slow by design (one subprocess per disk); it exists to build trust in the native
reader, and any disagreement becomes a problem that holds the disk's bases."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable

from novakeeper.errors import ExitCode, NovakeeperError

QEMU_IMG_TIMEOUT = 60


def qemu_img() -> str:
    path = shutil.which("qemu-img")
    if path is None:
        raise NovakeeperError(
            ExitCode.CROSS_CHECK,
            "--cross-check needs qemu-img (Debian: apt-get install qemu-utils)",
        )
    return path


def qemu_chain(binary: str, disk: str) -> list[str]:
    """The chain qemu-img reports: the disk, then each backing file, as full paths."""
    proc = subprocess.run(
        [binary, "info", "--force-share", "--output=json", "--backing-chain", disk],
        capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT, check=False,
    )
    if proc.returncode != 0:
        err = proc.stderr.strip().splitlines()
        raise RuntimeError(err[-1] if err else f"qemu-img exited {proc.returncode}")
    entries = json.loads(proc.stdout)
    if isinstance(entries, dict):
        entries = [entries]
    return [str(e["filename"]) for e in entries]


def _canon(path: str) -> str:
    return os.path.realpath(path)


def compare(disk: str, ours: Iterable[str], binary: str) -> str | None:
    """A one-line description of the disagreement, or None when qemu-img agrees."""
    mine = [_canon(disk), *(_canon(p) for p in ours)]
    try:
        theirs = [_canon(p) for p in qemu_chain(binary, disk)]
    except (RuntimeError, subprocess.TimeoutExpired, ValueError, KeyError) as exc:
        return f"qemu-img info failed: {exc}"
    if mine == theirs:
        return None
    return f"qemu-img chain {' -> '.join(theirs)} differs from ours {' -> '.join(mine)}"
