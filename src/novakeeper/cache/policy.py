"""The policy: a pure function of (inventory, settings, now) -> Plan.

It never touches the file system and takes the clock as an argument, so a test can replay
weeks in a millisecond. Each stage is named after the rule it applies (as Ironic's image
cache does); the first rule that has an opinion about a file decides it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from novakeeper.cache.budget import BudgetConfig, BudgetOutcome, FsUsage, measure
from novakeeper.cache.inventory import BaseFile, Inventory, Problem
from novakeeper.cache.layout import DELETABLE_KINDS, BaseKind
from novakeeper.cache.plan import Decision, Plan, Verdict
from novakeeper.images.catalog import ImageFacts
from novakeeper.state.pins import Pin, Pins
from novakeeper.units import human_age, human_bytes
from novakeeper.usage.base import Sighting


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """The settings the policy reads; nova's names and defaults."""

    remove_unused_base_images: bool = True
    remove_unused_original_minimum_age_seconds: int = 86400
    remove_unused_resized_minimum_age_seconds: int = 3600
    stale_partial_seconds: int = 3600
    spawn_hold_seconds: int = 120
    """A base modified this recently may be between a spawn's unlocked look at it and the
    creation of its disk (nova touches it right before): never removed within it."""
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    trash_grace_seconds: int = 0
    deleted_image_min_age_seconds: int = 3600
    """An unused base of an image deleted or deactivated in Glance goes after this long
    (or after its kind's own minimum age, if shorter): no new instance can use it."""


@dataclass(frozen=True)
class Observed:
    """What a pass measured besides the inventory; all optional, so a plan can be made
    from an inventory alone (no budget, no history, no pins)."""

    fs: FsUsage | None = None
    fs_error: str | None = None
    """Why the file system could not be measured."""
    last_used: Mapping[str, float] = field(default_factory=dict)
    """Base name -> last time a scan saw a disk on it (state database)."""
    pins: Pins = field(default_factory=Pins)
    notes: tuple[str, ...] = ()
    sightings: Mapping[str, Sequence[Sighting]] = field(default_factory=dict)
    """Base name -> usage sources beyond the disks that saw it in use."""
    source_errors: tuple[str, ...] = ()
    """Usage sources configured but unable to answer: every base is then kept."""
    corrupt: Mapping[str, str] = field(default_factory=dict)
    """Base name -> why `cache verify` found it corrupt (state database)."""
    images: Mapping[str, ImageFacts] = field(default_factory=dict)
    """Image hash (sha1 of the id) -> Glance's word on the image (images/catalog.py)."""
    released: Mapping[str, str] = field(default_factory=dict)
    """Image hash -> an operator's release of its last copy (`cache release`), in words."""


@dataclass(frozen=True, slots=True)
class Facts:
    """What every rule may look at for one file."""

    base: BaseFile
    age: float
    users: tuple[str, ...]
    disks: tuple[str, ...]
    held_by: tuple[Problem, ...]
    config: PolicyConfig
    pin: Pin | None = None
    last_used: float | None = None
    seen_by: tuple[Sighting, ...] = ()
    source_errors: tuple[str, ...] = ()
    corrupt: str | None = None
    named: tuple[str, ...] = ()
    """Backing paths outside the cache that reach this file by name, as words."""
    fetching: tuple[str, float] | None = None
    """The freshest `.part`/`.converted` of this very file: (its name, its age)."""
    image: ImageFacts | None = None
    released: str | None = None


Rule = Callable[[Facts], Decision | None]

# Kinds a spawn builds a disk on (the ones nova's unlocked look can find), and that
# eviction may take.
_SPAWN_KINDS = frozenset({BaseKind.ORIGINAL, BaseKind.RESIZED, BaseKind.SWAP,
                          BaseKind.EPHEMERAL})

_NOT_NOVA = {
    BaseKind.UNKNOWN: "unknown file: not a name nova gives cache files; kept",
    BaseKind.DIRECTORY: "directory: nova never creates one here; kept",
    BaseKind.SYMLINK: "symbolic link: never followed, never removed; kept",
    BaseKind.SPECIAL: "not a regular file; kept",
}


