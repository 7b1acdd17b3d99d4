"""Realistic OpenStack log sets for the log tests and for bench/logs.py.

A controller (nova-api, -scheduler, -conductor, neutron-server, glance-api, placement-api,
keystone, cinder-volume) and compute hosts write oslo.log files the way the services do:
request contexts (`[None req-X user project - default default]`, `[req-GLOBAL req-LOCAL
...]` where a service was called with a global request id), periodic tasks, tracebacks in
both oslo.log styles (each line prefixed, or bare continuation lines), requests
interleaved in time. neutron-server writes ISO 8601 timestamps; compute2 logs in local
time, one hour ahead of UTC. Files are rotated as logrotate leaves them: `.log.2.gz`
(oldest third), `.log.1`, `.log`.

Scenarios (what `trace` must find) are written among background traffic:

* `ok`: a boot that works, across api, conductor, scheduler, placement, neutron, glance and
  the compute host;
* `disk_full`: a boot that fails on compute2 converting its `_base` file (traceback);
* `no_valid_host`: the scheduler's ComputeCapabilitiesFilter removes every host;
* `api_only`: the API accepted a boot, nothing downstream ever saw it (message queue?);
* `hung`: conductor cast the build to compute3, whose log had stopped 40 minutes before.
"""

from __future__ import annotations

import gzip
import heapq
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import IO

PLUS_ONE = timezone(timedelta(hours=1))
START = datetime(2026, 11, 20, 8, 0, 0, tzinfo=UTC)
PY = "/usr/lib/python3/dist-packages"


@dataclass(frozen=True)
class Service:
    host: str
    project: str
    name: str  # file name without .log
    iso: bool = False  # ISO 8601 timestamps with offset
    tz: timezone = UTC  # naive timestamps written in this zone
    pid: int = 1000

    @property
    def rel(self) -> str:
        return f"{self.host}/{self.project}/{self.name}.log"


API = Service("controller", "nova", "nova-api", pid=2101)
SCHED = Service("controller", "nova", "nova-scheduler", pid=2202)
COND = Service("controller", "nova", "nova-conductor", pid=2303)
NEUTRON = Service("controller", "neutron", "neutron-server", iso=True, pid=3101)
GLANCE = Service("controller", "glance", "glance-api", pid=3202)
PLACEMENT = Service("controller", "placement", "placement-api", pid=3303)
KEYSTONE = Service("controller", "keystone", "keystone", pid=3404)
CINDER = Service("controller", "cinder", "cinder-volume", pid=3505)
COMPUTE1 = Service("compute1", "nova", "nova-compute", pid=4101)
COMPUTE2 = Service("compute2", "nova", "nova-compute", tz=PLUS_ONE, pid=4202)
COMPUTE3 = Service("compute3", "nova", "nova-compute", pid=4303)
SERVICES = (API, SCHED, COND, NEUTRON, GLANCE, PLACEMENT, KEYSTONE, CINDER, COMPUTE1,
            COMPUTE2, COMPUTE3)
COMPUTES = (COMPUTE1, COMPUTE2, COMPUTE3)


class Ids:
    """Deterministic uuids and request ids from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def uuid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"

    def req(self) -> str:
        return "req-" + self.uuid()

    def hex32(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"


def stamp(when: datetime, svc: Service) -> str:
    if svc.iso:
        return when.astimezone(UTC).isoformat(timespec="microseconds")
    local = when.astimezone(svc.tz)
    return local.strftime("%Y-%m-%d %H:%M:%S.") + f"{local.microsecond // 1000:03d}"


def apache(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%d/%b/%Y %H:%M:%S")


def ctx(req: str | None, user: str = "-", project: str = "-", glob: str | None = None) -> str:
    if req is None:
        return "[-]"
    return f"[{glob or 'None'} {req} {user} {project} - default default]"


def line(when: datetime, svc: Service, level: str, logger: str, context: str, msg: str,
         pid: int | None = None) -> str:
    return f"{stamp(when, svc)} {pid or svc.pid} {level} {logger} {context} {msg}"


def traceback_lines(when: datetime, svc: Service, logger: str, instance: str | None,
                    frames: list[tuple[str, int, str, str]], error: str,
                    style: str = "ERROR") -> list[str]:
    """oslo.log's exception output: every line carries logging_exception_prefix."""
    prefix = f"{stamp(when, svc)} {svc.pid} {style} {logger} "
    if instance:
        prefix += f"[instance: {instance}] "
    out = [prefix + "Traceback (most recent call last):"]
    for path, lineno, func, code in frames:
        out.append(prefix + f'  File "{path}", line {lineno}, in {func}')
        out.append(prefix + f"    {code}")
    out.append(prefix + error)
    out.append(prefix)
    return out


