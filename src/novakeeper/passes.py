"""One cache pass, end to end: scan -> usage sources -> (cross-check) -> state -> decide,
and the executor with its re-check. It drives cache/, usage/, state/ and integrity/ from
above them. The CLI, the service, the demo and the benchmarks all go through here, so they
run exactly the same code."""

from __future__ import annotations

import gc
import logging
import sqlite3
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TYPE_CHECKING

from novakeeper.cache.budget import FsUsage
from novakeeper.cache.inventory import Inventory, Problem, ProblemCode, Scanner, with_problems
from novakeeper.cache.layout import TEMPLATE_KINDS, kinds_usable_by
from novakeeper.cache.plan import Decision, Plan
from novakeeper.cache.policy import Observed, decide, recheck
from novakeeper.cache.storage import read_registry
from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.gcpause import cyclic_gc_paused
from novakeeper.images import catalog, crosscheck
from novakeeper.integrity import state as integrity_state
from novakeeper.settings import Settings
from novakeeper.state import journal, pins, releases, usage
from novakeeper.state.db import StateDB, open_state
from novakeeper.usage.base import UsageSource
from novakeeper.usage.collect import Usage, collect
from novakeeper.usage.libvirt import Domain, LibvirtDomains
from novakeeper.usage.novaapi import NovaServers
from novakeeper.usage.openfiles import OpenFiles

if TYPE_CHECKING:  # oslo.concurrency and the executor: only for clean, not for a plan
    from novakeeper.cache.executor import Executor, Rejudge

LOG = logging.getLogger("novakeeper.cache")


@dataclass
class Pass:
    scanner: Scanner
    inventory: Inventory
    plan: Plan
    disagreements: int = 0
    state: StateDB | None = None
    """Open for the executor's journal; None when it could not be opened read-write."""
    reconciled: list[journal.JournalEntry] = field(default_factory=list)
    """Journal rows a crashed run left unfinished, settled by this pass."""
    observed: Observed = field(default_factory=Observed)
    """What the plan read besides the inventory: the executor's re-checks read it too."""
    accept_unreadable: bool = False
    domains: tuple[Domain, ...] | None = None
    """libvirt's domains and their disks, when that usage source is on and answered."""

    frozen: bool = False
    """The scan's objects were moved out of the cyclic collector's sight (gc.freeze)."""

    def close(self) -> None:
        if self.state is not None:
            self.state.close()
            self.state = None
        if self.frozen:  # the service's next pass may free them
            gc.unfreeze()
            self.frozen = False

    def __enter__(self) -> Pass:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def cross_check(inventory: Inventory) -> list[Problem]:
    """Compare every disk's chain with qemu-img's; each disagreement is a problem."""
    binary = crosscheck.qemu_img()
    problems = []
    for disk in inventory.disks:
        detail = crosscheck.compare(disk.path, disk.chain, binary)
        if detail is not None:
            name = disk.path.rsplit("/", 1)[-1]
            problems.append(Problem(ProblemCode.CROSS_CHECK, disk.path, detail, disk.instance,
                                    kinds_usable_by(name)))
    return problems


def _open_state(settings: Settings, write: bool, notes: list[str]) -> StateDB | None:
    """The state database; for a plan, a database it cannot open is a note, not an error."""
    try:
        return open_state(settings.state_path, write=write)
    except NovakeeperError as exc:
        if write:
            raise
        note = (f"{exc.message}: pins made with `cache pin` and last-used times are unknown "
                "to this plan; `clean` will refuse to run")
        LOG.warning("%s", note)
        notes.append(note)
        return None


def usage_sources(settings: Settings, inventory: Inventory, now: float) -> list[UsageSource]:
    """The sources [novakeeper] usage_sources names, built from the settings. The nova-api
    source asks about this host and every host the storage registry calls active."""
    sources: list[UsageSource] = []
    for name in settings.usage_sources:
        if name == "open-files":
            sources.append(OpenFiles())
        elif name == "libvirt":
            sources.append(LibvirtDomains(settings.libvirt_uri))
        elif name == "nova-api":
            registry = read_registry(inventory.instances_path, now)
            hosts = [settings.host, *(u.host for u in registry.active)]
            sources.append(NovaServers(hosts, cloud=settings.nova_api_cloud))
    return sources


