"""`cache fetch`: put a Glance image into this node's cache exactly as nova does for a spawn.

Nova's path (nova 34: `Image.cache` -> `fetch_func_sync` under
`utils.synchronized(<name>, external=True, lock_path=$instances_path/locks)` ->
`libvirt_utils.fetch_image` -> `images.fetch_to_raw`): the cache name is sha1(image id);
under nova's lock `nova-<name>`, a base already there is left alone; otherwise the image is
downloaded to `<name>.part` (opened 'wb', flushed and fsync'd), `qemu-img info` must find
no backing file and no data file, and with `force_raw_images` a non-raw image is converted
with `qemu-img convert -t none|writeback -O raw -f <fmt>` into `<name>.converted`, the
`.part` unlinked and the result renamed to `<name>`; a raw image's `.part` is renamed
directly. Any failure removes what was written (`fileutils.remove_path_on_error`).

What we add: the bytes are checked against Glance's os_hash_value and checksum as they
are written (nova leaves that to glanceclient's md5 check), the free space and the cache
budget are checked before the download starts, a base already there must be the same
image (else nothing is touched), and the file gets the cache folder's owner (nova's user)
when run as root. A present base is only touched, as nova touches a base it reuses.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import signal
import sqlite3
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from novakeeper.cache.budget import BudgetConfig, FsUsage, measure
from novakeeper.cache.layout import image_hash
from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.units import human_bytes

if TYPE_CHECKING:
    from novakeeper.cache.locks import NovaLocks
    from novakeeper.integrity.checksum import RateLimiter
    from novakeeper.integrity.glance import Glance, GlanceImage
    from novakeeper.state.db import StateDB

LOG = logging.getLogger("novakeeper.cache")

CHUNK = 1 << 20
BASE_MODE = 0o644
"""What nova's `open(path, 'wb')` gives under nova-compute's usual umask (022)."""
QEMU_IMG_TIMEOUT = 3600
# Glance disk formats nova's libvirt driver fetches into the cache, and what `qemu-img
# info` must find in the download for each (nova's deep inspection rejects a mismatch).
_FORMATS = {"raw": "raw", "iso": "raw", "qcow2": "qcow2"}


@dataclass(frozen=True, slots=True)
class Fetched:
    """What one fetch did, as data for the line, the JSON and the tests."""

    image_id: str
    name: str
    path: str
    action: str
    """"fetched" (downloaded now) or "present" (already cached: touched)."""
    bytes: int
    """Bytes downloaded (0 when present)."""
    size: int
    """Size of the base file."""
    converted_from: str | None = None
    """The image's format when it was converted to raw."""
    algo: str | None = None
    digest: str | None = None
    """The verified os_hash_value (or md5 checksum)."""
    seconds: float = 0.0
    pinned: bool = False
    image: GlanceImage | None = None
    """Glance's record of the image, for the catalog (not in the JSON: see `cache plan`)."""

    def to_dict(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "name": self.name, "path": self.path,
                "action": self.action, "bytes": self.bytes, "size": self.size,
                "converted_from": self.converted_from, "algo": self.algo,
                "digest": self.digest, "seconds": round(self.seconds, 3),
                "pinned": self.pinned}

    def line(self) -> str:
        if self.action == "present":
            return f"present {self.image_id} -> {self.path} (touched)"
        conv = f", converted {self.converted_from} -> raw" if self.converted_from else ""
        return (f"fetched {self.image_id} -> {self.path} ({human_bytes(self.bytes)} in "
                f"{self.seconds:.1f} s{conv}; {self.algo} verified)")


class Progress(Protocol):
    """Told of each chunk written; the CLI passes a rich progress bar on a terminal."""

    def start(self, image_id: str, total: int | None) -> None: ...
    def advance(self, n: int) -> None: ...
    def stop(self) -> None: ...


def _fail(code: ExitCode, message: str) -> NovakeeperError:
    return NovakeeperError(code, message)


def _expected_size(image: GlanceImage, force_raw: bool) -> int | None:
    """The size the base will have: the image's bytes when nova keeps them as they
    are, the disk's virtual size when it converts them to raw."""
    stored = _FORMATS.get((image.disk_format or "").lower())
    if stored == "raw" or not force_raw:
        return image.size
    return image.virtual_size


