"""What a check is and what it finds: plain data, so that the table, the JSON, the exit
code and the tests all read the same findings."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from novakeeper.errors import ExitCode

if TYPE_CHECKING:
    from novakeeper.doctor.facts import Facts


class Status(IntEnum):
    """Ordered by how bad: the worst status of a run picks the exit code."""

    OK = 0
    SKIP = 1  # could not run here (no credentials, no permission, nothing to look at)
    WARN = 2
    FAIL = 3


EXIT_CODES: Mapping[Status, int] = {
    Status.OK: ExitCode.OK,
    Status.SKIP: ExitCode.OK,  # a check that could not run is reported, not failed
    Status.WARN: ExitCode.DOCTOR_WARN,
    Status.FAIL: ExitCode.DOCTOR_FAIL,
}


@dataclass(frozen=True)
class Finding:
    """One result of one check. `fix` is a command or a config line for the operator."""

    check: str
    status: Status
    finding: str
    fix: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status.name, "finding": self.finding,
                "fix": self.fix, "data": dict(self.data)}


@dataclass(frozen=True)
class Check:
    """A check: its id (stable, for --only/--skip, JSON and tests), what it looks at and
    the kind of fix it suggests (both shown by --list and in README), and the function
    that looks. `run` returns its findings; none means OK."""

    id: str
    title: str
    looks_at: str
    suggests: str
    run: Callable[[Facts], Iterable[Finding]]

    @property
    def area(self) -> str:
        return self.id.split(".", 1)[0]

    def ok(self, finding: str, **data: Any) -> Finding:
        return Finding(self.id, Status.OK, finding, data=data)

    def skip(self, why: str, **data: Any) -> Finding:
        return Finding(self.id, Status.SKIP, why, data=data)

    def warn(self, finding: str, fix: str, **data: Any) -> Finding:
        return Finding(self.id, Status.WARN, finding, fix, data)

    def fail(self, finding: str, fix: str, **data: Any) -> Finding:
        return Finding(self.id, Status.FAIL, finding, fix, data)


def worst(findings: Sequence[Finding]) -> Status:
    return max((f.status for f in findings), default=Status.OK)


def exit_code(findings: Sequence[Finding]) -> int:
    return int(EXIT_CODES[worst(findings)])


def nearest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The closest known spelling of a mistyped word, if one is close enough."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return found[0] if found else None