@dataclass
class Event:
    when: datetime
    svc: Service
    lines: list[str]
    seq: int = 0

    def __lt__(self, other: Event) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


@dataclass
class Scenario:
    name: str
    instance: str
    request_ids: list[str] = field(default_factory=list)
    host: Service | None = None
    services: set[str] = field(default_factory=set)  # labels expected in its trace


@dataclass
class LogSet:
    root: Path
    scenarios: dict[str, Scenario]
    files: list[Path]
    start: datetime
    end: datetime
    bytes_written: int
    lines_written: int


class Builder:
    """Collects scenario events; background traffic is generated while writing."""

    def __init__(self, seed: int = 1) -> None:
        self.ids = Ids(seed)
        self.events: list[Event] = []
        self.seq = 0
        self.user = self.ids.hex32()
        self.project = self.ids.hex32()
        self.image = self.ids.uuid()
        self.silent: dict[Service, tuple[datetime, datetime]] = {}

    def choice(self, items: list[str]) -> str:
        return items[self.ids.rng.randrange(len(items))]

    def emit(self, when: datetime, svc: Service, *lines: str) -> None:
        self.seq += 1
        self.events.append(Event(when, svc, list(lines), self.seq))

    def uctx(self, req: str, glob: str | None = None) -> str:
        return ctx(req, self.user, self.project, glob)

    # -- scenarios ----------------------------------------------------------------------

    def boot_start(self, t: datetime, inst: str, req: str, status: int = 202) -> datetime:
        c = self.uctx(req)
        self.emit(t, API, line(t, API, "DEBUG", "nova.api.openstack.wsgi", c,
                               "Calling method '<bound method ServersController.create of "
                               "<nova.api.openstack.compute.servers.ServersController object "
                               "at 0x7f1c2a3b4c50>>' _process_stack "
                               f"{PY}/nova/api/openstack/wsgi.py:513"))
        t1 = t + timedelta(milliseconds=180)
        keystone_req = self.ids.req()
        self.emit(t1, KEYSTONE, line(t1, KEYSTONE, "INFO", "keystone.server.flask.request_"
                                     "processing.req_logging", ctx(keystone_req, glob=None),
                                     "GET http://controller:5000/v3/auth/tokens"))
        t2 = t + timedelta(milliseconds=420)
        self.emit(t2, API, line(t2, API, "DEBUG", "nova.compute.api", c,
                                f"[instance: {inst}] Going to run 1 instances... "
                                f"_provision_instances {PY}/nova/compute/api.py:1082"))
        t3 = t + timedelta(milliseconds=830)
        self.emit(t3, API, line(t3, API, "INFO", "nova.api.openstack.requestlog", c,
                                f'10.0.0.5 "POST /v2.1/servers" status: {status} len: 437 '
                                "microversion: 2.79 time: 0.829512"))
        return t3

    def schedule(self, t: datetime, inst: str, req: str, host: Service) -> datetime:
        c = self.uctx(req)
        self.emit(t, SCHED, line(t, SCHED, "DEBUG", "nova.scheduler.manager", c,
                                 f"Starting to schedule for instances: ['{inst}'] "
                                 f"select_destinations {PY}/nova/scheduler/manager.py:141"))
        t1 = t + timedelta(milliseconds=60)
        preq = self.ids.req()
        self.emit(t1, PLACEMENT, line(t1, PLACEMENT, "INFO", "placement.requestlog",
                                      self.uctx(preq, glob=req),
                                      '10.0.0.5 "GET /allocation_candidates?limit=1000&'
                                      'resources=DISK_GB%3A20%2CMEMORY_MB%3A2048%2CVCPU%3A1" '
                                      "status: 200 len: 2895 microversion: 1.36"))
        t2 = t + timedelta(milliseconds=140)
        preq2 = self.ids.req()
        self.emit(t2, PLACEMENT, line(t2, PLACEMENT, "INFO", "placement.requestlog",
                                      self.uctx(preq2, glob=req),
                                      f'10.0.0.5 "PUT /allocations/{inst}" status: 204 len: 0 '
                                      "microversion: 1.36"))
        t3 = t + timedelta(milliseconds=200)
        self.emit(t3, COND, line(t3, COND, "DEBUG", "nova.conductor.manager", c,
                                 f"[instance: {inst}] Selected host: {host.host}; Selected "
                                 f"node: {host.host}; Alternates: [] "
                                 f"schedule_and_build_instances {PY}/nova/conductor/"
                                 "manager.py:1650"))
        return t3

    def spawn(self, t: datetime, inst: str, req: str, host: Service, ok: bool = True
              ) -> tuple[datetime, str, str]:
        c = self.uctx(req)
        self.emit(t, host, line(t, host, "INFO", "nova.compute.claims", c,
                                f"[instance: {inst}] Claim successful on node {host.host}"))
        t1 = t + timedelta(milliseconds=900)
        greq = self.ids.req()
        self.emit(t1, GLANCE, line(t1, GLANCE, "INFO", "eventlet.wsgi.server",
                                   self.uctx(greq, glob=req),
                                   f'10.0.0.21 - - [{apache(t1)}] "GET /v2/images/'
                                   f'{self.image} HTTP/1.1" 200 1534 0.034671'))
        t2 = t + timedelta(seconds=1, milliseconds=300)
        port = self.ids.uuid()
        nreq = self.ids.req()
        self.emit(t2, NEUTRON,
                  line(t2, NEUTRON, "INFO", "neutron.wsgi", self.uctx(nreq, glob=req),
                       '10.0.0.21 "POST /v2.0/ports HTTP/1.1" status: 201  len: 1180 '
                       "time: 0.3521"),
                  line(t2, NEUTRON, "INFO", "neutron.plugins.ml2.plugin",
                       self.uctx(nreq, glob=req),
                       f"Attempt 1 to bind port {port} on host {host.host} for vnic_type "
                       "normal with profile"))
        tn = t2 + timedelta(milliseconds=200)
        # neutron's own follow-up, in its local request only: reachable through req-N
        self.emit(tn, NEUTRON, line(tn, NEUTRON, "DEBUG", "neutron.db.provisioning_blocks",
                                    ctx(nreq), f"Provisioning complete for port {port} "
                                    "triggered by entity L2."))
        t3 = t2 + timedelta(milliseconds=400)
        self.emit(t3, host, line(t3, host, "DEBUG", "nova.network.neutron", c,
                                 f"[instance: {inst}] Successfully created port: {port} "
                                 f"_create_port_minimal {PY}/nova/network/neutron.py:549"),
                  line(t3, host, "DEBUG", "nova.network.neutron", c,
                       f"Neutron server returns request_ids: ['{nreq}'] "
                       f"_update_port {PY}/nova/network/neutron.py:1520"))
        t4 = t3 + timedelta(seconds=2)
        self.emit(t4, host, line(t4, host, "INFO", "nova.virt.libvirt.driver", c,
                                 f"[instance: {inst}] Creating image(s)"))
        if not ok:
            return t4, nreq, greq
        t5 = t4 + timedelta(seconds=8)
        lreq = self.ids.req()
        self.emit(t5, host,
                  line(t5, host, "INFO", "nova.compute.manager", ctx(lreq, "-", "-"),
                       f"[instance: {inst}] VM Started (Lifecycle Event)"),
                  line(t5, host, "INFO", "nova.compute.manager", c,
                       f"[instance: {inst}] Took 9.87 seconds to spawn the instance on the "
                       "hypervisor."),
                  line(t5, host, "INFO", "nova.compute.manager", c,
                       f"[instance: {inst}] Took 11.02 seconds to build instance."))
        return t5, nreq, greq

    def scenario_ok(self, t: datetime) -> Scenario:
        inst, req = self.ids.uuid(), self.ids.req()
        t = self.boot_start(t, inst, req)
        t = self.schedule(t + timedelta(milliseconds=300), inst, req, COMPUTE1)
        _, nreq, greq = self.spawn(t + timedelta(milliseconds=500), inst, req, COMPUTE1)
        return Scenario("ok", inst, [req, nreq, greq], COMPUTE1,
                        {"nova-api", "nova-scheduler", "nova-conductor", "placement-api",
                         "compute1:nova-compute", "neutron-server", "glance-api"})

    def scenario_disk_full(self, t: datetime) -> Scenario:
        inst, req = self.ids.uuid(), self.ids.req()
        t = self.boot_start(t, inst, req)
        t = self.schedule(t + timedelta(milliseconds=300), inst, req, COMPUTE2)
        t, nreq, greq = self.spawn(t + timedelta(milliseconds=500), inst, req, COMPUTE2,
                                   ok=False)
        t = t + timedelta(seconds=3)
        base = "/var/lib/nova/instances/_base/" + (self.ids.hex32() + self.ids.hex32())[:40]
        c = self.uctx(req)
        head = line(t, COMPUTE2, "ERROR", "nova.compute.manager", c,
                    f"[instance: {inst}] Instance failed to spawn: "
                    "oslo_concurrency.processutils.ProcessExecutionError: Unexpected error "
                    "while running command.")
        bare = [f"Command: qemu-img convert -t none -O raw -f qcow2 {base}.part "
                f"{base}.converted", "Exit code: 1", "Stdout: ''",
                "Stderr: 'qemu-img: error while writing at byte 1569792000: No space left "
                "on device\\n'"]
        frames = [
            (f"{PY}/nova/compute/manager.py", 2743, "_build_resources", "yield resources"),
            (f"{PY}/nova/compute/manager.py", 2503, "_build_and_run_instance",
             "self.driver.spawn(context, instance, image_meta,"),
            (f"{PY}/nova/virt/libvirt/driver.py", 4401, "spawn",
             "created_instance_dir, created_disks = self._create_image("),
            (f"{PY}/nova/virt/images.py", 182, "fetch_to_raw",
             "convert_image(path_tmp, staged, fmt, 'raw')"),
            (f"{PY}/oslo_concurrency/processutils.py", 438, "execute",
             "raise ProcessExecutionError(exit_code=_returncode,"),
        ]
        tb = traceback_lines(t, COMPUTE2, "nova.compute.manager", inst, frames,
                             "oslo_concurrency.processutils.ProcessExecutionError: "
                             "Unexpected error while running command.")
        self.emit(t, COMPUTE2, head, *bare, *tb)
        t1 = t + timedelta(milliseconds=250)
        self.emit(t1, COMPUTE2, line(t1, COMPUTE2, "INFO", "nova.compute.manager", c,
                                     f"[instance: {inst}] Terminating instance"))
        t2 = t1 + timedelta(seconds=2)
        self.emit(t2, COMPUTE2, line(t2, COMPUTE2, "ERROR", "nova.compute.manager", c,
                                     f"[instance: {inst}] Build of instance {inst} aborted: "
                                     "Disk full while converting the image."))
        return Scenario("disk_full", inst, [req, nreq, greq], COMPUTE2,
                        {"nova-api", "nova-scheduler", "nova-conductor", "placement-api",
                         "compute2:nova-compute", "neutron-server", "glance-api"})

    def scenario_no_valid_host(self, t: datetime) -> Scenario:
        inst, req = self.ids.uuid(), self.ids.req()
        t = self.boot_start(t, inst, req)
        t = t + timedelta(milliseconds=300)
        c = self.uctx(req)
        self.emit(t, SCHED,
                  line(t, SCHED, "DEBUG", "nova.scheduler.manager", c,
                       f"Starting to schedule for instances: ['{inst}'] select_destinations "
                       f"{PY}/nova/scheduler/manager.py:141"),
                  line(t, SCHED, "INFO", "nova.filters", c,
                       "Filter ComputeCapabilitiesFilter returned 0 hosts"),
                  line(t, SCHED, "INFO", "nova.filters", c,
                       "Filtering removed all hosts for the request with instance ID "
                       f"'{inst}'. Filter results: ['AvailabilityZoneFilter: (start: 3, "
                       "end: 3)', 'ComputeFilter: (start: 3, end: 3)', "
                       "'ComputeCapabilitiesFilter: (start: 3, end: 0)']"))
        t1 = t + timedelta(milliseconds=90)
        self.emit(t1, COND,
                  line(t1, COND, "ERROR", "nova.conductor.manager", c,
                       "Failed to schedule instances: nova.exception_Remote.NoValidHost_"
                       "Remote: No valid host was found. There are not enough hosts "
                       "available."),
                  line(t1, COND, "WARNING", "nova.scheduler.utils", c,
                       f"[instance: {inst}] Setting instance to ERROR state."))
        return Scenario("no_valid_host", inst, [req], None,
                        {"nova-api", "nova-scheduler", "nova-conductor", "keystone"})

    def scenario_rotated_fail(self, t: datetime) -> Scenario:
        """An older failure, logged the pre-Ocata way: `[req-X user project - - -]`
        contexts and TRACE-prefixed traceback lines; it ends up in the .gz files."""
        inst, req = self.ids.uuid(), self.ids.req()
        t = self.boot_start(t, inst, req)
        t = self.schedule(t + timedelta(milliseconds=300), inst, req, COMPUTE1)
        t = t + timedelta(seconds=1)
        old = f"[{req} {self.user} {self.project} - - -]"
        head = line(t, COMPUTE1, "ERROR", "nova.compute.manager", old,
                    f"[instance: {inst}] Instance failed to spawn")
        frames = [(f"{PY}/nova/compute/manager.py", 2218, "_build_resources",
                   "yield resources"),
                  (f"{PY}/nova/image/glance.py", 366, "download",
                   "_reraise_translated_image_exception(image_id)")]
        tb = traceback_lines(t, COMPUTE1, "nova.compute.manager", inst, frames,
                             f"ImageNotAuthorized: Not authorized for image {self.image}.",
                             style="TRACE")
        self.emit(t, COMPUTE1, head, *tb)
        return Scenario("rotated_fail", inst, [req], COMPUTE1,
                        {"nova-api", "nova-scheduler", "nova-conductor", "placement-api",
                         "compute1:nova-compute"})

    def scenario_api_only(self, t: datetime) -> Scenario:
        inst, req = self.ids.uuid(), self.ids.req()
        self.boot_start(t, inst, req)
        return Scenario("api_only", inst, [req], None, {"nova-api"})

    def scenario_hung(self, t: datetime) -> Scenario:
        inst, req = self.ids.uuid(), self.ids.req()
        t1 = self.boot_start(t, inst, req)
        self.schedule(t1 + timedelta(milliseconds=300), inst, req, COMPUTE3)
        # compute3 logged nothing from 40 minutes before the cast until well after it
        self.silent[COMPUTE3] = (t - timedelta(minutes=40), t + timedelta(minutes=30))
        return Scenario("hung", inst, [req], COMPUTE3,
                        {"nova-api", "nova-scheduler", "nova-conductor", "placement-api"})


