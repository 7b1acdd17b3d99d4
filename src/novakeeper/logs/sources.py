"""Which log files a command reads, and what each one is: its service (nova-compute), the
host folder it came from and the time zone its naive timestamps are in.

Operators copy logs from several hosts into one folder per host, so a file is named by
its service and, when two hosts have the same service, by its host folder too.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, timedelta, timezone

from novakeeper.errors import ExitCode, NovakeeperError

PROJECTS = ("nova", "neutron", "glance", "cinder", "placement", "keystone")
DEFAULT_GLOBS = tuple(f"/var/log/{project}/*.log*" for project in PROJECTS)

# Folder names that say nothing about the host a file came from.
_GENERIC_DIRS = frozenset({*PROJECTS, "log", "logs", "var", "apache2", "httpd", "tmp",
                           "kolla", "containers", "openstack", ""})
_GZIP_MAGIC = b"\x1f\x8b"
_OFFSET_RE = re.compile(r"^(?:(?P<utc>Z|UTC)|(?P<sign>[+-])(?P<h>\d{1,2}):?(?P<m>\d{2})?)$",
                        re.IGNORECASE)


@dataclass(frozen=True)
class TzRule:
    """`--tz-offset PATTERN=+HH:MM`: files matching PATTERN logged in that offset."""

    pattern: str
    tz: timezone


@dataclass(frozen=True)
class LogFile:
    index: int
    path: str
    service: str  # nova-compute, from the file name (or its project folder)
    label: str  # what the timeline shows: the service, with the host when it is ambiguous
    host: str | None  # the nearest folder that is not a project or /var/log name
    tz: timezone  # for timestamps written without an offset
    compressed: bool
    size: int  # bytes on disk
    work: int  # bytes to read: the uncompressed size for gzip (from its trailer)


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class Discovery:
    files: list[LogFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. a glob that matched nothing
    looked_in: tuple[str, ...] = ()


def parse_offset(text: str) -> timezone:
    """'+01:00', '-0530', '+2', 'Z', 'UTC' -> a fixed offset."""
    m = _OFFSET_RE.match(text.strip())
    if not m:
        raise NovakeeperError(ExitCode.USAGE,
                              f"bad time zone offset {text!r}: use +HH:MM, -HH:MM or UTC")
    if m.group("utc"):
        return UTC
    minutes = int(m.group("h")) * 60 + int(m.group("m") or 0)
    if minutes >= 24 * 60:
        raise NovakeeperError(ExitCode.USAGE, f"bad time zone offset {text!r}: out of range")
    sign = -1 if m.group("sign") == "-" else 1
    return timezone(timedelta(minutes=sign * minutes))


def parse_tz_rule(text: str) -> TzRule:
    pattern, sep, offset = text.rpartition("=")
    if not sep or not pattern:
        raise NovakeeperError(ExitCode.USAGE,
                              f"bad --tz-offset {text!r}: use PATTERN=+HH:MM, "
                              "e.g. 'compute2/*=+01:00'")
    return TzRule(pattern, parse_offset(offset))


def service_name(path: str) -> str:
    """nova-compute.log.2.gz -> nova-compute; neutron/server.log -> neutron-server."""
    name = os.path.basename(path)
    if name.endswith(".gz"):
        name = name[:-3]
    name = re.sub(r"\.\d+$", "", name)  # logrotate's .1, .2
    name = re.sub(r"-\d{8}(?:\d{2})?$", "", name)  # logrotate's dateext
    name = re.sub(r"\.log$", "", name)
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    if parent in PROJECTS and not name.startswith(parent):
        name = f"{parent}-{name}"  # RDO's /var/log/neutron/server.log
    return name or os.path.basename(path)


# For logs that mix services (a whole project in one file, a syslog copy): the logger
# names which nova service wrote a record. First match wins.
_LOGGER_SERVICES = (
    ("nova.api.", "nova-api"), ("nova.compute.api", "nova-api"),
    ("nova.scheduler.", "nova-scheduler"), ("nova.filters", "nova-scheduler"),
    ("nova.conductor.", "nova-conductor"), ("nova.virt.", "nova-compute"),
    ("nova.compute.manager", "nova-compute"), ("nova.compute.resource_tracker", "nova-compute"),
    ("nova.compute.claims", "nova-compute"), ("nova.network.", "nova-compute"),
    ("neutron.", "neutron-server"),
    ("glance.", "glance-api"), ("cinder.volume.", "cinder-volume"),
    ("cinder.api.", "cinder-api"), ("placement.", "placement-api"), ("keystone.", "keystone"),
)
# What a file named only by its project (nova.log) may hold.
PROJECT_SERVICES = {
    "nova": ("nova-api", "nova-scheduler", "nova-conductor", "nova-compute"),
    "neutron": ("neutron-server",), "glance": ("glance-api",),
    "cinder": ("cinder-api", "cinder-scheduler", "cinder-volume"),
    "placement": ("placement-api",), "keystone": ("keystone",),
}
_KNOWN_SERVICE = re.compile(r"^(nova|neutron|glance|cinder|placement)-|^keystone")


def service_of(f: LogFile, logger: str) -> tuple[str, str]:
    """(service, label) of one record: the file's, unless the file name says no more than
    a project (`nova.log`) or nothing (`messages`), when the logger tells."""
    if _KNOWN_SERVICE.match(f.service):
        return f.service, f.label
    for prefix, service in _LOGGER_SERVICES:
        if logger.startswith(prefix):
            return service, f"{f.host}:{service}" if f.host and f.label != f.service else (
                service)
    return f.service, f.label


def is_rotated(path: str) -> bool:
    """nova-api.log.1, nova-api.log-20261120, nova-api.log.2.gz: not the current log."""
    name = os.path.basename(path)
    if name.endswith(".gz"):
        return True
    return re.search(r"\.\d+$|-\d{8}(?:\d{2})?$", name) is not None


def host_of(path: str) -> str | None:
    for part in reversed(os.path.dirname(os.path.abspath(path)).split(os.sep)):
        if part not in _GENERIC_DIRS:
            return part
    return None


def tz_for(path: str, rules: Sequence[TzRule], default: timezone) -> timezone:
    """The first rule whose glob matches the path, a path ending or a folder name wins."""
    full = os.path.abspath(path)
    parts = full.split(os.sep)
    for rule in rules:
        p = rule.pattern
        if (fnmatch.fnmatchcase(full, p) or fnmatch.fnmatchcase(full, "*/" + p.lstrip("/"))
                or any(fnmatch.fnmatchcase(part, p) for part in parts)):
            return rule.tz
    return default


def _gzip_size(f_path: str, size: int) -> int:
    """Uncompressed size from the gzip trailer (modulo 4 GiB; a guess for scheduling)."""
    try:
        with open(f_path, "rb") as f:
            f.seek(max(0, size - 4))
            isize: int = struct.unpack("<I", f.read(4).rjust(4, b"\0"))[0]
    except OSError:
        return size * 8
    return max(isize, size)


def _probe(path: str) -> tuple[bool, int] | str:
    """(compressed, size), or why the file cannot be read."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            magic = f.read(2)
    except PermissionError:
        return "permission denied"
    except IsADirectoryError:
        return "is a directory"
    except OSError as exc:
        return exc.strerror or str(exc)
    return magic == _GZIP_MAGIC, size