def _decide(f: Facts, verdict: Verdict, reason: str, min_age: float | None = None) -> Decision:
    b = f.base
    frees = 0
    if verdict.removes:
        frees = b.allocated if b.nlink <= 1 else 0
        if b.nlink > 1:
            reason += f"; hard-linked ({b.nlink} links): frees nothing until all are gone"
    return Decision(
        name=b.name, path=b.path, kind=b.kind, verdict=verdict, reason=reason, age=f.age,
        min_age=min_age, size=b.size, allocated=b.allocated, frees=frees, users=f.users,
        disks=f.disks, held_by=tuple(p.path for p in f.held_by), image_hash=b.image_hash,
        mtime=b.mtime, dev=b.dev, ino=b.ino, last_used=f.last_used,
        sources=(("disks",) if f.disks else ()) + tuple(dict.fromkeys(
            s.source for s in f.seen_by)),
        seen_by=tuple(s.words() for s in f.seen_by),
        corrupt=f.corrupt, by_name=f.named, image=f.image,
        named_by=_naming(f) if f.image is not None and f.image.gone else (),
    )


NOVA_API = "nova-api"


def _naming(f: Facts) -> tuple[str, ...]:
    """The Nova API's sightings: instances naming the image (image_ref, kernel, ramdisk)."""
    return tuple(dict.fromkeys(s.who for s in f.seen_by if s.source == NOVA_API))


def rule_last_copy(f: Facts) -> Decision | None:
    """A base of an image gone from Glance (deleted or deactivated) that no disk and no
    process uses, but that an instance still names as its image, kernel or ramdisk: nova's
    rescue, rebuild and a block migration to another host fetch that image again and
    would fail without this copy. Kept, like a pin, until an operator releases it."""
    if f.image is None or not f.image.gone or f.disks:
        return None
    naming = _naming(f)
    if not naming or any(s.source != NOVA_API for s in f.seen_by):
        return None
    if f.released is not None:
        return None  # released: the sightings stop keeping it; the next rules decide
    more = f" and {len(naming) - 1} more" if len(naming) > 1 else ""
    reason = (f"last copy: {f.image.words()}, and {naming[0]}{more} names it: rescue, "
              f"rebuild and block migration need it; `novakeeper cache release "
              f"{f.image.image_id}` lets it go")
    return _decide(f, Verdict.LAST_COPY, reason)



def rule_only_nova_names(f: Facts) -> Decision | None:
    """A file nova did not name is not ours to remove."""
    reason = _NOT_NOVA.get(f.base.kind)
    return None if reason is None else _decide(f, Verdict.UNKNOWN, reason)


def rule_in_use(f: Facts) -> Decision | None:
    """A file in any disk's backing chain is in use, whatever its name or age; so is one
    that any other usage source (open files, libvirt domains, the Nova API) saw in use,
    except a last copy an operator released (the Nova API's sightings then keep nothing)."""
    if not f.disks and not f.seen_by:
        return None
    if (f.released is not None and not f.disks and f.image is not None and f.image.gone
            and all(s.source == NOVA_API for s in f.seen_by)):
        return None
    parts = []
    if f.disks and len(f.named) == len(f.disks):  # only by name
        more = f" and {len(f.named) - 1} more" if len(f.named) > 1 else ""
        parts.append(f"in use by name: backing file {f.named[0]}{more}")
    elif f.disks:
        n = len(f.users)
        noun = "instance" if n == 1 else "instances"
        disks = len(f.disks)
        parts.append(f"in use by {n} {noun} ({disks} disk{'' if disks == 1 else 's'})")
        if f.named:
            parts.append(f"by name: backing file {f.named[0]}")
    if f.seen_by:
        first = f.seen_by[0].words()
        more = f" and {len(f.seen_by) - 1} more" if len(f.seen_by) > 1 else ""
        parts.append(f"{'in use: ' if not f.disks else ''}{first}{more}")
    if f.corrupt:  # loud: the instances on it read bad data; never removed, never moved
        parts.append(f"CORRUPT: {f.corrupt}")
    if f.image is not None and f.image.gone:
        parts.append(f"AT RISK: {f.image.words()}: this base is the only copy left for "
                     f"its {len(f.users) or 'named'} instances")
    return _decide(f, Verdict.IN_USE, "; ".join(parts))