def check_image(image: GlanceImage | None, image_id: str) -> GlanceImage:
    if image is None:
        raise _fail(ExitCode.IMAGE_UNKNOWN, f"image {image_id}: no such image in Glance")
    status = (image.status or "").lower()
    if status != "active":
        raise _fail(ExitCode.IMAGE_NOT_ACTIVE,
                    f"image {image_id} is {status or 'in no state'} in Glance: only an "
                    "active image can be fetched")
    if (image.disk_format or "").lower() not in _FORMATS:
        raise _fail(ExitCode.FETCH_FAILED,
                    f"image {image_id} has disk format {image.disk_format}: cache fetch "
                    f"handles {', '.join(sorted(_FORMATS))}")
    if (image.container_format or "bare").lower() != "bare":
        raise _fail(ExitCode.FETCH_FAILED,
                    f"image {image_id} has container format {image.container_format}: "
                    "cache fetch handles bare images")
    return image


def cache_allocated(cache_path: str) -> int:
    """Allocated bytes of the regular files in the cache folder (trash not counted)."""
    total = 0
    with os.scandir(cache_path) as it:
        for entry in it:
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    total += st.st_blocks * 512
    return total


def check_space(cache_path: str, image: GlanceImage, final: int | None, converting: bool,
                budget: BudgetConfig) -> None:
    """Before the download: room on the file system for the download (and its raw copy,
    which exists next to it during the conversion), and room in the cache budget for the
    base. Nothing is evicted to make room: that is `cache clean`'s job."""
    size = image.size or 0
    need = size + ((final or 0) if converting else 0)
    fs = FsUsage.of(cache_path)
    if need > fs.avail:
        raise _fail(ExitCode.NO_SPACE,
                    f"image {image.id}: needs {human_bytes(need)} in {cache_path}, "
                    f"{human_bytes(fs.avail)} free; nothing fetched")
    if not budget.enabled:
        return
    grows = final if final is not None else size
    after = FsUsage(fs.size, fs.used + grows, max(0, fs.avail - grows))
    state = measure(budget, cache_allocated(cache_path) + grows, after)
    over = [lim for lim in state.limits if lim.headroom < 0]
    if over:
        raise _fail(ExitCode.NO_SPACE,
                    f"image {image.id}: {human_bytes(grows)} more would break the cache "
                    f"budget ({over[0].words}); run `novakeeper cache clean` first; "
                    "nothing fetched")


def supports_direct_io(folder: str) -> bool:
    """nova.privsep.utils.supports_direct_io: can a file here be written with O_DIRECT?
    (tmpfs cannot): picks qemu-img's cache mode, `none` or `writeback`."""
    test = os.path.join(folder, f".novakeeper-directio.{os.getpid()}.test")
    fd = -1
    try:
        fd = os.open(test, os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o600)
        import mmap

        buf = mmap.mmap(-1, 4096)
        buf.write(b"x" * 4096)
        os.write(fd, buf)
        return True
    except OSError:
        return False
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(test)


def qemu_info(path: str) -> dict[str, Any]:
    proc = subprocess.run(["qemu-img", "info", "--output=json", path], capture_output=True,
                          text=True, timeout=QEMU_IMG_TIMEOUT, check=False)
    if proc.returncode != 0:
        raise _fail(ExitCode.FETCH_FAILED, f"qemu-img info {path}: "
                    f"{(proc.stderr.strip().splitlines() or ['failed'])[-1]}")
    info: dict[str, Any] = json.loads(proc.stdout)
    return info


@contextlib.contextmanager
def _removed_on_error(*paths: str) -> Iterator[None]:
    """oslo's remove_path_on_error, for every exit but success, Ctrl-C and SIGTERM too."""
    try:
        yield
    except BaseException:
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        raise


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM during a fetch unwinds like Ctrl-C, so the partial files go with it."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _owner(cache_path: str) -> tuple[int, int] | None:
    """The cache folder's owner (nova's user) when we run as root; else we are nova."""
    if os.geteuid() != 0:
        return None
    st = os.stat(cache_path)
    return st.st_uid, st.st_gid


def _finish(path: str, owner: tuple[int, int] | None) -> None:
    os.chmod(path, BASE_MODE)
    if owner is not None:
        os.chown(path, *owner)


