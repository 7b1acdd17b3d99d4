"""The libvirt source against libvirt's own test driver (`test:///abs/path/node.xml`):
domains running and shut off whose disks are real qcow2 files made by qemu-img, inside
and outside instances_path, through pools, chains and `<backingStore>` elements."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cache"))  # the Node builder
from _tree import MiB, Node

from conftest import make_qcow2, make_raw
from novakeeper.cache.inventory import Inventory
from novakeeper.usage.base import FileId, SourceResult
from novakeeper.usage.libvirt import DiskRef, DomainsResult, LibvirtDomains, disk_refs


@pytest.fixture
def lv() -> ModuleType:
    return pytest.importorskip("libvirt")


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def uuid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def file_id(path: str | os.PathLike[str]) -> FileId:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def whos_by_name(result: SourceResult, inventory: Inventory) -> dict[str, list[str]]:
    """Cache file name -> sorted sightings; fails on an id that is no cache file."""
    names = {(b.dev, b.ino): b.name for b in inventory.bases}
    assert set(result.by_file) <= set(names)
    return {names[key]: sorted(s.who for s in seen) for key, seen in result.by_file.items()}


# -- the node file --------------------------------------------------------------------


def file_disk(dev: str, path: str | os.PathLike[str], backing: str = "") -> str:
    return (f"<disk type='file' device='disk'><source file={quoteattr(str(path))}/>"
            f"{backing}<target dev='{dev}'/></disk>")


def block_disk(dev: str, path: str | os.PathLike[str]) -> str:
    return (f"<disk type='block' device='disk'><source dev={quoteattr(str(path))}/>"
            f"<target dev='{dev}'/></disk>")


def volume_disk(dev: str, pool: str, volume: str) -> str:
    return (f"<disk type='volume' device='disk'><source pool='{pool}' volume='{volume}'/>"
            f"<target dev='{dev}'/></disk>")


def backing_store(path: str | os.PathLike[str]) -> str:
    return (f"<backingStore type='file'><format type='raw'/>"
            f"<source file={quoteattr(str(path))}/><backingStore/></backingStore>")


NETWORK_DISK = ("<disk type='network' device='disk'><source protocol='rbd' name='vms/x'>"
                "<host name='127.0.0.1' port='6789'/></source><target dev='vdy'/></disk>")
EMPTY_CDROM = "<disk type='file' device='cdrom'><target dev='hdc'/><readonly/></disk>"


def domain(name: str, n: int, disks: list[str], running: bool = True,
           kernel: str | os.PathLike[str] | None = None) -> str:
    kernel_xml = f"<kernel>{escape(str(kernel))}</kernel>" if kernel else ""
    state = "" if running else "<test:runstate>5</test:runstate>"  # 5: shut off
    return (f"<domain type='test'><name>{name}</name><uuid>{uuid(n)}</uuid>"
            f"<memory>65536</memory><os><type>hvm</type>{kernel_xml}</os>"
            f"<devices>{''.join(disks)}</devices>{state}</domain>")


def dir_pool(name: str, path: Path, volumes: list[str]) -> str:
    vols = "".join(f"<volume type='file'><name>{v}</name><capacity>1048576</capacity>"
                   f"</volume>" for v in volumes)
    return (f"<pool type='dir'><name>{name}</name><uuid>{uuid(900)}</uuid>"
            f"<capacity>1073741824</capacity><allocation>0</allocation>"
            f"<available>1073741824</available><target><path>{escape(str(path))}</path>"
            f"</target>{vols}</pool>")


def node_xml(path: Path, *items: str) -> str:
    path.write_text("<?xml version='1.0'?>\n<node xmlns:test="
                    "'http://libvirt.org/schemas/domain/test/1.0'>"
                    + "".join(items) + "</node>\n")
    return f"test://{path}"


def collect(uri: str, inventory: Inventory) -> DomainsResult:
    result = LibvirtDomains(uri).collect(inventory)
    assert result.source == "libvirt"
    return result


# -- a node with everything ---------------------------------------------------------


class Host:
    """A compute node and the libvirt domains of one node file, with what they use."""

    def __init__(self, root: Path, node: Node) -> None:
        self.node = node
        out = root / "elsewhere"
        c = node.cache

        # instance-00000001, running: its disk in instances_path, the scanner's usual case
        self.a = node.original("instance-disk", size=MiB)
        inst1 = node.folder()
        node.disk(inst1, self.a)
        # hand-made, running: two overlays outside instances_path on the same base
        self.b = node.original("hand-made", size=MiB)
        hand1 = make_qcow2(out / "hand1.qcow2", self.b, size="1G")
        hand2 = make_qcow2(out / "hand2.qcow2", self.b, size="1G")
        # instance-00000002, rescued (running): disk.rescue outside, its own disk inside
        self.rescue = node.original("rescue-image", size=MiB)
        self.d = node.original("rescued-root", size=MiB)
        inst2 = node.folder()
        node.disk(inst2, self.d)
        rescue = make_qcow2(out / "rescue" / "disk.rescue", self.rescue, size="1G")
        # deep, shut off: overlay outside -> qcow2 cache file -> raw cache file
        self.e = node.original("deep", size=MiB)
        self.e_resized = node.qcow2_base(self.e.name + "_2147483648", str(self.e))
        top = make_qcow2(out / "deep" / "top.qcow2", self.e_resized, backing_fmt="qcow2",
                         size="2G")
        # xml-chain, running: a raw disk whose chain only the <backingStore> tells
        self.f = node.original("backing-store", size=MiB)
        plain = make_raw(out / "plain.raw", MiB)
        # vol-user, shut off: a pool volume backed by a base; block-dev: a block disk
        self.g = node.original("volume", size=MiB)
        pool = out / "pool"
        make_qcow2(pool / "vol.qcow2", self.g, size="1G")
        self.h = node.original("block", size=MiB)
        blk = make_qcow2(out / "blk.qcow2", self.h, size="1G")
        # direct, shut off: a cache file used as a disk itself, and as a kernel
        self.k = node.original("kernel", size=MiB)
        self.direct = node.original("direct", size=MiB)
        # broken, shut off: nothing to read behind these
        gone = out / "gone.qcow2"
        self.lost_backing = out / "lost-backing.raw"
        orphan = make_qcow2(out / "orphan.qcow2", self.lost_backing, size="1G",
                            extra_args=["-u"])
        a_dir = out / "a-folder"
        a_dir.mkdir()
        self.unused = node.original("unused", size=MiB)
        self.inventory = node.scan()

        self.paths = {"gone": gone, "orphan": orphan, "dir": a_dir}
        self.uri = node_xml(
            root / "node.xml",
            domain("instance-00000001", 1, [file_disk("vda", inst1 / "disk")]),
            domain("hand-made", 2, [file_disk("vda", hand1), file_disk("vdb", hand2),
                                    NETWORK_DISK, EMPTY_CDROM]),
            domain("instance-00000002", 3, [file_disk("vda", rescue),
                                            file_disk("vdb", inst2 / "disk")]),
            domain("deep", 4, [file_disk("vda", top)], running=False),
            domain("xml-chain", 5, [file_disk("vda", plain, backing_store(self.f))]),
            domain("vol-user", 6, [volume_disk("vda", "images", "vol.qcow2")],
                   running=False),
            domain("block-dev", 7, [block_disk("vda", blk)]),
            domain("direct", 8, [file_disk("vda", c / self.direct.name)], running=False,
                   kernel=c / self.k.name),
            domain("broken", 9, [file_disk("vda", gone), file_disk("vdb", orphan),
                                 volume_disk("vdc", "images", "nope.qcow2"),
                                 file_disk("vdd", a_dir)], running=False),
            dir_pool("images", pool, ["vol.qcow2"]),
        )


def who(name: str, n: int, what: str) -> str:
    return f"domain {name} ({uuid(n)}) {what}"


def test_every_disk_of_every_domain_protects_its_whole_chain(lv, node, tmp_path):
    host = Host(tmp_path, node)

    result = collect(host.uri, host.inventory)

    assert result.error is None
    assert result.seen == 9
    assert whos_by_name(result, host.inventory) == {
        host.a.name: [who("instance-00000001", 1, "disk vda")],
        host.b.name: [who("hand-made", 2, "disk vda"), who("hand-made", 2, "disk vdb")],
        host.rescue.name: [who("instance-00000002", 3, "disk vda")],
        host.d.name: [who("instance-00000002", 3, "disk vdb")],
        host.e.name: [who("deep", 4, "disk vda")],
        host.e_resized.name: [who("deep", 4, "disk vda")],
        host.f.name: [who("xml-chain", 5, "disk vda")],
        host.g.name: [who("vol-user", 6, "disk vda")],
        host.h.name: [who("block-dev", 7, "disk vda")],
        host.direct.name: [who("direct", 8, "disk vda")],
        host.k.name: [who("direct", 8, "kernel")],
    }
    assert file_id(host.unused) not in result.by_file


def test_disks_that_cannot_be_read_are_returned_as_doubt(lv, node, tmp_path):
    host = Host(tmp_path, node)

    result = collect(host.uri, host.inventory)

    broken = who("broken", 9, "disk")
    assert sorted(result.unreadable) == sorted([
        (str(host.paths["gone"]), f"{broken} vda: no such file"),
        (str(host.lost_backing),
         f"{broken} vdb: backing file missing: {host.lost_backing}"),
        ("images/nope.qcow2", f"{broken} vdc: volume does not resolve: "
                              + _no_volume_message(lv, host.uri)),
        (str(host.paths["dir"]), f"{broken} vdd: not a regular file"),
    ])


def _no_volume_message(lv: Any, uri: str) -> str:
    """libvirt's own words for a missing volume, in this libvirt version."""
    conn = lv.openReadOnly(uri)
    try:
        conn.storagePoolLookupByName("images").storageVolLookupByName("nope.qcow2")
    except lv.libvirtError as exc:
        return str(exc).splitlines()[0]
    finally:
        conn.close()
    raise AssertionError("the volume exists")