def rule_sources_answered(f: Facts) -> Decision | None:
    """A usage source that was asked and could not answer might have said 'in use' about
    any file: keep every base nova made until it answers again."""
    if not f.source_errors or f.base.kind not in DELETABLE_KINDS:
        return None
    more = f" (+{len(f.source_errors) - 1} more)" if len(f.source_errors) > 1 else ""
    return _decide(f, Verdict.HELD, f"held: usage source failed: {f.source_errors[0]}{more}")


def rule_hold_on_doubt(f: Facts) -> Decision | None:
    """A disk that could not be read could be using this file: keep it until it is fixed."""
    if not f.held_by:
        return None
    first = f.held_by[0]
    more = f" and {len(f.held_by) - 1} more" if len(f.held_by) > 1 else ""
    return _decide(f, Verdict.HELD, f"held: {first.code} at {first.path}{more}")


def rule_fetch_in_progress(f: Facts) -> Decision | None:
    """A fresh `.part`/`.converted` of this very file: nova is (re)making it under its lock."""
    if f.fetching is None or f.base.kind not in DELETABLE_KINDS:
        return None
    name, age = f.fetching
    if age >= f.config.stale_partial_seconds:
        return None
    return _decide(f, Verdict.HELD, f"held: {name} was touched {human_age(max(age, 0))} ago: "
                   "a fetch is in progress")


def rule_pinned(f: Facts) -> Decision | None:
    """An operator's pin keeps a file whatever its age and whatever the budget."""
    if f.pin is None:
        return None
    return _decide(f, Verdict.PINNED, f.pin.words())


def rule_configuration(f: Facts) -> Decision | None:
    """remove_unused_base_images = False: nova keeps everything, so do we."""
    if f.config.remove_unused_base_images:
        return None
    return _decide(f, Verdict.KEPT_BY_CONFIG, "kept: remove_unused_base_images is False")


def rule_stale_partial(f: Facts) -> Decision | None:
    """A partial download or conversion untouched for stale_partial_seconds is debris;
    nova never removes these."""
    kind = f.base.kind
    if kind not in (BaseKind.PARTIAL, BaseKind.CONVERTED, BaseKind.INFO):
        return None
    limit = f.config.stale_partial_seconds
    if kind is BaseKind.INFO:
        what = "leftover of nova's removed checksum feature"
    else:
        what = f"{'partial download' if kind is BaseKind.PARTIAL else 'partial conversion'}"
    if f.age >= limit:
        reason = f"stale {what}: untouched for {human_age(f.age)} (limit {human_age(limit)})"
        return _decide(f, Verdict.STALE_PARTIAL, reason, limit)
    if kind is BaseKind.INFO:
        reason = f"{what}, too young: removable in {human_age(limit - f.age)}"
        return _decide(f, Verdict.TOO_YOUNG, reason, limit)
    reason = (
        f"{what} in progress: touched {human_age(f.age)} ago, "
        f"stale in {human_age(limit - f.age)}"
    )
    return _decide(f, Verdict.DOWNLOADING, reason, limit)


def rule_deleted_image(f: Facts) -> Decision | None:
    """An unused base of an image deleted or deactivated in Glance can never be used by
    a new instance: it goes after deleted_image_min_age_seconds (1 h by default, not nova's
    24 h), never inside the spawn hold."""
    if f.image is None or not f.image.gone or f.base.kind not in (BaseKind.ORIGINAL,
                                                                  BaseKind.RESIZED):
        return None
    normal = (f.config.remove_unused_resized_minimum_age_seconds
              if f.base.kind is BaseKind.RESIZED
              else f.config.remove_unused_original_minimum_age_seconds)
    limit = max(min(f.config.deleted_image_min_age_seconds, normal),
                f.config.spawn_hold_seconds)
    what = f"unused {f.base.kind} of a {f.image.status} image: {f.image.words()}"
    if f.released is not None:
        what += f"; {f.released}"
    if f.age >= limit:
        return _decide(f, Verdict.REMOVE, f"{what}; unused for {human_age(f.age)} "
                       f"(min age {human_age(limit)})", limit)
    return _decide(f, Verdict.TOO_YOUNG, f"{what}; too young: removable in "
                   f"{human_age(limit - f.age)}", limit)