def _download(glance: Glance, image: GlanceImage, part: str,
              rate: RateLimiter | None, progress: Progress | None,
              owner: tuple[int, int] | None) -> tuple[int, str, str]:
    """Stream to `part` (created, never reused), hashing as it goes; (bytes, algo,
    digest) of what was verified. A mismatch raises HASH_MISMATCH."""
    algo = (image.hash_algo or "").lower()
    want = (image.hash_value or "").lower()
    main = hashlib.new(algo) if algo and want and algo in hashlib.algorithms_available else None
    md5 = hashlib.md5(usedforsecurity=False) if image.checksum else None
    written = 0
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 BASE_MODE)
    try:
        if progress is not None:
            progress.start(image.id, image.size)
        for chunk in glance.download(image.id, CHUNK):
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            written += len(chunk)
            if main is not None:
                main.update(chunk)
            if md5 is not None:
                md5.update(chunk)
            if rate is not None:
                rate.consume(len(chunk))
            if progress is not None:
                progress.advance(len(chunk))
        os.fsync(fd)  # as nova: a crash must not leave a base with holes of zeroes
    finally:
        os.close(fd)
        if progress is not None:
            progress.stop()
    _finish(part, owner)
    problems = []
    if image.size is not None and written != image.size:
        problems.append(f"got {written} bytes, Glance says {image.size}")
    got = main.hexdigest() if main is not None else None
    if main is not None and got != want:
        problems.append(f"{algo} {got} != os_hash_value {want}")
    if md5 is not None and md5.hexdigest() != (image.checksum or "").lower():
        problems.append(f"md5 {md5.hexdigest()} != checksum {image.checksum}")
    if problems:
        raise _fail(ExitCode.HASH_MISMATCH, f"image {image.id}: download does not match "
                    f"Glance ({'; '.join(problems)}): discarded, nothing cached")
    if got is not None:
        return written, algo, got
    if md5 is not None:
        return written, "md5", md5.hexdigest()
    raise _fail(ExitCode.HASH_MISMATCH, f"image {image.id}: Glance gives no os_hash_value "
                "and no checksum to verify the download against: discarded")