# -- background traffic ------------------------------------------------------------------

def _bg_api(b: Builder, t: datetime) -> Iterator[Event]:
    """A listing or show through the API, with its keystone token check."""
    req = b.ids.req()
    c = b.uctx(req)
    inst = b.ids.uuid()
    path = b.choice(["/v2.1/servers/detail", f"/v2.1/servers/{inst}", "/v2.1/flavors/detail",
                         "/v2.1/os-hypervisors", "/v2.1/servers/detail?all_tenants=1"])
    status = 404 if path.endswith(inst) and b.ids.rng.random() < 0.3 else 200
    yield Event(t, API, [line(t, API, "DEBUG", "nova.api.openstack.wsgi", c,
                              f"Calling method '<bound method ServersController.index of "
                              f"<nova.api.openstack.compute.servers.ServersController object "
                              f"at 0x7f1c2a3b4c50>>' _process_stack {PY}/nova/api/openstack/"
                              "wsgi.py:513")])
    if status == 404:
        yield Event(t, API, [line(t, API, "INFO", "nova.api.openstack.wsgi", c,
                                  "HTTP exception thrown: Instance " + inst +
                                  " could not be found.")])
    t2 = t + timedelta(milliseconds=b.ids.rng.randint(20, 400))
    yield Event(t2, API, [line(t2, API, "INFO", "nova.api.openstack.requestlog", c,
                               f'10.0.0.{b.ids.rng.randint(2, 250)} "GET {path}" status: '
                               f"{status} len: {b.ids.rng.randint(300, 90000)} microversion: "
                               f"2.79 time: 0.{b.ids.rng.randint(10000, 999999):06d}")])
    kreq = b.ids.req()
    yield Event(t, KEYSTONE, [line(t, KEYSTONE, "INFO", "keystone.server.flask.request_"
                                   "processing.req_logging", ctx(kreq, glob=None),
                                   "GET http://controller:5000/v3/auth/tokens")])