def observe(settings: Settings, inventory: Inventory, state: StateDB | None, now: float,
            notes: list[str], used: Usage | None = None
            ) -> tuple[Observed, list[journal.JournalEntry]]:
    """Everything the policy needs besides the inventory: file-system usage, usage
    records (updated with this scan), pins. Settles a crashed run's journal first."""
    fs: FsUsage | None = None
    fs_error = None
    if settings.policy.budget.uses_file_system:
        try:
            fs = FsUsage.of(inventory.cache_real_path)
        except OSError as exc:
            fs_error = f"statvfs {inventory.cache_path} failed: {exc.strerror}"
            notes.append(fs_error + "; watermarks and min_free_space evict nothing")
    reconciled: list[journal.JournalEntry] = []
    records: dict[str, usage.UsageRecord] = {}
    db_pins: list[pins.Pin] = []
    corrupt: dict[str, str] = {}
    released: dict[str, str] = {}
    if state is not None:
        try:
            if state.writable:
                reconciled = journal.reconcile(state, inventory, now)
                records = usage.record(state, inventory, now)
            else:
                records = usage.load(state)
                notes.append(f"state database {state.path} is read-only for this user: "
                             "this scan's usage was not recorded")
            db_pins = pins.load(state)
            names = {b.name for b in inventory.bases}
            corrupt = {c.name: c.detail for c in integrity_state.corrupt(state, names)}
            released = releases.load(state)
        except sqlite3.Error as exc:
            note = f"state database {state.path}: {exc}; planning without it"
            LOG.warning("%s", note)
            notes.append(note)
    for entry in reconciled:
        LOG.warning("Journal: removal of %s by run %s was interrupted; settled as %s",
                    entry.path, entry.run, entry.outcome)
    used = used if used is not None else Usage()
    all_pins = tuple(settings.pins) + tuple(db_pins)
    images = glance_catalog(settings, state, now, all_pins,
                            {b.image_hash for b in inventory.bases if b.image_hash})
    if images is not None:
        notes.extend(images.notes())
    observed = Observed(fs=fs, fs_error=fs_error, last_used=usage.last_used_map(records),
                        pins=pins.Pins(all_pins),
                        notes=tuple(notes), sightings=used.sightings,
                        source_errors=tuple(used.errors), corrupt=corrupt,
                        images=images.by_hash if images is not None else {},
                        released=released)
    return observed, reconciled


def glance_catalog(settings: Settings, state: StateDB | None, now: float,
                   all_pins: Sequence[pins.Pin] = (),
                   wanted: Collection[str] | None = None) -> catalog.Catalog | None:
    """Glance's word on the images of this cache ([novakeeper] glance_images), refreshed
    at most every glance_refresh_seconds; None when image naming is off."""
    if not settings.glance.enabled:
        return None
    from novakeeper.integrity.glance import Glance

    pinned = {p.hash: p.value for p in all_pins  # an id, not a cache hash
              if p.kind == "image" and p.hash and p.hash != p.value}
    return catalog.refresh(state, lambda: Glance(settings.glance.cloud), now,
                           settings.glance.refresh_seconds, pinned, wanted=wanted)


# Problems --ignore-unreadable stops from holding files: doubt about what a disk uses.
UNREADABLE = frozenset({ProblemCode.DISK_UNREADABLE, ProblemCode.DISK_CORRUPT,
                        ProblemCode.CHAIN_BROKEN, ProblemCode.FOLDER_UNREADABLE,
                        ProblemCode.DOMAIN_DISK})


def ignore_unreadable(inventory: Inventory, notes: list[str], quiet: bool = False
                      ) -> Inventory:
    """The operator accepts the risk: unreadable disks stay listed but hold nothing."""
    freed = [replace(p, holds_kinds=frozenset(), holds_names=frozenset())
             if p.code in UNREADABLE else p for p in inventory.problems]
    count = sum(1 for p in inventory.problems if p.code in UNREADABLE)
    if count and not quiet:
        note = (f"--ignore-unreadable: {count} unreadable or broken disks hold nothing; "
                "bases they use may be removed")
        LOG.warning("%s", note)
        notes.append(note)
    return replace(inventory, problems=tuple(freed))


