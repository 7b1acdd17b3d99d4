"""libvirt domains: every disk of every defined domain, running or shut off, protects
the cache files along its whole backing chain.

The scanner only sees disks under instances_path. A domain may also use a disk elsewhere:
a rescue disk, a volume of a storage pool, a hand-made overlay in /var/lib/libvirt/images,
a disk of a domain nova no longer knows about. libvirt knows them all, so this source asks
it (read-only connection) for each domain's XML, live and persistent, and follows each
disk's chain natively (images.chain): the chain as the image headers say, and, for a
running domain, also the `<backingStore>` chain libvirt recorded when qemu opened it.

A disk whose file or chain cannot be read is doubt, not "uses nothing": it is returned in
`DomainsResult.unreadable` so that the caller can hold the bases it might use. A failure
to connect or to list domains sets `error` (keep everything). Not covered: the disks of
domain snapshots that are not current (reverting would bring them back), and network
disks (rbd, iscsi, nbd...), which never have a local cache file under them.
"""

from __future__ import annotations

import contextlib
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from novakeeper.cache.inventory import Inventory
from novakeeper.images.chain import Break, CachedProber, follow
from novakeeper.images.probe import ProbeError
from novakeeper.usage.base import FileId, Sighting, SourceResult
from novakeeper.usage.openfiles import cache_file_ids

SOURCE = "libvirt"


@dataclass(frozen=True)
class DomainsResult(SourceResult):
    """A SourceResult plus the disks that could not be read."""

    domains: tuple[Domain, ...] = ()
    """Every domain with the disks of its live definition: the disk report counts
    over-commit over them, as nova does."""
    unreadable: tuple[tuple[str, str], ...] = ()
    """(path, why) for each disk, backing file or volume of a domain that could not be
    read to its end: missing, permission denied, a broken or unparsed chain, a pool
    volume that does not resolve (its path is then "pool/volume"). For a broken chain the
    path is where following stopped. `why` names the domain and disk, e.g. "domain
    instance-0000002a (uuid) disk vda: backing file missing: /x/y". Whatever lies behind
    such a path is unknown, so the caller must hold the bases it might use."""


@dataclass(frozen=True, slots=True)
class DomainDisk:
    """One `<disk>` of a domain's live definition, as nova's
    `_get_instance_disk_info_from_config` reads it."""

    target: str
    kind: str
    """The disk's type: "file", "block", "network", "volume"..."""
    device: str
    """"disk", "cdrom"..."""
    format: str
    """`<driver type>`: nova counts a disk by the format its domain declares."""
    path: str | None


@dataclass(frozen=True, slots=True)
class Domain:
    uuid: str
    name: str
    disks: tuple[DomainDisk, ...]


def domain_disks(xml: str) -> tuple[DomainDisk, ...]:
    """The `<disk>` elements of a domain XML (no backing stores, no mirrors)."""
    root = ET.fromstring(xml)
    disks = []
    for disk in root.iterfind("./devices/disk"):
        source = disk.find("source")
        path = None
        if source is not None:
            path = source.get("file") or source.get("dev") or None
        driver = disk.find("driver")
        target = disk.find("target")
        disks.append(DomainDisk(
            target.get("dev", "") if target is not None else "", disk.get("type", ""),
            disk.get("device", "disk"), driver.get("type", "") if driver is not None else "",
            path))
    return tuple(disks)


@dataclass(frozen=True, slots=True)
class DiskRef:
    """One path a domain's XML names for a disk (its source, a mirror, a backing store)."""

    who: str
    """"domain NAME (UUID) disk TARGET"."""
    path: str | None
    """A local file or block device; None when it could not be resolved."""
    why: str | None = None
    """Why `path` is None: the disk names something this source cannot locate."""
    label: str = ""
    """What `path` stands for when it is not a plain path: "pool/volume"."""


VolumeResolver = Callable[[str, str], str]
"""(pool, volume) -> path; raises LookupError with a one-line reason."""


def _source_path(elem: ET.Element, kind: str, resolve: VolumeResolver
                 ) -> tuple[str | None, str | None, str]:
    """(path, why-unresolved, label) for a `<source>` of a disk of type `kind`; (None,
    None, "") when the type has no local file at all (network, dir, nvme...)."""
    if kind in ("file", "block"):
        path = elem.get("file" if kind == "file" else "dev")
        return path or None, None, ""
    if kind == "volume":
        pool, volume = elem.get("pool"), elem.get("volume")
        label = f"{pool}/{volume}"
        if not pool or not volume:
            return None, "volume without pool or name", label
        try:
            return resolve(pool, volume), None, label
        except LookupError as exc:
            return None, f"volume does not resolve: {exc}", label
    return None, None, ""


def disk_refs(xml: str, domain: str, resolve: VolumeResolver) -> Iterator[DiskRef]:
    """Every local path a domain's XML names for its disks, kernel and initrd."""
    root = ET.fromstring(xml)
    for os_elem in root.findall("os"):
        for tag in ("kernel", "initrd"):
            for elem in os_elem.findall(tag):
                if elem.text and elem.text.strip():
                    yield DiskRef(f"{domain} {tag}", elem.text.strip())
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        dev = target.get("dev", "?") if target is not None else "?"
        who = f"{domain} disk {dev}"
        yield from _refs_of(disk, who, resolve)
        for mirror in disk.findall("mirror"):  # a block copy under way (live snapshot)
            file = mirror.get("file")  # the old, attribute-only form
            if file:
                yield DiskRef(f"{who} mirror", file)
            else:
                yield from _refs_of(mirror, f"{who} mirror", resolve)


