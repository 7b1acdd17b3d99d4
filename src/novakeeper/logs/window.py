"""`--since` / `--until`: a time window, absolute (`2026-11-20 10:00`, ISO 8601 with an
offset) or relative to now (`90m`, `2h`, `7d`, `1w`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from novakeeper.errors import ExitCode, NovakeeperError

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d|day|days|w|week|weeks)\s*$",
                       re.IGNORECASE)
_UNIT = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400,
         "day": 86400, "days": 86400, "w": 604800, "week": 604800, "weeks": 604800}


@dataclass(frozen=True)
class Window:
    """Aware UTC datetimes; None is open."""

    since: datetime | None = None
    until: datetime | None = None

    def __bool__(self) -> bool:
        return self.since is not None or self.until is not None

    def holds(self, when: datetime | None) -> bool:
        if when is None:
            return True
        return ((self.since is None or when >= self.since)
                and (self.until is None or when <= self.until))

    def describe(self) -> str:
        if not self:
            return "all times"
        since = self.since.strftime("%Y-%m-%d %H:%M:%S") if self.since else "the start"
        until = self.until.strftime("%Y-%m-%d %H:%M:%S") if self.until else "the end"
        return f"{since} to {until} UTC"


ALL_TIMES = Window()


def parse_when(text: str, option: str, default_tz: timezone = UTC,
               now: datetime | None = None) -> datetime:
    """An absolute time (naive: in `default_tz`, the logs' own zone) or `<n><unit>` ago."""
    m = _RELATIVE.match(text)
    if m:
        ago = timedelta(seconds=float(m.group(1)) * _UNIT[m.group(2).lower()])
        return (now or datetime.now(UTC)) - ago
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise NovakeeperError(
            ExitCode.USAGE,
            f"bad {option} {text!r}: use a time like '2026-11-20 10:00' or "
            "'2026-11-20T10:00:00+01:00', or a duration ago like 90m, 2h, 7d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=default_tz)
    return when.astimezone(UTC)


def window(since: str | None, until: str | None, default_tz: timezone = UTC,
           now: datetime | None = None) -> Window:
    w = Window(parse_when(since, "--since", default_tz, now) if since else None,
               parse_when(until, "--until", default_tz, now) if until else None)
    if w.since and w.until and w.since > w.until:
        raise NovakeeperError(ExitCode.USAGE, "--since is after --until")
    return w