def plan_pass(settings: Settings, now: float | None = None, check: bool = False,
              write_state: bool = False, use_state: bool = True,
              accept_unreadable: bool = False, scanner: Scanner | None = None) -> Pass:
    """Scan, observe, decide. write_state=True (clean) makes an unusable state database
    an error; otherwise the plan goes on without it and says so. `scanner`: the previous
    pass's, so an unchanged node costs only the stats that prove it unchanged."""
    notes: list[str] = []
    if scanner is None or (scanner.instances_path, scanner.cache_name) != (
            settings.instances_path, settings.subdirectory_name):
        scanner = Scanner(settings.instances_path, settings.subdirectory_name,
                          spawn_window=settings.policy.spawn_hold_seconds)
        with cyclic_gc_paused():
            inventory = scanner.scan(now)
            # Alive until the pass ends and free of cycles: no collection needs to walk
            # them again (one full collection after a 10,000-folder scan costs ~50 ms).
            gc.freeze()
        frozen = True
    else:  # the service's next pass: rescan only what changed since the last one
        scanner.spawn_window = settings.policy.spawn_hold_seconds
        with cyclic_gc_paused():
            inventory = scanner.refresh_at(now)
        frozen = False
    state = None
    try:
        disagreements = 0
        if check:
            extra = cross_check(inventory)
            disagreements = len(extra)
            inventory = with_problems(inventory, extra)
        when = time.time() if now is None else now
        inventory, used = judged_inventory(settings, inventory, when, accept_unreadable,
                                           notes)
        state = _open_state(settings, write_state, notes) if use_state else None
        observed, reconciled = observe(settings, inventory, state, when, notes, used)
        with cyclic_gc_paused():
            plan = decide(inventory, settings.policy, when, observed)
    except BaseException:
        if state is not None:
            state.close()
        if frozen:
            gc.unfreeze()
        raise
    return Pass(scanner, inventory, plan, disagreements, state, reconciled, observed,
                accept_unreadable, used.domains, frozen)


def judged_inventory(settings: Settings, inventory: Inventory, now: float,
                     accept_unreadable: bool, notes: list[str], quiet: bool = False
                     ) -> tuple[Inventory, Usage]:
    """The inventory as the policy judges it: the usage sources asked (their doubts added
    as problems, a building instance's folder narrowed to what the API leaves unknown)
    and --ignore-unreadable applied. The plan and every re-check go through here."""
    used = collect(usage_sources(settings, inventory, now), inventory)
    inventory = narrow_building(with_problems(inventory, used.problems), used.building)
    notes.extend(used.notes)
    if accept_unreadable:
        inventory = ignore_unreadable(inventory, notes, quiet)
    return inventory, used


def narrow_building(inventory: Inventory, building: frozenset[str]) -> Inventory:
    """With the nova-api source on, a spawn hold of an instance the API says is being built
    here holds exactly its image's bases (the source's sightings) and, from the folder,
    only the kinds the API cannot name: no blanket hold of every image on the node."""
    if not building:
        return inventory
    problems = []
    for p in inventory.problems:
        if p.code is ProblemCode.SPAWNING and p.instance in building:
            kinds = p.holds_kinds & TEMPLATE_KINDS  # the API names only its image's bases
            if not kinds:
                continue
            p = replace(p, holds_kinds=kinds,
                        detail=p.detail + "; the Nova API names its image: only swap and "
                        "ephemeral templates held")
        problems.append(p)
    return replace(inventory, problems=tuple(problems))


def rejudge_for(result: Pass, settings: Settings) -> Rejudge:
    """The executor's re-check: the plan's judgement on a fresh inventory, the usage
    sources asked again (a process that opened a base since the plan keeps it)."""
    def rejudge(inventory: Inventory, now: float, planned: Sequence[Decision]
                ) -> dict[str, str | None]:
        notes: list[str] = []
        inventory, used = judged_inventory(settings, inventory, now,
                                           result.accept_unreadable, notes, quiet=True)
        observed = replace(result.observed, sightings=used.sightings,
                           source_errors=tuple(used.errors))
        return recheck(inventory, settings.policy, now, observed, planned)
    return rejudge


def executor_for(result: Pass, settings: Settings) -> Executor:
    """The executor for a pass made with write_state=True: journaled, under nova's locks."""
    from novakeeper.cache.executor import Executor
    from novakeeper.cache.locks import NovaLocks, nova_lock_dir

    if result.state is None or not result.state.writable:
        raise NovakeeperError(ExitCode.PERMISSION, "the state database is not writable: "
                              "removals must be journaled")
    return Executor(
        result.scanner, result.inventory, result.plan, settings.touch_in_use,
        journal.Journal(result.state, result.plan.policy),
        NovaLocks(nova_lock_dir(settings.instances_path), settings.lock_wait_seconds),
        trash_grace=settings.policy.trash_grace_seconds,
        rejudge=rejudge_for(result, settings), config=settings.policy,
        batch_size=settings.removal_batch_size)
