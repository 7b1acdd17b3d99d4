"""Runs nova 34.0.0's own disk accounting on a sandbox node (run by the nova venv's python).

tests/disk/_nova.py runs this script with the python of the virtualenv `.ci/nova-setup`
makes. Its one argument is a JSON file:

    {"instances_path": "/.../instances",
     "domains": [{"uuid": "...", "name": "instance-00000001", "running": true,
                  "disks": [{"type": "file", "device": "disk", "path": "/.../disk",
                             "format": "qcow2", "target": "vda"}, ...]}, ...]}

For each domain it writes the domain XML libvirt's `virsh dumpxml` would give for a
nova instance (disk as `<disk type="file" device="disk"><driver name="qemu"
type="qcow2" cache="none"/><source file="..."/><target dev="vda" bus="virtio"/></disk>`,
the config drive a raw cdrom, a network disk an `rbd` source, a block disk a `dev`
source), in `libvirt-qemu/<name>.xml` next to the JSON file. Then nova's code does the
work, unchanged: `LibvirtDriver.get_available_resource` (unbound, on a driver object
built without `__init__`, which needs the libvirt module) with `CONF.instances_path`
set, so `_get_local_gb_info` -> `libvirt_utils.get_fs_info` (statvfs),
`_get_disk_over_committed_size_total` over nova's real `Host.list_instance_domains
(only_running=False)`, `libvirt_guest.Guest(dom).get_config()` (nova's vconfig parses
the XML) and `_get_instance_disk_info_from_config` (the real `qemu-img info`, under
oslo.concurrency's prlimit, for qcow2; `os.stat` for any other file disk).

Stand-ins, for what is not disk: the libvirt module (`libvirtError` and the two
listAllDomains flags: nova's except clauses name `libvirt.libvirtError`, and the venv
has no libvirt-python), a connection whose `listAllDomains` gives domain objects that
serve the XML (`XMLDesc`, `UUIDString`, `name`, `ID`), the host's memory, version and
name, and the driver's capabilities, vcpus, cpu info, pci devices, numa and uptime;
`objects.InstanceList.get_by_filters` and `objects.BlockDeviceMappingList.
bdms_by_instance_uuid` answer without a database: no instance records, no BDMs (so no
disk is taken for a volume by its target, and a block disk is skipped as nova does when
it has no block_device_info).

Prints one JSON line on stdout: nova's figures (`disk_available_least` as nova's float
and as the ComputeNode object stores it, through its own IntegerField; `local_gb`,
`local_gb_used` likewise), the total of `_get_disk_over_committed_size_total()`, and per
domain what `_get_instance_disk_info_from_config` returns for it (or, where it raises,
the exception: nova's total then counts that whole domain as 0, or lets it through).
When nova's `get_available_resource` itself raises, the line is `{"raised": {...}}` and
the exit status 3. Bad input: exit status 2 and a one-line message on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import types
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

DISK_TYPES = ("file", "block", "network")
DEVICES = ("disk", "cdrom")


class BadInput(Exception):
    """The JSON input is not what this script takes."""


# -- the domain XML, as libvirt gives it back -------------------------------------------


def disk_element(disk: dict[str, Any], index: int, running: bool) -> ET.Element:
    """One `<disk>` as libvirt describes a disk nova defined."""
    kind, device = disk["type"], disk.get("device", "disk")
    if kind not in DISK_TYPES:
        raise BadInput(f"disk type {kind!r}: expected one of {', '.join(DISK_TYPES)}")
    if device not in DEVICES:
        raise BadInput(f"disk device {device!r}: expected one of {', '.join(DEVICES)}")
    target = disk["target"]
    bus = disk.get("bus") or ("sata" if device == "cdrom" else "virtio")
    element = ET.Element("disk", type=kind, device=device)
    driver = {"name": "qemu", "type": disk.get("format", "raw"), "cache": "none"}
    if kind == "file" and device == "disk":
        driver["discard"] = "ignore"
    ET.SubElement(element, "driver", driver)
    if kind == "file":
        ET.SubElement(element, "source", file=disk["path"])
    elif kind == "block":
        ET.SubElement(element, "source", dev=disk["path"])
    else:
        source = ET.SubElement(element, "source", protocol="rbd", name=disk["path"])
        ET.SubElement(source, "host", name="192.0.2.10", port="6789")
    ET.SubElement(element, "target", dev=target, bus=bus)
    if device == "cdrom":
        ET.SubElement(element, "readonly")
    if running:
        ET.SubElement(element, "alias", name=f"{bus}-disk{index}")
    if bus == "virtio":
        ET.SubElement(element, "address", type="pci", domain="0x0000", bus=f"0x{index + 3:02x}",
                      slot="0x00", function="0x0")
    else:
        ET.SubElement(element, "address", type="drive", controller="0", bus="0",
                      target="0", unit=str(index))
    return element


def domain_xml(domain: dict[str, Any], domain_id: int) -> str:
    """The whole `<domain>`: what `virsh dumpxml` shows for a nova instance (running: with
    its id and aliases)."""
    running = bool(domain.get("running", True))
    root = ET.Element("domain", type="kvm")
    if running:
        root.set("id", str(domain_id))
    ET.SubElement(root, "name").text = domain["name"]
    ET.SubElement(root, "uuid").text = domain["uuid"]
    metadata = ET.SubElement(root, "metadata")
    nova = ET.SubElement(metadata, "nova:instance", {
        "xmlns:nova": "http://openstack.org/xmlns/libvirt/nova/1.1"})
    ET.SubElement(nova, "nova:package", version="34.0.0")
    ET.SubElement(nova, "nova:name").text = domain["name"]
    ET.SubElement(root, "memory", unit="KiB").text = "524288"
    ET.SubElement(root, "currentMemory", unit="KiB").text = "524288"
    ET.SubElement(root, "vcpu", placement="static").text = "1"
    os_element = ET.SubElement(root, "os")
    ET.SubElement(os_element, "type", arch="x86_64", machine="pc-q35-7.2").text = "hvm"
    ET.SubElement(os_element, "boot", dev="hd")
    ET.SubElement(root, "on_poweroff").text = "destroy"
    ET.SubElement(root, "on_reboot").text = "restart"
    ET.SubElement(root, "on_crash").text = "destroy"
    devices = ET.SubElement(root, "devices")
    ET.SubElement(devices, "emulator").text = "/usr/bin/qemu-system-x86_64"
    for index, disk in enumerate(domain["disks"]):
        devices.append(disk_element(disk, index, running))
    interface = ET.SubElement(devices, "interface", type="ethernet")
    ET.SubElement(interface, "mac", address="fa:16:3e:00:00:01")
    ET.SubElement(interface, "model", type="virtio")
    ET.SubElement(interface, "target", dev="tap00000000-01")
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "log", file=os.path.join(
        os.path.dirname(domain["disks"][0]["path"]) if domain["disks"] else "/",
        "console.log"), append="off")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


@dataclass
class Domain:
    """A libvirt virDomain as nova uses it here: its XML, uuid, name and id."""

    xml: str
    uuid: str
    domain_name: str
    domain_id: int

    def XMLDesc(self, flags: int = 0) -> str:
        return self.xml

    def UUIDString(self) -> str:
        return self.uuid

    def name(self) -> str:
        return self.domain_name

    def ID(self) -> int:
        return self.domain_id


def read_input(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("instances_path"), str):
        raise BadInput(f"{path}: expected an object with instances_path and domains")
    domains = data.get("domains")
    if not isinstance(domains, list) or not all(
            isinstance(d, dict) and {"uuid", "name", "disks"} <= d.keys() for d in domains):
        raise BadInput(f"{path}: domains must be a list of {{uuid, name, running, disks}}")
    if not os.path.isdir(data["instances_path"]):
        raise BadInput(f"instances_path {data['instances_path']} is not a folder")
    return data


def write_domains(data: dict[str, Any], folder: str) -> list[Domain]:
    """Each domain's XML in `folder` (as /etc/libvirt/qemu holds them), and its object."""
    os.makedirs(folder, exist_ok=True)
    out = []
    for number, domain in enumerate(data["domains"], start=1):
        running = bool(domain.get("running", True))
        xml = domain_xml(domain, number)
        with open(os.path.join(folder, f"{domain['name']}.xml"), "w", encoding="utf-8") as f:
            f.write(xml)
        out.append(Domain(xml, domain["uuid"], domain["name"], number if running else -1))
    return out