def rule_minimum_age(f: Facts) -> Decision | None:
    """Nova's rule: an unused base is removed once it is older than its kind's minimum age
    (resized copies 1 h; originals, swap and ephemeral 24 h by default)."""
    kind = f.base.kind
    if kind is BaseKind.RESIZED:
        limit = f.config.remove_unused_resized_minimum_age_seconds
    elif kind in (BaseKind.ORIGINAL, BaseKind.SWAP, BaseKind.EPHEMERAL):
        limit = f.config.remove_unused_original_minimum_age_seconds
    else:
        return None
    hold = f.config.spawn_hold_seconds
    if f.age >= limit and f.age < hold:
        # Nova touches a base right before it creates a disk on it, without its lock, and
        # a fetch leaves a fresh mtime: whatever the minimum ages say (they may be zero),
        # a base modified this recently may be about to get a disk.
        reason = (f"unused {kind}, too young: modified {human_age(max(f.age, 0))} ago, inside "
                  f"the spawn hold ({human_age(hold)}): a spawn may be creating its disk on it")
        return _decide(f, Verdict.TOO_YOUNG, reason, hold)
    if f.age >= limit:
        reason = f"unused {kind}, unused for {human_age(f.age)} (min age {human_age(limit)})"
        return _decide(f, Verdict.REMOVE, reason, limit)
    reason = f"unused {kind}, too young: removable in {human_age(limit - f.age)}"
    return _decide(f, Verdict.TOO_YOUNG, reason, limit)


RULES: Sequence[Rule] = (
    rule_only_nova_names,
    rule_last_copy,
    rule_in_use,
    rule_sources_answered,
    rule_hold_on_doubt,
    rule_fetch_in_progress,
    rule_pinned,
    rule_configuration,
    rule_stale_partial,
    rule_deleted_image,
    rule_minimum_age,
)


EVICTABLE_KINDS = _SPAWN_KINDS
# Verdicts that eviction may overturn: unused bases kept only by their age (or by nova's
# remove_unused_base_images = False, which governs nova's age rule, not the budget).
EVICTABLE_VERDICTS = frozenset({Verdict.TOO_YOUNG, Verdict.KEPT_BY_CONFIG})


def cache_bytes(inventory: Inventory) -> int:
    """Allocated bytes of the cache's regular files, trash included (it still takes its
    space), each inode once."""
    seen: dict[tuple[int, int], int] = {}
    for b in inventory.bases:
        if b.kind not in (BaseKind.DIRECTORY, BaseKind.SYMLINK, BaseKind.SPECIAL):
            seen[(b.dev, b.ino)] = b.allocated
    for t in inventory.trash:
        seen[(t.dev, t.ino)] = t.allocated
    return sum(seen.values())


def trash_frees(inventory: Inventory) -> int:
    """What the trash gives back once its grace periods end: space already on its way
    out, so eviction must not take more bases for it (that would cascade every pass)."""
    return sum(t.frees for t in inventory.trash)


_FREES_NOTHING = "frees nothing"


def eviction_blocked(f: Facts, d: Decision, budget: BudgetConfig, now: float) -> str | None:
    """Why an unused base kept only by its age may not be evicted, or None when it may."""
    if d.verdict not in EVICTABLE_VERDICTS or f.base.kind not in EVICTABLE_KINDS:
        return str(d.verdict)
    if now - d.idle_since() < budget.eviction_min_age_seconds:
        return "too young to evict"
    if f.age < f.config.spawn_hold_seconds:
        return "inside the spawn hold"
    if f.base.nlink > 1:
        return "hard-linked"
    if d.allocated == 0:
        return _FREES_NOTHING
    return None