def _expand(arg: str, explicit: bool, found: list[str], disc: Discovery) -> None:
    if glob.has_magic(arg):
        matches = sorted(glob.glob(arg, recursive=True))
        if not matches and explicit:
            disc.notes.append(f"{arg}: matched no file")
        for m in matches:
            _expand(m, explicit=False, found=found, disc=disc)
        return
    if os.path.isdir(arg):
        def onerror(exc: OSError) -> None:
            disc.skipped.append(Skipped(exc.filename or arg, "permission denied"
                                        if isinstance(exc, PermissionError)
                                        else exc.strerror or str(exc)))

        for root, dirs, names in os.walk(arg, onerror=onerror):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(os.path.join(root, n) for n in sorted(names)
                         if ".log" in n and not n.startswith("."))
        return
    if os.path.lexists(arg):
        found.append(arg)
    elif explicit:
        raise NovakeeperError(ExitCode.PATH, f"{arg}: no such file or folder")


def discover(args: Sequence[str], rules: Sequence[TzRule] = (),
             default_tz: timezone = UTC) -> Discovery:
    """Files named, globbed or inside folders given (recursively, names with `.log`), or
    the default /var/log set. Unreadable files are listed in `skipped`, not raised."""
    disc = Discovery(looked_in=tuple(args) or DEFAULT_GLOBS)
    found: list[str] = []
    for arg in args or DEFAULT_GLOBS:
        _expand(arg, explicit=bool(args), found=found, disc=disc)
    seen: set[str] = set()
    probed: list[tuple[str, bool, int]] = []
    for path in found:
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        result = _probe(path)
        if isinstance(result, str):
            if result != "is a directory":
                disc.skipped.append(Skipped(path, result))
            continue
        compressed, size = result
        probed.append((path, compressed, size))
    services = [service_name(p) for p, _, _ in probed]
    hosts = [host_of(p) for p, _, _ in probed]
    hosts_by_service: dict[str, set[str | None]] = {}
    for service, host in zip(services, hosts, strict=True):
        hosts_by_service.setdefault(service, set()).add(host)
    for (path, compressed, size), service, host in zip(probed, services, hosts, strict=True):
        ambiguous = len(hosts_by_service[service]) > 1
        label = f"{host}:{service}" if ambiguous and host else service
        work = _gzip_size(path, size) if compressed else size
        disc.files.append(LogFile(len(disc.files), path, service, label, host,
                                  tz_for(path, rules, default_tz), compressed, size, work))
    return disc
