"""Scan a compute node into an Inventory: every base file, every instance disk, every
disk -> base edge along whole backing chains, and every problem met on the way.

The inventory is plain data; deciding what to do with it is the policy's job. Disks are
matched to bases by file identity (device, inode), so a base reached through a
relative path, a symlink or another mount of the same share is still recognised.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from novakeeper.cache.layout import (
    ALL_KINDS,
    QUARANTINE_NAME,
    RUN_LOCK_NAME,
    TEMPLATE_KINDS,
    TRASH_NAME,
    BaseKind,
    classify,
    kinds_usable_by,
)
from novakeeper.cache.trash import TrashEntry, scan_trash
from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.images.chain import Break, CachedProber, Chain, follow
from novakeeper.images.probe import ImageFormat, ImageInfo, ProbeError, ProbeErrorKind, probe


class FolderKind(StrEnum):
    INSTANCE = "instance"  # <uuid>
    LEGACY = "legacy"  # instance-%08x
    RESIZE = "resize"  # <uuid>_resize: source disks kept during resize and migration
    DELETED = "deleted"  # <uuid>_del: deletion deferred
    OTHER = "other"  # scanned anyway: a disk is a disk wherever it lies
    CACHE = "cache"  # a qcow2 file in the cache backed by another cache file


_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_FOLDER = re.compile(rf"(?:({_UUID})(_resize|_del)?|(instance-[0-9a-f]{{8}}))")
_SUFFIX_KIND = {None: FolderKind.INSTANCE, "_resize": FolderKind.RESIZE,
                "_del": FolderKind.DELETED}

SPAWN_WINDOW_SECONDS = 120.0
"""How long a young instance folder whose disks are not all there holds bases
([novakeeper] spawn_hold_seconds)."""

# Files nova keeps in an instance folder that are never disk images.
NOT_DISKS = frozenset({"console.log", "libvirt.xml", "disk.info"})
# Folders under instances_path that hold no instance disks.
NOT_INSTANCE_FOLDERS = frozenset({"locks"})


def classify_folder(name: str) -> tuple[FolderKind, str]:
    """Folder kind and the instance it belongs to (uuid, or the folder name)."""
    m = _FOLDER.fullmatch(name.lower())  # one match: 10,000 folders are listed per pass
    if m is None:
        return FolderKind.OTHER, name
    if m.group(3) is not None:
        return FolderKind.LEGACY, m.group(3)
    return _SUFFIX_KIND[m.group(2)], m.group(1)


def _is_candidate_disk(name: str) -> bool:
    if name in NOT_DISKS or name.startswith("console.log") or name.endswith((".xml", ".log")):
        return False
    return not name.startswith(".")


class ProblemCode(StrEnum):
    DISK_UNREADABLE = "disk-unreadable"
    DISK_CORRUPT = "disk-corrupt"
    CHAIN_BROKEN = "chain-broken"
    FOLDER_UNREADABLE = "folder-unreadable"
    CROSS_CHECK = "cross-check"
    SPAWNING = "spawning"  # a young instance folder without its disk yet
    DOMAIN_DISK = "domain-disk"  # a libvirt domain's disk that cannot be read


# Problems that are a normal, passing state of a node rather than a fault: they hold files
# like any problem, but `clean` does not fail (exit 6) because of them.
TRANSIENT_PROBLEMS = frozenset({ProblemCode.SPAWNING})


@dataclass(frozen=True, slots=True)
class Problem:
    """Something met while scanning that leaves doubt; it holds the bases it could affect."""

    code: ProblemCode
    path: str
    detail: str
    instance: str | None = None
    holds_kinds: frozenset[BaseKind] = frozenset()
    holds_names: frozenset[str] = frozenset()

    def holds(self, kind: BaseKind, name: str) -> bool:
        return kind in self.holds_kinds or name in self.holds_names

    def line(self) -> str:
        return f"{self.code}: {self.path}: {self.detail}"

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT_PROBLEMS


@dataclass(frozen=True, slots=True)
class BaseFile:
    name: str
    path: str
    kind: BaseKind
    image_hash: str | None
    variant: str | None
    size: int
    allocated: int
    mtime: float
    dev: int
    ino: int
    nlink: int


@dataclass(frozen=True, slots=True)
class Disk:
    path: str
    instance: str
    folder_kind: FolderKind
    format: str
    virtual_size: int
    allocated: int
    chain: tuple[str, ...]
    """Paths of the backing files, nearest first."""
    size: int = 0
    """Apparent size (st_size): what nova counts for a raw disk's holes."""