def _refs_of(elem: ET.Element, who: str, resolve: VolumeResolver) -> Iterator[DiskRef]:
    """The source of a disk or mirror, then each `<backingStore>` below it, nearest first."""
    current: ET.Element | None = elem
    while current is not None:
        source = current.find("source")
        if source is not None:
            path, why, label = _source_path(source, current.get("type", "file"), resolve)
            if path is not None or why is not None:
                yield DiskRef(who, path, why, label)
        current = current.find("backingStore")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class LibvirtDomains:
    """Usage source "libvirt": the disks of every domain libvirt has defined."""

    name = SOURCE

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def collect(self, inventory: Inventory) -> DomainsResult:
        try:
            import libvirt
        except ImportError as exc:
            return DomainsResult(
                SOURCE, error=f"libvirt-python is not installed ({_one_line(exc)})")
        # libvirt's default handler prints every error on stderr; ours come as exceptions
        libvirt.registerErrorHandler(_quiet, None)
        try:
            conn = libvirt.openReadOnly(self.uri)
        except libvirt.libvirtError as exc:
            return DomainsResult(SOURCE, error=f"cannot connect to {self.uri}: {_one_line(exc)}")
        try:
            return self._collect(libvirt, conn, inventory)
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def _collect(self, lv: Any, conn: Any, inventory: Inventory) -> DomainsResult:
        """The walk over one open connection; `lv` is the libvirt module."""
        try:
            domains = conn.listAllDomains(0)
        except lv.libvirtError as exc:
            return DomainsResult(SOURCE, error=f"cannot list domains at {self.uri}: "
                                 f"{_one_line(exc)}")

        def resolve(pool: str, volume: str) -> str:
            try:
                path = conn.storagePoolLookupByName(pool).storageVolLookupByName(volume).path()
            except lv.libvirtError as exc:  # a pool not running, a volume deleted
                raise LookupError(_one_line(exc)) from None
            if not path:
                raise LookupError("volume has no path")
            return str(path)

        wanted = cache_file_ids(inventory)
        prober = CachedProber()
        by_file: dict[FileId, dict[str, Sighting]] = {}
        unreadable: dict[tuple[str, str], None] = {}
        seen = 0
        described: list[Domain] = []
        for dom in domains:
            try:
                refs, live = self._domain_refs(lv, dom, resolve)
            except lv.libvirtError as exc:
                if exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                    continue  # undefined since it was listed: it uses nothing now
                return DomainsResult(SOURCE, error=f"cannot read the XML of a domain at "
                                     f"{self.uri}: {_one_line(exc)}")
            except ET.ParseError as exc:
                return DomainsResult(SOURCE, error=f"unparsable domain XML at {self.uri}: "
                                     f"{exc}")
            seen += 1
            described.append(live)
            for ref in refs:
                for file_id in self._chain_ids(ref, prober, unreadable):
                    if file_id in wanted:
                        by_file.setdefault(file_id, {})[ref.who] = Sighting(SOURCE, ref.who)
        return DomainsResult(
            SOURCE,
            by_file={key: tuple(s.values()) for key, s in by_file.items()},
            seen=seen,
            domains=tuple(described),
            unreadable=tuple(unreadable),
        )

    @staticmethod
    def _domain_refs(lv: Any, dom: Any, resolve: VolumeResolver
                     ) -> tuple[list[DiskRef], Domain]:
        """The disks of the live definition and of the persistent one (the next boot's),
        without repeats: a running domain may have had a disk changed in either. And the
        domain as nova's disk accounting reads it (the live definition's disks)."""
        name, uuid = dom.name(), dom.UUIDString()
        domain = f"domain {name} ({uuid})"
        xmls = [dom.XMLDesc(0)]
        if dom.isActive() and dom.isPersistent():
            xmls.append(dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE))
        refs: dict[DiskRef, None] = {}
        for xml in xmls:
            for ref in disk_refs(xml, domain, resolve):
                refs[ref] = None
        return list(refs), Domain(uuid, name, domain_disks(xmls[0]))

    @staticmethod
    def _chain_ids(ref: DiskRef, prober: CachedProber,
                   unreadable: dict[tuple[str, str], None]) -> list[FileId]:
        """(dev, ino) of the file at `ref.path` and of every file its chain reaches; what
        could not be read goes to `unreadable`."""
        if ref.path is None:
            unreadable[(ref.label, f"{ref.who}: {ref.why}")] = None
            return []
        if not os.path.isabs(ref.path):
            unreadable[(ref.path, f"{ref.who}: not an absolute path")] = None
            return []
        try:
            info = prober(ref.path)
        except ProbeError as exc:
            unreadable[(ref.path, f"{ref.who}: {exc.detail}")] = None
            return []
        except ValueError as exc:  # an embedded NUL
            unreadable[(ref.path, f"{ref.who}: {exc}")] = None
            return []
        chain = follow(info, prober)
        ids = [(info.dev, info.ino)] + [(link.dev, link.ino) for link in chain.links]
        if not chain.complete:
            assert chain.broken is not None and chain.broken_at is not None
            why = f"{ref.who}: {chain.broken}: {chain.broken_at}"
            if chain.detail and chain.broken is not Break.MISSING:
                why += f" ({chain.detail})"
            unreadable[(chain.broken_at, why)] = None
        return ids


def _quiet(_ctx: object, _err: object) -> None:
    """An error handler that prints nothing: errors reach us as libvirtError."""