def _bg_compute(b: Builder, t: datetime, svc: Service) -> Iterator[Event]:
    """One periodic task run on a compute host."""
    req = b.ids.req()
    c = ctx(req)
    task = b.choice(["ComputeManager._poll_rebooting_instances",
                         "ComputeManager._instance_usage_audit",
                         "ComputeManager._poll_volume_usage",
                         "ComputeManager.update_available_resource",
                         "ComputeManager._heal_instance_info_cache",
                         "ComputeManager._sync_power_states"])
    lines = [line(t, svc, "DEBUG", "oslo_service.periodic_task", c,
                  f"Running periodic task {task} run_periodic_tasks "
                  f"{PY}/oslo_service/periodic_task.py:210")]
    if task.endswith("update_available_resource"):
        lines.append(line(t, svc, "INFO", "nova.compute.resource_tracker", c,
                          f"Final resource view: name={svc.host} phys_ram=257790MB "
                          f"used_ram={b.ids.rng.randint(2048, 200000)}MB phys_disk=1787GB "
                          f"used_disk={b.ids.rng.randint(20, 900)}GB total_vcpus=64 "
                          f"used_vcpus={b.ids.rng.randint(1, 60)} pci_stats=[]"))
    elif task.endswith("_heal_instance_info_cache"):
        lines.append(line(t, svc, "DEBUG", "nova.compute.manager", c,
                          f"[instance: {b.ids.uuid()}] Updated the network info_cache for "
                          f"instance _heal_instance_info_cache {PY}/nova/compute/"
                          "manager.py:9961"))
    yield Event(t, svc, lines)


