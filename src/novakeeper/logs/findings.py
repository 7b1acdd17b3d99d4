"""The gaps in a trace, read the way the field's troubleshooting procedure reads them:

* the id is nowhere, or no API logged it: the request never reached the API (network);
* nova-api accepted it but no conductor, scheduler or compute line has its request id:
  the cast was lost on the way (message queue);
* a component had logged nothing for more than N minutes before the failure: hung.

Pure functions over what the trace found; the reading of files happens in `trace`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from novakeeper.logs.records import Record
from novakeeper.units import human_age

GAP = "gap"  # one of the procedure's cases applies
NOTE = "note"  # what could not be judged, or that nothing is missing

_DOWNSTREAM = ("nova-scheduler", "nova-conductor", "nova-compute")
# nova's request log: `10.0.0.5 "POST /v2.1/servers" status: 202 len: ...`, and the older
# eventlet wsgi one: `"POST /v2.1/servers HTTP/1.1" status: 202`.
_REQUEST_LOG = re.compile(r'"(GET|POST|PUT|PATCH|DELETE|HEAD) (\S+)[^"]*" status: (\d{3})')
# Calls that nova-api answers by casting to conductor or compute.
_CASTS = re.compile(r"^/(?:v2(?:\.1)?/)?(?:[0-9a-f]{32}/)?servers(?:/[0-9a-f-]{36}"
                    r"(?:/action)?)?/?(?:\?.*)?$")
_HOST_NAMED = re.compile(r"(?:Selected host: |on node |on host |host=)'?([\w.-]+?)'?[;,\s]")


@dataclass(frozen=True)
class Finding:
    code: str
    kind: str  # GAP or NOTE
    title: str  # one line: what was found
    advice: str  # what it suggests and what to check
    evidence: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "kind": self.kind, "title": self.title,
                "advice": self.advice, "evidence": list(self.evidence)}


@dataclass(frozen=True)
class Activity:
    """One component's log around the failure time."""

    label: str
    last_before: datetime | None  # its last line at or before the failure
    first_after: datetime | None  # its first line after it
    in_trace: bool
    named: bool = False  # the trace names its host (`Selected host: compute3`)


@dataclass
class TraceFacts:
    """What findings need to know about a trace."""

    target: str
    records: Sequence[tuple[Record, str, str]]  # (record, service, label)
    services_read: set[str] = field(default_factory=set)
    files_read: int = 0
    failure: datetime | None = None
    failure_is_error: bool = False
    activity: Sequence[Activity] = ()
    silence: timedelta = timedelta(minutes=10)
    window: str = "all times"


def role(service: str) -> str:
    """nova-api, nova-scheduler, nova-conductor, nova-compute, or the service itself."""
    for name in ("nova-api", *_DOWNSTREAM):
        if service == name or service.startswith(name + "-") or service.startswith(name + "_"):
            return name
    return service


def is_api(service: str) -> bool:
    """An OpenStack API service: the first thing a user's request reaches."""
    r = role(service)
    return (r == "nova-api" or r.endswith("-api") or "-api-" in r
            or r in ("neutron-server", "keystone", "placement"))


def hosts_named(records: Iterable[Record]) -> set[str]:
    """Compute hosts a trace names (`Selected host: compute3;`, `Claim successful on node
    compute1`): their nova-compute is checked for silence even if it logged nothing."""
    found: set[str] = set()
    for rec in records:
        for m in _HOST_NAMED.finditer(rec.message + " "):
            found.add(m.group(1))
    return found


def _not_found(facts: TraceFacts) -> Finding:
    api_read = any(is_api(s) for s in facts.services_read)
    evidence = [f"searched {facts.files_read} files, {facts.window}"]
    if not api_read:
        evidence.append("no API log (nova-api, neutron-server, ...) among the files read")
    return Finding(
        "not-found", GAP, f"{facts.target} is in none of the logs read",
        "If a request for it was made, it never reached the API: check the network path to "
        "the API endpoint (DNS, VIP / load balancer, firewall, TLS) with the client's "
        "--debug output; or the logs of the API hosts are not among the files read.",
        tuple(evidence))


def _api_requests(facts: TraceFacts) -> dict[str, tuple[str, str, int] | None]:
    """nova-api's request ids in the trace, with (method, path, status) when its request
    log line was found."""
    found: dict[str, tuple[str, str, int] | None] = {}
    for rec, service, _ in facts.records:
        if role(service) != "nova-api" or not rec.request_id:
            continue
        m = _REQUEST_LOG.search(rec.message)
        if m:
            found[rec.request_id] = (m.group(1), m.group(2), int(m.group(3)))
        else:
            found.setdefault(rec.request_id, None)
    return found