def _present(path: str, image: GlanceImage, expected: int | None) -> bool:
    """Whether `path` holds this image already; raises NAME_CONFLICT when a file of that
    name is something else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        raise _fail(ExitCode.NAME_CONFLICT, f"{path} exists and is not a regular file: "
                    "left as it is, nothing fetched")
    if expected is not None and st.st_size != expected:
        raise _fail(ExitCode.NAME_CONFLICT,
                    f"{path} exists but is a different file ({st.st_size} bytes, image "
                    f"{image.id} gives {expected}): left as it is, nothing fetched")
    return True


def fetch(image_id: str, cache_path: str, glance: Glance, locks: NovaLocks,
          force_raw: bool, budget: BudgetConfig, rate: RateLimiter | None = None,
          progress: Progress | None = None,
          clock: Callable[[], float] = time.time) -> Fetched:
    """Fetch one image under nova's lock; see the module docstring. Raises
    NovakeeperError with a one-line message; the cache is then as it was."""
    from novakeeper.integrity.glance import GlanceError

    started = clock()
    try:
        image = check_image(glance.image(image_id), image_id)
    except GlanceError as exc:
        raise _fail(ExitCode.GLANCE, f"Glance: {exc}") from None
    name = image_hash(image.id)
    path = os.path.join(cache_path, name)
    part, converted = f"{path}.part", f"{path}.converted"
    disk_format = _FORMATS[(image.disk_format or "").lower()]
    converting = force_raw and disk_format != "raw"
    expected = _expected_size(image, force_raw)
    with locks.hold(name) as busy:
        if busy is not None:
            raise _fail(ExitCode.BUSY, f"image {image_id}: {busy}; nothing fetched")
        if _present(path, image, expected):
            os.utime(path)  # nova's reuse of a base touches it
            return Fetched(image.id, name, path, "present", 0, os.stat(path).st_size,
                           seconds=clock() - started, image=image)
        check_space(cache_path, image, expected, converting, budget)
        for leftover in (part, converted):  # a crashed fetch's: we hold nova's lock
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
                LOG.warning("Removed %s, left by an interrupted fetch", leftover)
        owner = _owner(cache_path)
        with terminate_as_interrupt(), _removed_on_error(part, converted):
            try:
                written, algo, digest = _download(glance, image, part, rate, progress, owner)
            except GlanceError as exc:
                raise _fail(ExitCode.GLANCE, f"Glance: {exc}; nothing cached") from None
            except OSError as exc:
                code = ExitCode.NO_SPACE if exc.errno == errno.ENOSPC else ExitCode.FETCH_FAILED
                raise _fail(code, f"image {image.id}: writing {part}: {exc.strerror}; "
                            "nothing cached") from None
            info = qemu_info(part)
            fmt = str(info.get("format", ""))
            if info.get("backing-filename") or info.get("full-backing-filename"):
                raise _fail(ExitCode.FETCH_FAILED, f"image {image.id}: {fmt} backed by "
                            f"{info.get('backing-filename')}: unacceptable, as for nova")
            data_file = (info.get("format-specific", {}).get("data", {}) or {}).get(
                "data-file")
            if data_file:
                raise _fail(ExitCode.FETCH_FAILED, f"image {image.id}: {fmt} has data-file "
                            f"{data_file}: unacceptable, as for nova")
            if fmt != disk_format:
                raise _fail(ExitCode.FETCH_FAILED, f"image {image.id}: content is {fmt}, "
                            f"Glance says {image.disk_format}: unacceptable, as for nova")
            if converting:
                # nova tests instances_path, not the cache folder (no stray name there)
                mode = ("none" if supports_direct_io(os.path.dirname(cache_path))
                        else "writeback")
                proc = subprocess.run(
                    ["qemu-img", "convert", "-t", mode, "-O", "raw", "-f", fmt, part,
                     converted], capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT,
                    check=False)
                if proc.returncode != 0:
                    err = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                    raise _fail(ExitCode.FETCH_FAILED,
                                f"image {image.id}: qemu-img convert: {err}; nothing cached")
                os.unlink(part)
                if qemu_info(converted).get("format") != "raw":
                    raise _fail(ExitCode.FETCH_FAILED, f"image {image.id}: converted to "
                                "raw, but qemu-img does not see raw")
                _finish(converted, owner)
                os.rename(converted, path)
            else:
                os.rename(part, path)
        os.utime(path)  # mtime now: a fresh base, as after nova's download
        size = os.stat(path).st_size
    return Fetched(image.id, name, path, "fetched", written, size,
                   fmt if converting else None, algo, digest, clock() - started, image=image)


def record(state: StateDB | None, image_id: str, name: str, outcome: str, nbytes: int,
           detail: str, now: float, image: GlanceImage | None = None) -> None:
    """The fetch's outcome in the state database (the exporter counts them); the id is
    learned so that plans and `cache verify` know the base's image, and Glance's record of
    it goes into the catalog (so a plan can name it even once it is deleted)."""
    if state is None or not state.writable:
        return
    try:
        with state.write() as conn:
            conn.execute("INSERT INTO fetches (at, image_id, name, bytes, outcome, detail) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         (now, image_id, name, nbytes, outcome, detail))
            if outcome != "failed":
                conn.execute("INSERT OR IGNORE INTO image_ids (hash, image_id, source, "
                             "learned_at) VALUES (?, ?, 'fetch', ?)", (name, image_id, now))
            if outcome != "failed" and image is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO glance_images (hash, image_id, name, status, "
                    "visibility, disk_format, container_format, size, virtual_size, "
                    "checksum, hash_algo, hash_value, checked_at) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (name, image.id, image.name, (image.status or "").lower(),
                     image.visibility, image.disk_format, image.container_format,
                     image.size, image.virtual_size, image.checksum, image.hash_algo,
                     image.hash_value, now))
    except sqlite3.Error as exc:
        LOG.warning("State database %s: %s; fetch not recorded", state.path, exc)


@dataclass(frozen=True, slots=True)
class FetchTotals:
    count: int
    bytes: int
    failures: int


def totals(state: StateDB) -> FetchTotals:
    row = state.conn.execute(
        "SELECT COUNT(*) FILTER (WHERE outcome = 'fetched'), "
        "COALESCE(SUM(bytes), 0), COUNT(*) FILTER (WHERE outcome = 'failed') "
        "FROM fetches").fetchone()
    return FetchTotals(int(row[0]), int(row[1]), int(row[2]))