def test_a_domain_without_disks_and_an_empty_host(lv, node, tmp_path):
    node.original("unused", size=MiB)
    inventory = node.scan()
    uri = node_xml(tmp_path / "node.xml", domain("diskless", 1, [], running=False))

    result = collect(uri, inventory)

    assert (result.error, result.seen, dict(result.by_file), result.unreadable) == (
        None, 1, {}, ())


@pytest.fixture
def default_conn(lv: Any) -> Iterator[Any]:
    """A read-write connection to test:///default, whose state every connection of this
    process shares while one stays open; our domains are removed afterwards."""
    conn = lv.open("test:///default")
    yield conn
    for dom in conn.listAllDomains(0):
        if dom.name().startswith("nk-"):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    conn.close()


def test_a_running_domain_protects_its_live_and_its_next_boot_disks(default_conn, node,
                                                                    tmp_path):
    """A disk changed in the persistent definition (`virsh attach-disk --config`, an edit)
    is used at the next boot; the one qemu has open now is used until then."""
    live = node.original("live", size=MiB)
    next_boot = node.original("next-boot", size=MiB)
    live_disk = make_qcow2(tmp_path / "live.qcow2", live, size="1G")
    next_disk = make_qcow2(tmp_path / "next.qcow2", next_boot, size="1G")
    inventory = node.scan()

    def xml(disk: Path) -> str:
        return domain("nk-changed", 77, [file_disk("vda", disk)])

    dom = default_conn.defineXML(xml(live_disk))
    dom.create()
    default_conn.defineXML(xml(next_disk))  # changes the persistent definition only

    result = collect("test:///default", inventory)

    assert result.error is None
    assert whos_by_name(result, inventory) == {
        live.name: [who("nk-changed", 77, "disk vda")],
        next_boot.name: [who("nk-changed", 77, "disk vda")],
    }