@dataclass(frozen=True)
class Inventory:
    instances_path: str
    cache_path: str
    cache_real_path: str
    scanned_at: float
    bases: tuple[BaseFile, ...]
    disks: tuple[Disk, ...]
    users: Mapping[str, tuple[Disk, ...]]
    """Base name -> the disks whose chain contains it."""
    problems: tuple[Problem, ...]
    folders: int = 0
    cache_dev: int = 0
    cache_ino: int = 0
    trash: tuple[TrashEntry, ...] = ()
    """Bases removed into the trash folder, waiting for their grace period to end."""
    named: Mapping[str, tuple[tuple[Disk, str], ...]] = field(default_factory=dict)
    """Base name -> (disk, backing path) of chains that reach it by name only: a backing
    path outside the cache folder whose basename is this cache file's name."""

    def users_of(self, name: str) -> tuple[Disk, ...]:
        return self.users.get(name, ())


# -- cache folder ---------------------------------------------------------------------


def check_dir(path: str, what: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NovakeeperError(ExitCode.PATH, f"{what} {path} does not exist") from None
    except PermissionError:
        raise NovakeeperError(ExitCode.PERMISSION, f"{what} {path}: permission denied") from None
    except OSError as exc:
        raise NovakeeperError(ExitCode.PATH, f"{what} {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise NovakeeperError(ExitCode.PATH, f"{what} {path} is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise NovakeeperError(ExitCode.PERMISSION, f"{what} {path}: permission denied")
    return st


def scan_cache(cache_path: str) -> list[BaseFile]:
    """Every entry of the cache folder, with its lstat facts; links are never followed."""
    bases: list[BaseFile] = []
    try:
        entries = list(os.scandir(cache_path))
    except PermissionError:
        raise NovakeeperError(
            ExitCode.PERMISSION, f"cache folder {cache_path}: permission denied"
        ) from None
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed since listing: nothing to decide about
        except OSError:
            st = None
        name = entry.name
        if name in (RUN_LOCK_NAME, TRASH_NAME, QUARANTINE_NAME):
            continue  # novakeeper's own run lock, trash and quarantine, not cache files
        if st is None:
            bases.append(BaseFile(name, entry.path, BaseKind.SPECIAL, None, None,
                                  0, 0, 0.0, 0, 0, 0))
            continue
        if stat.S_ISREG(st.st_mode):
            cname = classify(name)
            kind, image_hash, variant = cname.kind, cname.image_hash, cname.variant
        elif stat.S_ISLNK(st.st_mode):
            kind, image_hash, variant = BaseKind.SYMLINK, None, None
        elif stat.S_ISDIR(st.st_mode):
            kind, image_hash, variant = BaseKind.DIRECTORY, None, None
        else:
            kind, image_hash, variant = BaseKind.SPECIAL, None, None
        bases.append(
            BaseFile(name, entry.path, kind, image_hash, variant, st.st_size,
                     st.st_blocks * 512, st.st_mtime, st.st_dev, st.st_ino, st.st_nlink)
        )
    bases.sort(key=lambda b: b.name)
    return bases


# -- instance folders -----------------------------------------------------------------


Edge = tuple[tuple[int, int], str | None, "Disk"]
"""(device, inode) of a file a disk reads, the path it names it by (None for the disk
itself), the disk. The path matters when no cache file has that identity: nova matches
backing files to cache files by name (`os.path.basename`), so must we."""

Fingerprint = tuple[int, int, int, int]
"""(dev, ino, mtime_ns, ctime_ns) of a file whose header a folder's scan read."""


def fingerprint(path: str) -> Fingerprint | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns


@dataclass(slots=True)
class FolderScan:
    """What one instance folder yielded; kept so a re-check can rescan only what changed."""

    path: str
    mtime_ns: int
    kind: FolderKind = FolderKind.OTHER
    instance: str = ""
    disks: list[Disk] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    entries: frozenset[str] = frozenset()
    """Every name in the folder: what the spawn hold reads (`disk`, `console.log`)."""
    files: dict[str, Fingerprint | None] = field(default_factory=dict)
    """Every file whose header was read (the folder's disks and their backing chains): a
    header rewritten in place (`qemu-img rebase`) changes no folder's mtime."""


def _problem_for_probe(exc: ProbeError, instance: str, disk_name: str) -> Problem:
    code = (
        ProblemCode.DISK_UNREADABLE
        if exc.kind in (ProbeErrorKind.UNREADABLE, ProbeErrorKind.NOT_A_FILE)
        else ProblemCode.DISK_CORRUPT
    )
    return Problem(code, exc.path, exc.detail, instance, kinds_usable_by(disk_name))


def _problem_for_chain(chain: Chain, path: str, instance: str | None,
                       could_use: frozenset[BaseKind]) -> Problem:
    """A chain that stops early holds what lies beyond the break: the kinds of base the
    image `path` could use, and any cache file named like the file where it stopped."""
    assert chain.broken is not None and chain.broken_at is not None
    detail = f"{chain.broken}: {chain.broken_at}"
    if chain.detail and chain.broken is not Break.MISSING:
        detail += f" ({chain.detail})"
    # Every file of a looping chain was seen: nothing unknown lies beyond it.
    kinds = frozenset() if chain.broken is Break.LOOP else could_use
    names = {os.path.basename(chain.broken_at)} | {os.path.basename(p) for p in chain.also}
    return Problem(ProblemCode.CHAIN_BROKEN, path, detail, instance, kinds, frozenset(names))


def _chained_disk(path: str, instance: str, kind: FolderKind, info: ImageInfo,
                  chain: Chain) -> Disk:
    return Disk(path, instance, kind, str(info.format), info.virtual_size, info.allocated,
                tuple([link.path for link in chain.links]), info.size)


def scan_folder(
    path: str, kind: FolderKind, instance: str, prober: CachedProber, mtime_ns: int
) -> FolderScan:
    """Probe every candidate disk in one instance folder and follow its chain."""
    result = FolderScan(path, mtime_ns, kind, instance)
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return result  # deleted since the listing (nova removed the instance): no disks
    except OSError as exc:
        detail = "permission denied" if isinstance(exc, PermissionError) else str(exc.strerror)
        result.problems.append(
            Problem(ProblemCode.FOLDER_UNREADABLE, path, detail, instance, ALL_KINDS)
        )
        return result
    result.entries = frozenset([e.name for e in entries])
    files = result.files
    edges = result.edges
    for entry in entries:
        name = entry.name
        if not _is_candidate_disk(name):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                continue
        except OSError:
            pass
        known = name == "disk" or name.startswith("disk.")
        try:
            info = probe(entry.path)
        except ProbeError as exc:
            result.files[entry.path] = fingerprint(entry.path)
            if exc.kind is ProbeErrorKind.MISSING:
                if known and entry.is_symlink():  # e.g. into a share that is not mounted
                    result.problems.append(Problem(
                        ProblemCode.DISK_UNREADABLE, entry.path,
                        f"dangling symbolic link to {_readlink(entry.path)}", instance,
                        kinds_usable_by(name)))
                continue  # otherwise deleted since listing
            if exc.kind is ProbeErrorKind.NOT_A_FILE and not known:
                continue
            result.problems.append(_problem_for_probe(exc, instance, name))
            continue
        except ValueError:
            continue  # a name the OS cannot open; not a file nova made
        # taken by the probe's fstat, before its read: a later rewrite shows
        path = entry.path
        changed = info.changed
        files[path] = (info.dev, info.ino, changed[0], changed[1])
        if info.format is ImageFormat.RAW and not known:
            continue  # some other file, not a disk
        chain = follow(info, prober)
        disk = _chained_disk(path, instance, kind, info, chain)
        result.disks.append(disk)
        # a disk that is itself a cache file (a symbolic or hard link to it) uses that file
        edges.append(((info.dev, info.ino), None, disk))
        for link in chain.links:
            edges.append(((link.dev, link.ino), link.path, disk))
            if link.path not in files:  # from the probe's own fstat: no extra stat
                changed = link.changed
                files[link.path] = (link.dev, link.ino, changed[0], changed[1])
        if chain.broken is not None:
            result.problems.append(
                _problem_for_chain(chain, entry.path, instance, kinds_usable_by(name)))
    return result


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


# Cache files that may be qcow2 overlays of other cache files (force_raw_images = False).
CHAINED_KINDS = frozenset({BaseKind.ORIGINAL, BaseKind.RESIZED, BaseKind.SWAP,
                           BaseKind.EPHEMERAL})

CacheChain = tuple[tuple[int, int, float, int], list[Edge], list[Problem]]


def cache_chain(base: BaseFile, cache_name: str, prober: CachedProber) -> CacheChain:
    """The files a qcow2 cache file is backed by: they stay as long as it does."""
    key = (base.dev, base.ino, base.mtime, base.size)
    try:
        info = prober(base.path)
    except (ProbeError, ValueError):
        return key, [], []
    if info.format is not ImageFormat.QCOW2 or info.backing_file is None:
        return key, [], []
    chain = follow(info, prober)
    user = _chained_disk(base.path, f"{cache_name}/{base.name}", FolderKind.CACHE, info, chain)
    edges: list[Edge] = [((link.dev, link.ino), link.path, user) for link in chain.links]
    # a cache file is not a disk of any class: a break holds only the file it names
    problems = [] if chain.complete else [_problem_for_chain(chain, base.path, None, frozenset())]
    return key, edges, problems


def iter_instance_folders(
    instances_path: str, cache_name: str
) -> Iterator[tuple[str, FolderKind, str, int]]:
    """(path, kind, instance, mtime_ns) of every folder that may hold disks."""
    with os.scandir(instances_path) as it:
        for entry in it:
            name = entry.name
            if name == cache_name or name in NOT_INSTANCE_FOLDERS:
                continue
            try:
                if not entry.is_dir():  # follows links: a linked instance folder is scanned
                    continue
                mtime_ns = entry.stat().st_mtime_ns
            except OSError:
                continue
            kind, instance = classify_folder(name)
            yield entry.path, kind, instance, mtime_ns


class Scanner:
    """Scans the node; keeps per-folder results so `refresh` rescans only what changed."""

    def __init__(self, instances_path: str, cache_name: str,
                 spawn_window: float = SPAWN_WINDOW_SECONDS) -> None:
        self.instances_path = instances_path
        self.cache_name = cache_name
        self.spawn_window = spawn_window
        self.cache_path = os.path.join(instances_path, cache_name)
        self.folders: dict[str, FolderScan] = {}
        self.cache_chains: dict[str, CacheChain] = {}
        self._last_scan = 0.0

    def _scan_cache_chains(self, bases: list[BaseFile], prober: CachedProber
                           ) -> dict[str, CacheChain]:
        """Read each cache file's header once; re-read only files that changed."""
        fresh: dict[str, CacheChain] = {}
        for base in bases:
            if base.kind not in CHAINED_KINDS:
                continue
            old = self.cache_chains.get(base.name)
            if old is not None and old[0] == (base.dev, base.ino, base.mtime, base.size):
                fresh[base.name] = old
            else:
                fresh[base.name] = cache_chain(base, self.cache_name, prober)
        return fresh

    def _scan_folders(self, previous: Mapping[str, FolderScan], prober: CachedProber
                      ) -> dict[str, FolderScan]:
        fresh: dict[str, FolderScan] = {}
        # Folders changed within this window are rescanned even if their mtime looks the
        # same: coarse timestamps (NFS, some file systems) hide a change made just now.
        recent_ns = int((self._last_scan - 2.0) * 1e9)
        try:
            folders = list(iter_instance_folders(self.instances_path, self.cache_name))
        except PermissionError:
            raise NovakeeperError(
                ExitCode.PERMISSION, f"instances path {self.instances_path}: permission denied"
            ) from None
        except OSError as exc:
            raise NovakeeperError(
                ExitCode.PATH, f"instances path {self.instances_path}: {exc.strerror}"
            ) from None
        stats: dict[str, Fingerprint | None] = {}

        def unchanged(scan: FolderScan) -> bool:
            for file, seen in scan.files.items():
                if file not in stats:
                    stats[file] = fingerprint(file)
                now = stats[file]
                if now is None or now != seen or max(now[2], now[3]) >= recent_ns:
                    return False
            return True

        for path, kind, instance, mtime_ns in folders:
            old = previous.get(path)
            if (old is not None and old.mtime_ns == mtime_ns and mtime_ns < recent_ns
                    and unchanged(old)):
                fresh[path] = old
            else:
                fresh[path] = scan_folder(path, kind, instance, prober, mtime_ns)
        return fresh

    def scan(self, now: float | None = None) -> Inventory:
        """Full scan. Raises NovakeeperError when the paths themselves are unusable."""
        check_dir(self.instances_path, "instances path")
        cache_st = check_dir(self.cache_path, "cache folder")
        started = time.time()
        bases = scan_cache(self.cache_path)
        prober = CachedProber()  # one per pass: a base is read once, as disk link or file
        self.cache_chains = self._scan_cache_chains(bases, prober)
        self.folders = self._scan_folders({}, prober)
        self._last_scan = started
        return self._inventory(bases, now if now is not None else started, cache_st)

    def refresh(self) -> Inventory:
        """Re-read the cache folder and rescan instance folders that changed since the last
        scan: the executor's re-check before each removal."""
        return self.refresh_at(None)

    def refresh_at(self, now: float | None) -> Inventory:
        """refresh() with the clock given (a service pass, a replayed timeline)."""
        cache_st = check_dir(self.cache_path, "cache folder")
        started = time.time()
        bases = scan_cache(self.cache_path)
        prober = CachedProber()  # one per pass: a base is read once, as disk link or file
        self.cache_chains = self._scan_cache_chains(bases, prober)
        self.folders = self._scan_folders(self.folders, prober)
        self._last_scan = started
        return self._inventory(bases, started if now is None else now, cache_st)

    def _inventory(self, bases: list[BaseFile], now: float, cache_st: os.stat_result) -> Inventory:
        by_id: dict[tuple[int, int], list[BaseFile]] = {}
        by_name: dict[str, BaseFile] = {}
        for base in bases:
            if base.kind not in (BaseKind.SYMLINK, BaseKind.DIRECTORY, BaseKind.SPECIAL):
                by_id.setdefault((base.dev, base.ino), []).append(base)
                by_name[base.name] = base
        users: dict[str, list[Disk]] = {}
        named: dict[str, list[tuple[Disk, str]]] = {}
        disks: list[Disk] = []
        problems: list[Problem] = []
        edge_lists = [folder.edges for folder in self.folders.values()]
        for folder in self.folders.values():
            disks.extend(folder.disks)
            problems.extend(folder.problems)
        for _key, cache_edges, cache_problems in self.cache_chains.values():
            edge_lists.append(cache_edges)
            problems.extend(cache_problems)
        problems.extend(spawning(self.folders.values(), now, self.spawn_window))
        for edges in edge_lists:
            for key, path, disk in edges:
                hits = by_id.get(key)
                if hits is None:
                    if path is None:
                        continue
                    # No cache file is this file, but one may bear its name: the tree was
                    # moved or the share mounted elsewhere, and nova matches by name.
                    namesake = by_name.get(os.path.basename(path))
                    if namesake is None:
                        continue
                    named.setdefault(namesake.name, []).append((disk, path))
                    hits = [namesake]
                for base in hits:
                    lst = users.setdefault(base.name, [])
                    if not lst or lst[-1] is not disk:
                        lst.append(disk)
        return Inventory(
            instances_path=self.instances_path,
            cache_path=self.cache_path,
            cache_real_path=os.path.realpath(self.cache_path),
            scanned_at=now,
            bases=tuple(bases),
            disks=tuple(disks),
            users={name: tuple(lst) for name, lst in users.items()},
            problems=tuple(problems),
            folders=len(self.folders),
            cache_dev=cache_st.st_dev,
            cache_ino=cache_st.st_ino,
            trash=tuple(scan_trash(self.cache_path)),
            named={name: tuple(lst) for name, lst in named.items()},
        )


def pending_disks(folder: FolderScan) -> set[str]:
    """Disks nova has announced in the folder's `disk.info` but not created yet. Nova's
    Qcow2 backend writes a disk's entry when it builds the disk's Image object, before
    `Image.cache` looks for the base without a lock: an entry with no file is a disk whose
    base may be in use right now (or a spawn that failed)."""
    try:
        with open(os.path.join(folder.path, "disk.info"), "rb") as f:
            raw = f.read(DISK_INFO_LIMIT)
    except OSError:
        return set()
    return announced_missing(raw, folder.entries)


DISK_INFO_LIMIT = 65536
"""Bytes of a disk.info read: a few entries of one path each."""


def announced_missing(raw: bytes, entries: frozenset[str]) -> set[str]:
    """The disk names a disk.info's JSON (`{"<path>": "<format>", ...}`) announces that
    are not among `entries`; nothing when it cannot be parsed."""
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        return set()
    if not isinstance(data, dict):
        return set()
    names = {os.path.basename(str(k)) for k in data}
    return {n for n in names if n and n not in entries}


def building_holds(folder: FolderScan) -> tuple[frozenset[BaseKind], str] | None:
    """What a young instance folder holds, and why, by where nova's spawn sequence is
    (nova 34, `_create_image`): the folder is made first; kernel and ramdisk are copied,
    then the root `disk`, then ephemeral and swap disks; each qcow2 disk's Image object
    writes its `disk.info` entry before `Image.cache` looks for the base without a lock;
    `console.log` is created right after the last disk.

    * no `console.log` and no `disk` yet: every base kind (the raw backend and the kernel
      copy announce nothing in disk.info first);
    * no `console.log` but a `disk`: ephemeral and swap disks may still come;
    * always: disks disk.info announces that do not exist (a rescue's `disk.rescue`, a
      disk deleted after a failed spawn) hold the kinds they could use.
    A finished boot-from-volume folder (console.log, no `disk` announced) holds nothing."""
    pending = pending_disks(folder)
    kinds: set[BaseKind] = set()
    why = []
    if "console.log" not in folder.entries:
        if "disk" in folder.entries:
            kinds |= TEMPLATE_KINDS
            why.append("disks still being created after `disk` (no console.log yet)")
        else:
            kinds |= CHAINED_KINDS
            why.append("instance folder still being built (no console.log yet)")
    for name in sorted(pending):
        kinds |= kinds_usable_by(name) & CHAINED_KINDS
    if pending:
        why.append(f"disk.info announces {', '.join(sorted(pending))} not created yet")
    if not kinds:
        return None
    return frozenset(kinds), "; ".join(why)


def spawning(folders: Iterable[FolderScan], now: float, window: float) -> list[Problem]:
    """The spawn hold: a spawn uses an existing base without nova's lock from its
    `os.path.exists(base)` to its disk's creation, so a young instance folder whose disks
    are not all there yet holds the kinds of base its missing disks could use, for
    `window` seconds after the folder last changed (spawn_hold_seconds). Decided here, at
    assembly time, because a folder's scan is reused while its clock runs on. Folders that
    changed longer ago hold nothing: a spawn that fetched for longer than that is covered
    by its base's fresh mtime (the policy's fresh-base rule)."""
    out: list[Problem] = []
    if window <= 0:
        return out
    for folder in folders:
        if folder.kind not in (FolderKind.INSTANCE, FolderKind.LEGACY) or folder.problems:
            continue
        age = now - folder.mtime_ns / 1e9
        if age >= window:
            continue
        held = building_holds(folder)
        if held is None:
            continue
        kinds, why = held
        out.append(Problem(
            ProblemCode.SPAWNING, folder.path,
            f"{why}, changed {max(age, 0):.0f} s ago: a spawn may be between looking for "
            f"its base and creating its disk (held for {window:g} s)",
            folder.instance, kinds))
    return out


def with_problems(inventory: Inventory, extra: Iterable[Problem]) -> Inventory:
    """The same inventory with more problems (e.g. from a cross-check)."""
    return replace(inventory, problems=inventory.problems + tuple(extra))