def rule_evict_least_recently_used(
    chosen: list[tuple[Facts, Decision]], config: PolicyConfig, observed: Observed,
    inventory: Inventory, now: float,
) -> tuple[list[Decision], BudgetOutcome]:
    """Over budget: after the age-based removals, evict unused bases, least recently
    used first (never seen in use: oldest mtime first), until every limit is met. Never
    an in-use, pinned, held or too-young-to-evict file; what cannot go is the shortfall."""
    budget = config.budget
    state = measure(budget, cache_bytes(inventory),
                    observed.fs if budget.uses_file_system else None,
                    observed.fs_error if budget.uses_file_system else None)
    decisions = [d for _, d in chosen]
    by_age = sum(d.frees for d in decisions if d.removes)
    in_trash = trash_frees(inventory)
    remaining = state.need - by_age - in_trash
    kept: dict[str, int] = defaultdict(int)
    candidates: list[tuple[bool, float, str, int]] = []
    for i, (f, d) in enumerate(chosen):
        if d.removes:
            continue
        if d.verdict in EVICTABLE_VERDICTS and f.base.kind in EVICTABLE_KINDS:
            why = eviction_blocked(f, d, budget, now)
            if why is None:
                candidates.append((*d.eviction_key(), i))
            elif why != _FREES_NOTHING:
                kept[why] += d.allocated
            continue
        kept[str(d.verdict)] += d.allocated
    evicted = by_eviction = 0
    if remaining > 0:
        candidates.sort()
        for n, (*_, i) in enumerate(candidates):
            if remaining <= 0:
                for *_, j in candidates[n:]:
                    kept["not needed"] += decisions[j].allocated
                break
            f, d = chosen[i]
            if f.last_used is not None and f.last_used >= f.base.mtime:
                when = f"last used {human_age(now - f.last_used)} ago"
            elif f.last_used is not None:
                when = (f"last used {human_age(now - f.last_used)} ago, touched "
                        f"{human_age(now - f.base.mtime)} ago")
            else:
                when = f"never seen in use, modified {human_age(now - f.base.mtime)} ago"
            first = (f"{f.image.words()}: evicted first; "
                     if f.image is not None and f.image.gone else "")
            reason = (f"over budget by {human_bytes(remaining)}; {first}least recently used "
                      f"({when}); frees {human_bytes(d.allocated)}")
            decisions[i] = _decide(f, Verdict.EVICT, reason, budget.eviction_min_age_seconds)
            remaining -= decisions[i].frees
            by_eviction += decisions[i].frees
            evicted += 1
    kept.pop("not needed", None)
    outcome = BudgetOutcome(state, by_age, by_eviction, evicted, max(0, remaining),
                            dict(kept) if remaining > 0 else {}, in_trash)
    return decisions, outcome


class _Judge:
    """Everything a decision about one base reads, indexed once per inventory: the plan
    and the executor's re-check under nova's lock both decide through this one object,
    so they cannot judge a file differently."""

    def __init__(self, inventory: Inventory, config: PolicyConfig, now: float,
                 observed: Observed) -> None:
        self.inventory = inventory
        self.config = config
        self.now = now
        self.observed = observed
        # index the problems once: a node with thousands of broken disks stays linear
        self.by_kind: dict[BaseKind, list[int]] = {}
        self.by_name: dict[str, list[int]] = {}
        for i, p in enumerate(inventory.problems):
            for kind in p.holds_kinds:
                self.by_kind.setdefault(kind, []).append(i)
            for name in p.holds_names:
                self.by_name.setdefault(name, []).append(i)
        # the freshest .part / .converted of each name: a fetch of it may be running
        self.fetching: dict[str, tuple[str, float]] = {}
        for b in inventory.bases:
            if b.kind in (BaseKind.PARTIAL, BaseKind.CONVERTED):
                stem = b.name.rsplit(".", 1)[0]
                age = now - b.mtime
                if stem not in self.fetching or age < self.fetching[stem][1]:
                    self.fetching[stem] = (b.name, age)

    def facts(self, base: BaseFile) -> Facts:
        inventory, observed, problems = self.inventory, self.observed, self.inventory.problems
        disks = inventory.users_of(base.name)
        users = tuple(dict.fromkeys([d.instance for d in disks]))
        held: tuple[Problem, ...] = ()
        if problems:  # most nodes have none: skip the index lookups
            hits = set(self.by_kind.get(base.kind, ())) | set(self.by_name.get(base.name, ()))
            held = tuple([problems[i] for i in sorted(hits)])
        named = tuple([f"{path} (of {disk.path})"
                       for disk, path in inventory.named.get(base.name, ())])
        image = released = None
        if base.image_hash is not None and observed.images:
            image = observed.images.get(base.image_hash)
            released = observed.released.get(base.image_hash)
        return Facts(base, self.now - base.mtime, users, tuple([d.path for d in disks]),
                     held, self.config,
                     observed.pins.match(base.name, base.kind, base.image_hash),
                     observed.last_used.get(base.name),
                     tuple(observed.sightings.get(base.name, ())), observed.source_errors,
                     observed.corrupt.get(base.name), named, self.fetching.get(base.name),
                     image, released)

    def __call__(self, base: BaseFile) -> tuple[Facts, Decision]:
        facts = self.facts(base)
        for rule in RULES:
            decision = rule(facts)
            if decision is not None:
                return facts, decision
        # every kind is covered above; a new kind must not be removed by accident
        return facts, _decide(facts, Verdict.UNKNOWN, "no rule applies; kept")