def _queue_gaps(facts: TraceFacts) -> list[Finding]:
    api = _api_requests(facts)
    if not api:
        return []
    downstream_read = [s for s in facts.services_read if role(s) in _DOWNSTREAM]
    if not downstream_read:
        return [Finding("no-downstream-logs", NOTE,
                        "no nova-conductor, nova-scheduler or nova-compute log was read",
                        "Whether the request went past nova-api cannot be told; add those "
                        "services' logs.")]
    reached: set[str] = set()
    for rec, service, _ in facts.records:
        if role(service) in _DOWNSTREAM:
            reached |= rec.request_ids()
    out = []
    known = {r: v for r, v in api.items() if v is not None}
    if known:
        for req, (method, path, status) in sorted(known.items()):
            if (method in ("POST", "DELETE") and status < 400 and _CASTS.match(path)
                    and req not in reached):
                out.append(Finding(
                    "no-downstream", GAP,
                    f"nova-api accepted {method} {path} ({req}, status {status}) but no "
                    "conductor, scheduler or compute line has that request id",
                    "The request reached the API and went no further: suspect the message "
                    "queue. Check RabbitMQ (`rabbitmqctl list_queues name messages "
                    "consumers`, cluster status, alarms) and AMQP errors in the nova "
                    "services' logs; check that nova-conductor is running.",
                    (f"downstream logs read: {', '.join(sorted(downstream_read))}",)))
    elif not reached:
        out.append(Finding(
            "no-downstream", GAP,
            f"nova-api logged {facts.target} but no conductor, scheduler or compute line "
            "has any of its request ids",
            "If the call needed conductor or compute (boot, delete, an action), suspect the "
            "message queue: check RabbitMQ and AMQP errors in the nova services' logs.",
            (f"nova-api request ids: {', '.join(sorted(api))}",)))
    return out


def _silences(facts: TraceFacts) -> list[Finding]:
    if facts.failure is None:
        return []
    what = "the failure" if facts.failure_is_error else "the trace's last line"
    at = facts.failure.strftime("%Y-%m-%d %H:%M:%S")
    out = []
    for a in facts.activity:
        if a.last_before is None:
            continue
        quiet = facts.failure - a.last_before
        if quiet <= facts.silence:
            continue
        after = (f"; it logged again {human_age((a.first_after - facts.failure).total_seconds())}"
                 " later" if a.first_after else "; nothing after it either")
        out.append(Finding(
            "silent", GAP,
            f"{a.label} logged nothing for {human_age(quiet.total_seconds())} before {what} "
            f"at {at} UTC",
            "A service that stops logging may be hung: check it (`systemctl status`, "
            "`ps`), its connection to the message queue and the database; restart it, "
            "with debug=True first if it happens again.",
            (f"last line {a.last_before.strftime('%Y-%m-%d %H:%M:%S')} UTC{after}",
             "in this trace" if a.in_trace else
             "its host is named in this trace, but it has no line in it" if a.named else
             "not in this trace")))
    return out


def findings(facts: TraceFacts) -> list[Finding]:
    if not facts.records:
        return [_not_found(facts)]
    out: list[Finding] = []
    services = {service for _, service, _ in facts.records}
    if not any(is_api(s) for s in services):
        if any(is_api(s) for s in facts.services_read):
            out.append(Finding(
                "never-reached-api", GAP,
                f"no API service logged {facts.target} or its requests",
                "If a user's request for it failed, it never reached the API: check the "
                "network path to the API endpoint (DNS, VIP / load balancer, firewall). "
                "The lines found come from services working on it by themselves "
                "(periodic tasks, events).",
                (f"components: {', '.join(sorted(services))}",)))
        else:
            out.append(Finding("no-api-logs", NOTE, "no API log was among the files read",
                               "Whether the request reached the API cannot be told; add the "
                               "API hosts' logs."))
    out.extend(_queue_gaps(facts))
    out.extend(_silences(facts))
    if not any(f.kind == GAP for f in out):
        roles = sorted({role(s) for s in services})
        out.append(Finding(
            "no-gap", NOTE, "none of the gap cases applies",
            "The request reached every component it needed (" + ", ".join(roles) + "); "
            "start from the first error." if facts.failure_is_error else
            "The request reached every component it needed (" + ", ".join(roles) + ")."))
    return out