@pytest.mark.parametrize("uri", ["test:///no/such/node.xml", "nosuchdriver:///system"])
def test_a_connection_that_fails_is_an_error_not_an_exception(lv, node, uri):
    inventory = node.scan()

    result = collect(uri, inventory)

    assert result.error is not None
    assert result.error.startswith(f"cannot connect to {uri}: ")
    assert "\n" not in result.error
    assert result.by_file == {}


def test_without_libvirt_python_the_source_is_an_error(node, monkeypatch):
    monkeypatch.setitem(sys.modules, "libvirt", None)  # makes `import libvirt` fail
    inventory = node.scan()

    result = collect("qemu:///system", inventory)

    assert result.error is not None and "libvirt-python is not installed" in result.error


# -- the XML reading alone ----------------------------------------------------------


def test_disk_refs_reads_mirrors_backing_stores_and_skips_what_has_no_local_file():
    xml = """<domain><os><kernel>/k</kernel></os><devices>
      <disk type='file'><source file='/a'/>
        <backingStore type='block'><source dev='/dev/b'/>
          <backingStore type='file'><source file='/c'/><backingStore/></backingStore>
        </backingStore>
        <mirror type='file' file='/m-old'/>
        <target dev='vda'/></disk>
      <disk type='file'><source file='/x'/><mirror type='file'><source file='/m-new'/>
        </mirror><target dev='vdb'/></disk>
      <disk type='network'><source protocol='nbd' name='n'/><target dev='vdc'/></disk>
      <disk type='dir'><source dir='/d'/><target dev='vdd'/></disk>
      <disk type='volume'><source pool='p' volume='v'/><target dev='vde'/></disk>
      <disk type='volume'><source pool='p' volume='gone'/><target dev='vdf'/></disk>
      <disk type='file'><target dev='hdc'/></disk>
    </devices></domain>"""

    def resolve(pool: str, volume: str) -> str:
        if volume == "gone":
            raise LookupError("no storage vol with matching name 'gone'")
        return f"/pools/{pool}/{volume}"

    refs = list(disk_refs(xml, "domain d (u)", resolve))

    assert refs == [
        DiskRef("domain d (u) kernel", "/k"),
        DiskRef("domain d (u) disk vda", "/a"),
        DiskRef("domain d (u) disk vda", "/dev/b"),
        DiskRef("domain d (u) disk vda", "/c"),
        DiskRef("domain d (u) disk vda mirror", "/m-old"),
        DiskRef("domain d (u) disk vdb", "/x"),
        DiskRef("domain d (u) disk vdb mirror", "/m-new"),
        DiskRef("domain d (u) disk vde", "/pools/p/v", None, "p/v"),
        DiskRef("domain d (u) disk vdf", None,
                "volume does not resolve: no storage vol with matching name 'gone'", "p/gone"),
    ]