def _bg_neutron(b: Builder, t: datetime) -> Iterator[Event]:
    req = b.ids.req()
    yield Event(t, NEUTRON, [line(t, NEUTRON, "INFO", "neutron.wsgi", b.uctx(req),
                                  f'10.0.0.{b.ids.rng.randint(2, 250)} "GET /v2.0/ports?'
                                  f'device_id={b.ids.uuid()} HTTP/1.1" status: 200  len: 1902 '
                                  f"time: 0.0{b.ids.rng.randint(1000, 9999)}")])
    if b.ids.rng.random() < 0.2:
        yield Event(t, NEUTRON, [line(t, NEUTRON, "DEBUG", "neutron.notifiers.nova", "[-]",
                                      f"Sending events: [{{'server_uuid': '{b.ids.uuid()}', "
                                      "'name': 'network-vif-plugged', 'status': 'completed'}]"
                                      " send_events")])


def _bg_misc(b: Builder, t: datetime) -> Iterator[Event]:
    r = b.ids.rng.random()
    if r < 0.35:
        req = b.ids.req()
        yield Event(t, PLACEMENT, [line(t, PLACEMENT, "INFO", "placement.requestlog",
                                        b.uctx(req), f'10.0.0.{b.ids.rng.randint(2, 250)} "GET'
                                        f' /resource_providers/{b.ids.uuid()}/allocations" '
                                        "status: 200 len: 361 microversion: 1.0")])
    elif r < 0.55:
        req = b.ids.req()
        yield Event(t, GLANCE, [line(t, GLANCE, "INFO", "eventlet.wsgi.server", b.uctx(req),
                                     f'10.0.0.21 - - [{apache(t)}] "GET /v2/images/'
                                     f'{b.ids.uuid()} HTTP/1.1" 200 1534 0.021184')])
    elif r < 0.7:
        req = b.ids.req()
        yield Event(t, CINDER, [line(t, CINDER, "INFO", "cinder.volume.manager", ctx(req),
                                     "Updating volume status")])
    elif r < 0.85:
        req = b.ids.req()
        yield Event(t, COND, [line(t, COND, "DEBUG", "oslo_concurrency.lockutils", ctx(req),
                                   'Lock "compute_resources" acquired by "nova.conductor.'
                                   'manager.ComputeTaskManager._cleanup" :: waited 0.000s '
                                   f"inner {PY}/oslo_concurrency/lockutils.py:404")])
    else:
        req = b.ids.req()
        yield Event(t, SCHED, [line(t, SCHED, "DEBUG", "nova.scheduler.host_manager",
                                    ctx(req), "Received a sync request from an unknown host "
                                    f"'compute{b.ids.rng.randint(4, 90)}'. Re-created its "
                                    "InstanceList. sync_instance_info")])


