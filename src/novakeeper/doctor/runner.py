"""Runs the selected checks; a check that raises never stops the others: Unavailable is a
SKIP with its reason, anything else a SKIP that names the error (a bug to report)."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence

from novakeeper.doctor import cloud, conf, node
from novakeeper.doctor.facts import Facts, Unavailable
from novakeeper.doctor.model import Check, Finding, nearest
from novakeeper.errors import ExitCode, NovakeeperError

CHECKS: tuple[Check, ...] = (*conf.CHECKS, *node.CHECKS, *cloud.CHECKS)


def select(only: Sequence[str] = (), skip: Sequence[str] = ()) -> list[Check]:
    """Checks by id; `conf`, `conf.*` or `conf.cache-*` name several. An unknown name is a
    usage error that suggests the nearest id."""
    ids = [c.id for c in CHECKS]

    def matching(pattern: str) -> list[str]:
        pattern = pattern.strip()
        if "." not in pattern and "*" not in pattern:
            pattern += ".*"  # an area: conf, node, cloud
        found = fnmatch.filter(ids, pattern)
        if not found:
            near = nearest(pattern, ids)
            hint = f" (did you mean {near}?)" if near else " (see `novakeeper doctor --list`)"
            raise NovakeeperError(ExitCode.USAGE, f"no check {pattern!r}{hint}")
        return found

    def expand(values: Sequence[str]) -> set[str]:
        return {i for v in values for part in v.split(",") if part.strip()
                for i in matching(part)}

    chosen = expand(only) if only else set(ids)
    chosen -= expand(skip)
    return [c for c in CHECKS if c.id in chosen]


def run_check(check: Check, facts: Facts) -> list[Finding]:
    try:
        found = list(check.run(facts))
    except Unavailable as exc:
        return [check.skip(str(exc))]
    except NovakeeperError as exc:
        return [check.skip(exc.message)]
    except Exception as exc:  # one broken check must not hide the others
        return [check.skip(f"could not run: {type(exc).__name__}: {exc}")]
    return found or [check.ok("nothing to report")]


def run(checks: Sequence[Check], facts: Facts) -> list[Finding]:
    """oslo.config's own deprecation warnings are silenced: conf.deprecated reports them."""
    oslo = logging.getLogger("oslo_config.cfg")
    level = oslo.level
    oslo.setLevel(logging.ERROR)
    try:
        return [f for check in checks for f in run_check(check, facts)]
    finally:
        oslo.setLevel(level)
