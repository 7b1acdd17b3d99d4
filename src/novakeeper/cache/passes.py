"""One cache pass, end to end: scan -> (cross-check) -> decide. The CLI, the demo and the
benchmark all go through here, so they run exactly the same code."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from novakeeper.cache.inventory import Inventory, Problem, ProblemCode, Scanner, with_problems
from novakeeper.cache.layout import kinds_usable_by
from novakeeper.cache.plan import Plan
from novakeeper.cache.policy import decide
from novakeeper.images import crosscheck
from novakeeper.settings import Settings


@dataclass(frozen=True)
class Pass:
    scanner: Scanner
    inventory: Inventory
    plan: Plan
    disagreements: int = 0


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


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """A scan builds a few small objects per disk that all stay alive until the pass
    ends, and none of them form cycles. The cyclic collector would walk every one of them
    again at each full collection: a cost that grows faster than the node (a tenth of a
    10,000-disk pass, a quarter of a 50,000-disk one; see docs/benchmarks.md). Reference
    counting still frees everything as usual; only the cycle hunt waits for the end."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def plan_pass(settings: Settings, now: float | None = None, check: bool = False) -> Pass:
    scanner = Scanner(settings.instances_path, settings.subdirectory_name)
    with _cyclic_gc_paused():
        inventory = scanner.scan()
    disagreements = 0
    if check:
        extra = cross_check(inventory)
        disagreements = len(extra)
        inventory = with_problems(inventory, extra)
    with _cyclic_gc_paused():
        plan = decide(inventory, settings.policy, time.time() if now is None else now)
    return Pass(scanner, inventory, plan, disagreements)