def _background(b: Builder, start: datetime, step: float) -> Iterator[Event]:
    """Endless traffic, in time order: `step` seconds between bursts on average."""
    t = start
    rng = b.ids.rng
    while True:
        t = t + timedelta(seconds=rng.expovariate(1 / step))
        r = rng.random()
        if r < 0.3:
            events = list(_bg_api(b, t))
        elif r < 0.65:
            svc = COMPUTES[rng.randrange(len(COMPUTES))]
            events = list(_bg_compute(b, t, svc))
        elif r < 0.85:
            events = list(_bg_neutron(b, t))
        else:
            events = list(_bg_misc(b, t))
        yield from sorted(events)


class _Sinks:
    """Per service: .log.2.gz before `cut1`, .log.1 before `cut2`, .log after."""

    def __init__(self, root: Path, cut1: datetime, cut2: datetime, rotate: bool,
                 gz_level: int) -> None:
        self.root, self.cut1, self.cut2, self.rotate = root, cut1, cut2, rotate
        self.gz_level = gz_level
        self.open: dict[tuple[Service, int], IO[bytes]] = {}
        self.paths: list[Path] = []
        self.buffers: dict[tuple[Service, int], list[bytes]] = {}
        self.sizes: dict[tuple[Service, int], int] = {}
        self.written = 0
        self.lines = 0

    def _part(self, when: datetime) -> int:
        if not self.rotate:
            return 0
        return 2 if when < self.cut1 else 1 if when < self.cut2 else 0

    def _file(self, key: tuple[Service, int]) -> IO[bytes]:
        f = self.open.get(key)
        if f is None:
            svc, part = key
            path = self.root / svc.rel
            if part == 2:
                path = path.with_name(path.name + ".2.gz")
            elif part == 1:
                path = path.with_name(path.name + ".1")
            path.parent.mkdir(parents=True, exist_ok=True)
            raw = open(path, "wb")  # noqa: SIM115 - closed in close()
            f = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=self.gz_level,
                              mtime=0) if part == 2 else raw
            self.open[key] = f
            self.paths.append(path)
        return f

    def write(self, ev: Event) -> None:
        key = (ev.svc, self._part(ev.when))
        data = ("\n".join(ev.lines) + "\n").encode()
        buf = self.buffers.setdefault(key, [])
        buf.append(data)
        self.sizes[key] = self.sizes.get(key, 0) + len(data)
        self.written += len(data)
        self.lines += len(ev.lines)
        if self.sizes[key] > 1 << 20:
            self._flush(key)

    def _flush(self, key: tuple[Service, int]) -> None:
        f = self._file(key)
        f.write(b"".join(self.buffers.pop(key, [])))
        self.sizes[key] = 0

    def close(self) -> None:
        for key in list(self.buffers):
            self._flush(key)
        for f in self.open.values():
            if isinstance(f, gzip.GzipFile):
                raw = f.fileobj
                f.close()
                if raw is not None:
                    raw.close()
            else:
                f.close()


