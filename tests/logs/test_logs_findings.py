"""Each gap finding, from what a trace found: never reached the API, reached it but no
further (message queue?), a silent component (hung?), and what cannot be judged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from novakeeper.logs import findings as f
from novakeeper.logs.records import Record, parse_record

T = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
REQ = "req-c381e88f-38c0-48fd-a712-b8bc076f3787"
OTHER = "req-0f1e2d3c-4b5a-4968-8776-655443322110"
INST = "b9d179e0-6c0f-44f5-a813-0c4237730edf"
ALL = {"nova-api", "nova-scheduler", "nova-conductor", "nova-compute", "neutron-server"}


def rec(message: str, req: str | None = REQ, level: str = "INFO",
        when: datetime = T) -> Record:
    context = f"[None {req} u p - d d]" if req else "[-]"
    stamp = when.strftime("%Y-%m-%d %H:%M:%S.000")
    return parse_record(f"{stamp} 1 {level} nova.x {context} {message}".encode(), 0, 0, UTC)


def api_log(method: str, path: str, status: int, req: str = REQ) -> Record:
    return rec(f'10.0.0.5 "{method} {path}" status: {status} len: 437 microversion: 2.79')


def facts(*records: tuple[Record, str], read: set[str] = ALL, **kw: object) -> f.TraceFacts:
    return f.TraceFacts(INST, [(r, s, s) for r, s in records], services_read=read,
                        files_read=12, **kw)  # type: ignore[arg-type]


def codes(found: list[f.Finding]) -> list[str]:
    return [x.code for x in found]


def test_nothing_found_never_reached_the_api() -> None:
    out = f.findings(facts())
    assert codes(out) == ["not-found"] and out[0].kind == f.GAP
    assert "never reached the API" in out[0].advice
    no_api = f.findings(facts(read={"nova-compute"}))
    assert "no API log" in no_api[0].evidence[1]


def test_only_non_api_components_never_reached_the_api() -> None:
    out = f.findings(facts((rec(f"[instance: {INST}] VM Started (Lifecycle Event)",
                                req=None), "nova-compute")))
    assert codes(out) == ["never-reached-api"]
    cannot_tell = f.findings(facts((rec("x", req=None), "nova-compute"),
                                   read={"nova-compute"}))
    assert codes(cannot_tell) == ["no-api-logs", "no-gap"]
    assert cannot_tell[0].kind == f.NOTE


@pytest.mark.parametrize(("method", "path", "status", "gap"), [
    ("POST", "/v2.1/servers", 202, True),  # boot: conductor must see it
    ("POST", f"/v2.1/servers/{INST}/action", 202, True),  # reboot, resize...
    ("DELETE", f"/v2.1/servers/{INST}", 204, True),
    ("GET", f"/v2.1/servers/{INST}", 200, False),  # answered by the API alone
    ("POST", "/v2.1/servers", 400, False),  # refused by the API: never meant to go on
    ("PUT", f"/v2.1/servers/{INST}", 200, False),  # a rename: API and database only
])
def test_reached_the_api_but_no_further(method: str, path: str, status: int,
                                        gap: bool) -> None:
    out = f.findings(facts((api_log(method, path, status), "nova-api")))
    assert ("no-downstream" in codes(out)) == gap
    if gap:
        assert "message queue" in out[0].advice and REQ in out[0].title


def test_downstream_line_with_the_request_id_closes_the_gap() -> None:
    out = f.findings(facts((api_log("POST", "/v2.1/servers", 202), "nova-api"),
                           (rec("Starting to schedule"), "nova-scheduler")))
    assert codes(out) == ["no-gap"]
    # a downstream line of another request does not
    out = f.findings(facts((api_log("POST", "/v2.1/servers", 202), "nova-api"),
                           (rec("Starting to schedule", req=OTHER), "nova-scheduler")))
    assert codes(out) == ["no-downstream"]


def test_without_a_request_log_line_any_downstream_record_is_enough() -> None:
    lone = f.findings(facts((rec("Going to run 1 instances"), "nova-api")))
    assert codes(lone) == ["no-downstream"]
    assert "any of its request ids" in lone[0].title


def test_no_downstream_logs_cannot_be_judged() -> None:
    out = f.findings(facts((api_log("POST", "/v2.1/servers", 202), "nova-api"),
                           read={"nova-api"}))
    assert codes(out) == ["no-downstream-logs", "no-gap"]


def test_a_component_silent_before_the_failure() -> None:
    failure = T + timedelta(hours=1)
    quiet = f.Activity("compute3:nova-compute", failure - timedelta(minutes=40), None,
                       in_trace=False, named=True)
    busy = f.Activity("nova-conductor", failure - timedelta(seconds=3),
                      failure + timedelta(seconds=2), in_trace=True)
    out = f.findings(facts((api_log("POST", "/v2.1/servers", 202), "nova-api"),
                           (rec("Selected host: compute3;"), "nova-conductor"),
                           failure=failure, failure_is_error=True, activity=[quiet, busy]))
    assert codes(out) == ["silent"]
    assert out[0].title.startswith("compute3:nova-compute logged nothing for 40 min before "
                                   "the failure at 2026-11-20 11:00:00 UTC")
    assert out[0].evidence == ("last line 2026-11-20 10:20:00 UTC; nothing after it either",
                               "its host is named in this trace, but it has no line in it")
    spoke_again = f.Activity("nova-scheduler", failure - timedelta(minutes=15),
                             failure + timedelta(minutes=5), in_trace=True)
    out = f.findings(facts((rec("x"), "nova-api"), (rec("y"), "nova-scheduler"),
                           failure=failure, activity=[spoke_again],
                           silence=timedelta(minutes=10)))
    assert codes(out) == ["silent"] and "logged again 5 min later" in out[0].evidence[0]
    assert "the trace's last line" in out[0].title
    assert codes(f.findings(facts((rec("x"), "nova-api"), (rec("y"), "nova-scheduler"),
                                  failure=failure, activity=[spoke_again],
                                  silence=timedelta(minutes=20)))) == ["no-gap"]


def test_every_component_reached_is_no_gap() -> None:
    out = f.findings(facts((api_log("POST", "/v2.1/servers", 202), "nova-api"),
                           (rec("Claim successful", level="ERROR"), "nova-compute"),
                           failure_is_error=True))
    assert codes(out) == ["no-gap"] and out[0].kind == f.NOTE
    assert "start from the first error" in out[0].advice


def test_roles_and_api_services() -> None:
    assert f.role("nova-compute") == "nova-compute"
    assert f.role("nova-api-os-compute") == "nova-api"
    assert f.is_api("glance-api") and f.is_api("neutron-server") and f.is_api("keystone")
    assert not f.is_api("nova-compute") and not f.is_api("cinder-volume")
    assert f.hosts_named([rec("Selected host: compute3; Selected node: compute3;"),
                          rec("Claim successful on node compute1 ")]) == {"compute3",
                                                                          "compute1"}