# -- nova -------------------------------------------------------------------------------


def raised(exc: BaseException) -> dict[str, Any]:
    kind = type(exc)
    return {"type": f"{kind.__module__}.{kind.__qualname__}", "message": str(exc),
            "errno": getattr(exc, "errno", None),
            "traceback": "".join(traceback.format_exception(exc))[-4000:]}


def stand_in_libvirt() -> types.ModuleType:
    """The few names of the libvirt module nova's code on this path reads."""
    module = types.ModuleType("libvirt")

    class libvirtError(Exception):
        def get_error_code(self) -> int:
            return 1

    module.libvirtError = libvirtError  # type: ignore[attr-defined]
    module.VIR_CONNECT_LIST_DOMAINS_ACTIVE = 1  # type: ignore[attr-defined]
    module.VIR_CONNECT_LIST_DOMAINS_INACTIVE = 2  # type: ignore[attr-defined]
    return module


def run_nova(instances_path: str, domains: list[Domain]) -> dict[str, Any]:
    import nova.conf
    from nova import objects
    from nova.virt.libvirt import driver as libvirt_driver
    from nova.virt.libvirt import guest as libvirt_guest
    from nova.virt.libvirt import host as libvirt_host

    conf = nova.conf.CONF
    conf([], project="nova", default_config_files=[], default_config_dirs=[])
    conf.set_override("instances_path", instances_path)
    conf.set_override("state_path", os.path.dirname(instances_path))
    objects.register_all()

    libvirt = stand_in_libvirt()
    for module in (libvirt_driver, libvirt_guest, libvirt_host):
        module.libvirt = libvirt

    class Connection:
        """listAllDomains with nova's flags: active only, or active and inactive."""

        def listAllDomains(self, flags: int = 0) -> list[Domain]:
            inactive = bool(flags & libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE)
            return [d for d in domains if inactive or d.domain_id > 0]

    # nova's Host, without __init__ (it opens a libvirt connection)
    host = libvirt_host.Host.__new__(libvirt_host.Host)
    connection = Connection()
    host._get_connection = lambda: connection
    host._wrap_libvirt_proxy = lambda obj: obj  # eventlet's tpool proxy: no libvirt here
    host.get_memory_mb_total = lambda: 16384
    host.get_memory_mb_used = lambda: 2048
    host.get_driver_type = lambda: "QEMU"
    host.get_version = lambda: 9000000
    host.get_hostname = lambda: "sandbox"
    host.get_node_uuid = lambda: "7e3c05a1-5d3f-4f4e-9a28-000000000001"

    driver = libvirt_driver.LibvirtDriver.__new__(libvirt_driver.LibvirtDriver)
    driver._host = host
    driver._get_instance_capabilities = lambda: [("x86_64", "kvm", "hvm")]
    driver._get_vcpu_available = lambda: {0, 1}
    driver._get_vcpu_used = lambda: len(domains)
    driver._get_cpu_info = lambda: {"arch": "x86_64"}
    driver._get_pci_passthrough_devices = lambda: "[]"
    driver._get_host_numa_topology = lambda: None
    driver.get_host_uptime = lambda: " 17:00:00 up 1 day"

    # no database: nova's records of these instances have no block device mappings
    objects.InstanceList.get_by_filters = classmethod(
        lambda cls, ctx, filters, **kw: objects.InstanceList(objects=[]))
    objects.BlockDeviceMappingList.bdms_by_instance_uuid = classmethod(
        lambda cls, ctx, uuids: {})

    LibvirtDriver = libvirt_driver.LibvirtDriver
    per_domain = []
    for dom in domains:
        entry: dict[str, Any] = {"uuid": dom.uuid, "name": dom.domain_name}
        try:
            config = libvirt_guest.Guest(dom).get_config()
            entry["disks"] = LibvirtDriver._get_instance_disk_info_from_config(
                driver, config, None)
        except Exception as exc:
            entry["disks"] = None
            entry["raised"] = raised(exc)
        per_domain.append(entry)

    try:
        resources = LibvirtDriver.get_available_resource(driver, "sandbox")
    except Exception as exc:
        return {"raised": raised(exc), "domains": per_domain}
    over_commit = LibvirtDriver._get_disk_over_committed_size_total(driver)
    # what the resource tracker stores: ComputeNode's IntegerFields coerce the floats
    node = objects.ComputeNode(disk_available_least=resources["disk_available_least"],
                               local_gb=resources["local_gb"],
                               local_gb_used=resources["local_gb_used"])
    return {
        "disk_available_least": resources["disk_available_least"],
        "disk_available_least_int": node.disk_available_least,
        "local_gb": resources["local_gb"],
        "local_gb_int": node.local_gb,
        "local_gb_used": resources["local_gb_used"],
        "local_gb_used_int": node.local_gb_used,
        "local_gb_info": LibvirtDriver._get_local_gb_info(),
        "over_committed_size_total": over_commit,
        "domains": per_domain,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: nova_resources.py INPUT.json", file=sys.stderr)
        return 2
    try:
        data = read_input(argv[1])
        folder = os.path.join(os.path.dirname(os.path.abspath(argv[1])), "libvirt-qemu")
        domains = write_domains(data, folder)
    except (BadInput, KeyError, TypeError) as exc:
        what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        print(f"nova_resources.py: {what}", file=sys.stderr)
        return 2
    result = run_nova(os.path.abspath(data["instances_path"]), domains)
    result["xml_folder"] = folder
    sys.stdout.write(json.dumps(result) + "\n")
    return 3 if "raised" in result else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