ScenarioFn = Callable[[Builder, datetime], Scenario]
DEFAULT_SCENARIOS: dict[str, tuple[float, ScenarioFn]] = {
    # name: (where in the log span, 0..1; the builder method)
    "rotated_fail": (0.15, Builder.scenario_rotated_fail),
    "ok": (0.50, Builder.scenario_ok),
    "disk_full": (0.80, Builder.scenario_disk_full),
    "no_valid_host": (0.85, Builder.scenario_no_valid_host),
    "api_only": (0.90, Builder.scenario_api_only),
    "hung": (0.93, Builder.scenario_hung),
}


def build(root: str | os.PathLike[str], *, span: timedelta = timedelta(hours=3),
          step: float = 0.5, size: int | None = None, seed: int = 1, rotate: bool = True,
          gz_level: int = 6, scenarios: dict[str, tuple[float, ScenarioFn]] | None = None,
          extra: Callable[[Builder, datetime, datetime], None] | None = None) -> LogSet:
    """Write a log set under `root`: background traffic over `span` (or until `size` bytes
    are written, for the benchmark), with the scenarios placed along it. `extra(builder,
    start, end)` may add more events."""
    root = Path(root)
    b = Builder(seed)
    end = START + span
    found: dict[str, Scenario] = {}
    for name, (where, fn) in (DEFAULT_SCENARIOS if scenarios is None else scenarios).items():
        found[name] = fn(b, START + span * where)
    if extra is not None:
        extra(b, START, end)
    sinks = _Sinks(root, START + span / 3, START + span * 2 / 3, rotate, gz_level)
    heapq.heapify(b.events)
    last = START
    for ev in _background(b, START, step):
        while b.events and b.events[0].when <= ev.when:
            sinks.write(heapq.heappop(b.events))
        if ev.when >= end or (size is not None and sinks.written >= size):
            break
        quiet = b.silent.get(ev.svc)
        if quiet and quiet[0] <= ev.when <= quiet[1]:
            continue
        sinks.write(ev)
        last = ev.when
    while b.events:
        sinks.write(heapq.heappop(b.events))
    sinks.close()
    return LogSet(root, found, sorted(sinks.paths), START, last, sinks.written, sinks.lines)