def recheck(inventory: Inventory, config: PolicyConfig, now: float, observed: Observed,
            planned: Sequence[Decision]) -> dict[str, str | None]:
    """The executor's last word under nova's lock, by the plan's own rules: for each
    planned removal, why it must not go now (None: it may). A file the plan evicted stays
    evictable while its rules still keep it only by age and the eviction guards pass; the
    budget's arithmetic is the plan's (the need does not shrink as the batch goes)."""
    judge = _Judge(inventory, config, now, observed)
    present = {b.name: b for b in inventory.bases}
    out: dict[str, str | None] = {}
    for planned_d in planned:
        base = present.get(planned_d.name)
        if base is None:
            out[planned_d.name] = "already gone"
            continue
        if (base.dev, base.ino) != (planned_d.dev, planned_d.ino):
            out[planned_d.name] = "replaced since the plan"
            continue
        if base.mtime != planned_d.mtime:
            out[planned_d.name] = "modified since the plan (touched by nova: in use?)"
            continue
        facts, d = judge(base)
        if d.kind not in DELETABLE_KINDS:
            out[planned_d.name] = f"{d.kind}: never removed"
        elif planned_d.verdict is Verdict.EVICT and not d.removes:
            why = eviction_blocked(facts, d, config.budget, now)
            if why is None:
                out[planned_d.name] = None
            elif d.verdict in EVICTABLE_VERDICTS:
                out[planned_d.name] = f"no longer evictable: {why}"
            else:
                out[planned_d.name] = _now(d)
        elif d.removes:
            out[planned_d.name] = None
        else:
            out[planned_d.name] = _now(d)
    return out


def _now(d: Decision) -> str:
    """A re-check's answer in the plan's words: "now in use by ...", "now held: ..."."""
    words = str(d.verdict).replace("-", " ")
    if d.reason.startswith((str(d.verdict), words)):
        return f"now {d.reason}"
    return f"now {d.verdict}: {d.reason}"


def decide(inventory: Inventory, config: PolicyConfig, now: float,
           observed: Observed | None = None) -> Plan:
    """Turn an inventory into a plan. Pure: same inputs, same plan."""
    observed = observed if observed is not None else Observed()
    judge = _Judge(inventory, config, now, observed)
    chosen = [judge(base) for base in inventory.bases]
    problems = inventory.problems
    budget: BudgetOutcome | None = None
    if config.budget.enabled:
        decisions, budget = rule_evict_least_recently_used(chosen, config, observed,
                                                           inventory, now)
    else:
        decisions = [d for _, d in chosen]
    for i, decision in enumerate(decisions):  # defence in depth, after every rule
        if decision.removes and decision.kind not in DELETABLE_KINDS:
            decisions[i] = _decide(chosen[i][0], Verdict.UNKNOWN,
                                   f"{decision.kind}: never removed")
    return Plan(
        instances_path=inventory.instances_path,
        cache_path=inventory.cache_path,
        now=now,
        decisions=tuple(decisions),
        problems=problems,
        disks_seen=len(inventory.disks),
        folders_seen=inventory.folders,
        policy=asdict(config),
        budget=budget,
        notes=observed.notes,
        trash=inventory.trash,
        trash_grace=config.trash_grace_seconds,
    )
