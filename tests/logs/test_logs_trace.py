"""`trace` on a generated multi-service log set: each scenario's timeline, summary and
findings; time zones, rotation, windows, depth; text and JSON output."""

from __future__ import annotations

import io
import itertools
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import loggen
import pytest
from rich.console import Console

from novakeeper.logs import records, render, sources
from novakeeper.logs import trace as trace_mod
from novakeeper.logs.trace import TraceResult
from novakeeper.logs.window import Window

TZ_RULES = [sources.parse_tz_rule("compute2/*=+01:00")]


@pytest.fixture(scope="module")
def logset(tmp_path_factory: pytest.TempPathFactory) -> loggen.LogSet:
    return loggen.build(tmp_path_factory.mktemp("logs"))


@pytest.fixture(scope="module")
def files(logset: loggen.LogSet) -> list[sources.LogFile]:
    return sources.discover([str(logset.root)], TZ_RULES).files


def run(files: list[sources.LogFile], target: str, **kw: object) -> TraceResult:
    return trace_mod.trace(target, files, **kw)  # type: ignore[arg-type]


def codes(result: TraceResult) -> list[str]:
    return [f.code for f in result.findings]


def test_disk_full_boot_timeline_summary_and_traceback(logset: loggen.LogSet,
                                                      files: list[sources.LogFile]) -> None:
    sc = logset.scenarios["disk_full"]
    result = run(files, sc.instance)
    labels = {t.file.label for t in result.records}
    assert labels == sc.services
    times = [t.record.when for t in result.records]
    assert all(w is not None for w in times) and times == sorted(times)  # type: ignore[type-var]
    assert set(sc.request_ids) <= set(result.requests)
    error = result.first_error
    assert error is not None and error.file.label == "compute2:nova-compute"
    assert "Instance failed to spawn" in error.record.message
    text = error.record.text
    assert "Traceback (most recent call last)" in text and "No space left on device" in text
    assert error.record.lines[-2].endswith("Unexpected error while running command.")
    # compute2 logs local time (+01:00): once told, its lines fall between conductor's
    # cast and the end, in UTC
    conductor = next(t for t in result.records if t.file.label == "nova-conductor")
    assert conductor.record.when is not None and error.record.when is not None
    assert timedelta(0) < error.record.when - conductor.record.when < timedelta(minutes=1)
    assert codes(result) == ["no-gap"]
    assert result.passes[0].found >= 8
    # ID in every file, then one pass per hop, each within --hop-window of what was found
    assert [(r.files, r.searched) for r in result.passes] == [("all", 1), ("window", 2),
                                                              ("window", 3)]
    assert sum(r.searched for r in result.passes) == len(result.requests) + 1
    whole = run(files, sc.instance, hop_window=None)  # every id in whole files
    assert [(t.file.path, t.record.offset, t.hop) for t in whole.records] == [
        (t.file.path, t.record.offset, t.hop) for t in result.records]
    # the current logs to a fixed point (one pass per hop), then the others once
    assert [r.files for r in whole.passes] == ["current", "current", "current", "rotated",
                                               "gzip"]
    assert whole.passes[-1].searched == len(whole.requests) + 1


def test_a_host_in_another_time_zone_is_an_hour_off_when_not_told(
        logset: loggen.LogSet) -> None:
    sc = logset.scenarios["disk_full"]
    plain = sources.discover([str(logset.root)]).files
    result = run(plain, sc.instance)
    error = result.first_error
    api = next(t for t in result.records if t.file.label == "nova-api")
    assert error is not None and error.record.when and api.record.when
    assert error.record.when - api.record.when > timedelta(minutes=59)


def test_request_ids_are_followed_transitively_to_the_depth(
        logset: loggen.LogSet, files: list[sources.LogFile]) -> None:
    sc = logset.scenarios["ok"]
    nova_req, neutron_req = sc.request_ids[0], sc.request_ids[1]
    deep = run(files, sc.instance, depth=2)
    provisioning = [t for t in deep.records if "Provisioning complete" in t.record.message]
    assert len(provisioning) == 1 and provisioning[0].hop == 2  # only via neutron's id
    assert deep.requests[neutron_req].hop == 2 and deep.requests[neutron_req].followed
    shallow = run(files, sc.instance, depth=1)
    assert not [t for t in shallow.records if "Provisioning complete" in t.record.message]
    assert not shallow.requests[neutron_req].followed
    only_id = run(files, sc.instance, depth=0)
    assert all(t.hop == 0 and sc.instance in t.record.text for t in only_id.records)
    assert len(only_id.records) < len(shallow.records) < len(deep.records)
    assert deep.requests[nova_req].records >= 10


def test_trace_from_a_request_id(logset: loggen.LogSet, files: list[sources.LogFile]) -> None:
    sc = logset.scenarios["ok"]
    by_req = run(files, sc.request_ids[0], depth=1)
    by_instance = run(files, sc.instance, depth=2)
    assert by_req.requests[sc.request_ids[0]].hop == 0
    found = {(t.file.path, t.record.offset) for t in by_req.records}
    assert found <= {(t.file.path, t.record.offset) for t in by_instance.records}
    assert len(found) >= 14


def test_rotated_and_compressed_files_are_traced(logset: loggen.LogSet,
                                                 files: list[sources.LogFile]) -> None:
    sc = logset.scenarios["rotated_fail"]
    result = run(files, sc.instance)
    assert {t.file.path.rsplit(".", 1)[-1] for t in result.records} == {"gz"}
    assert {t.file.label for t in result.records} == sc.services
    error = result.first_error
    assert error is not None and error.record.request_id == sc.request_ids[0]
    assert "Not authorized for image" in error.record.text  # TRACE lines joined to it
    assert error.record.text.count("TRACE nova.compute.manager") == 7
    # found in the gzip files, so they are read again (up to the window) for the ids
    # they revealed
    assert [r.files for r in result.passes] == ["all", "window", "window"]
    whole = run(files, sc.instance, hop_window=None)
    assert [r.files for r in whole.passes] == ["current", "rotated", "gzip"] * 3
    assert [(t.file.path, t.record.offset) for t in whole.records] == [
        (t.file.path, t.record.offset) for t in result.records]


def test_api_only_is_a_message_queue_gap(logset: loggen.LogSet,
                                         files: list[sources.LogFile]) -> None:
    sc = logset.scenarios["api_only"]
    result = run(files, sc.instance)
    assert {t.file.label for t in result.records} == {"nova-api"}
    assert codes(result) == ["no-downstream"]
    assert sc.request_ids[0] in result.findings[0].title
    assert "POST /v2.1/servers" in result.findings[0].title


def test_hung_compute_is_reported_silent(logset: loggen.LogSet,
                                         files: list[sources.LogFile]) -> None:
    sc = logset.scenarios["hung"]
    result = run(files, sc.instance)
    assert result.first_error is None
    silent = [f for f in result.findings if f.code == "silent"]
    assert [f.title.split()[0] for f in silent] == ["compute3:nova-compute"]
    assert "40 min" in silent[0].title and "the trace's last line" in silent[0].title
    assert "its host is named in this trace" in silent[0].evidence[1]
    assert codes(run(files, sc.instance, silence=timedelta(minutes=45))) == ["no-gap"]


def test_no_valid_host(logset: loggen.LogSet, files: list[sources.LogFile]) -> None:
    sc = logset.scenarios["no_valid_host"]
    result = run(files, sc.instance)
    error = result.first_error
    assert error is not None and error.file.label == "nova-conductor"
    assert "No valid host was found" in error.record.message
    assert any("ComputeCapabilitiesFilter returned 0 hosts" in t.record.message
               for t in result.records)


def test_an_id_nowhere_never_reached_the_api(files: list[sources.LogFile]) -> None:
    result = run(files, "00000000-1111-4222-8333-444444444444")
    assert result.records == [] and codes(result) == ["not-found"]
    assert [(r.files, r.searched) for r in result.passes] == [("all", 1)]
    whole = run(files, "00000000-1111-4222-8333-444444444444", hop_window=None)
    assert [(r.files, r.searched) for r in whole.passes] == [
        ("current", 1), ("rotated", 1), ("gzip", 1)]


def test_a_window_keeps_only_its_records(logset: loggen.LogSet,
                                         files: list[sources.LogFile]) -> None:
    sc = logset.scenarios["disk_full"]
    full = run(files, sc.instance)
    error = full.first_error
    assert error is not None and error.record.when is not None
    cut = error.record.when
    before = run(files, sc.instance, window=Window(None, cut - timedelta(milliseconds=1)))
    after = run(files, sc.instance, window=Window(cut, None))
    assert before.records and after.records
    assert len(before.records) + len(after.records) == len(full.records)
    assert all(t.record.when and t.record.when < cut for t in before.records)
    assert before.first_error is None and after.first_error is not None


def test_json_has_the_timeline_summary_and_findings(logset: loggen.LogSet,
                                                    files: list[sources.LogFile]) -> None:
    sc = logset.scenarios["disk_full"]
    data = json.loads(json.dumps(render.trace_data(run(files, sc.instance))))
    assert data["target"] == sc.instance
    assert data["records"][0]["label"] == "nova-api"
    first = data["summary"]["first_error"]
    assert first["label"] == "compute2:nova-compute"
    assert first["exception"].startswith("oslo_concurrency.processutils.ProcessExecutionError")
    assert {c["label"] for c in data["summary"]["components"]} == sc.services
    assert data["summary"]["span"]["seconds"] > 5
    assert [f["code"] for f in data["findings"]] == ["no-gap"]
    assert len(data["passes"]) == 3 and data["files"]["problems"] == []
    assert datetime.fromisoformat(data["records"][0]["time"]).tzinfo is not None


def test_text_timeline_is_one_line_per_log_line_and_highlights_errors(
        logset: loggen.LogSet, files: list[sources.LogFile]) -> None:
    sc = logset.scenarios["disk_full"]
    result = run(files, sc.instance)
    piped = io.StringIO()
    render.trace_text(result, Console(file=piped, width=220, color_system=None))
    out = piped.getvalue()
    assert "\x1b[" not in out
    rows = out.split("\nSummary\n")[0].splitlines()
    assert rows[1].split()[:3] == ["TIME", "COMPONENT", "HOP"]
    failed = [r for r in rows if "Instance failed to spawn" in r]
    assert len(failed) == 1 and "compute2:nova-compute" in failed[0] and "ERROR" in failed[0]
    assert any(r.strip().startswith("Stderr: 'qemu-img") for r in rows)
    assert any(r.strip().startswith('File "/usr/lib/python3') for r in rows)  # no prefix
    for word in ("Summary", "components", "first error", "request ids", "time span",
                 "Findings", "none of the gap cases applies"):
        assert word in out
    tty = io.StringIO()
    render.trace_text(result, Console(file=tty, width=220, force_terminal=True,
                                      color_system="standard"))
    error_row = next(r for r in tty.getvalue().splitlines() if "Instance failed" in r)
    assert "\x1b[1;31m" in error_row  # bold red


def test_text_timeline_is_bounded(logset: loggen.LogSet, files: list[sources.LogFile]) -> None:
    result = run(files, logset.scenarios["ok"].instance)
    out = io.StringIO()
    render.trace_text(result, Console(file=out, width=200, color_system=None), max_records=3)
    assert f"... {len(result.records) - 3} more records" in out.getvalue()


def test_times_are_utc(logset: loggen.LogSet, files: list[sources.LogFile]) -> None:
    result = run(files, logset.scenarios["ok"].instance)
    assert all(t.record.when and t.record.when.tzinfo == UTC for t in result.records)
    assert result.records[0].record.when >= logset.start  # type: ignore[operator]


def test_parallel_trace_matches_serial(logset: loggen.LogSet,
                                       files: list[sources.LogFile]) -> None:
    sc = logset.scenarios["disk_full"]
    serial = run(files, sc.instance, jobs=1)
    parallel = run(files, sc.instance, jobs=2, parallel_min=0)
    assert parallel.workers == 2
    assert [(t.file.path, t.record.offset) for t in parallel.records] == [
        (t.file.path, t.record.offset) for t in serial.records]


def test_logset_root_exists(logset: loggen.LogSet) -> None:
    assert Path(logset.root, "compute2", "nova", "nova-compute.log").exists()


def split_records(data: bytes) -> list[bytes]:
    starts = [0] + [m.end() for m in re.finditer(b"\n", data) if m.end() < len(data)]
    starts = [i for i in starts if records.is_record_start(data, i, 0, len(data))]
    return [data[a:b] for a, b in itertools.pairwise([*starts, len(data)])]


def test_a_log_of_several_services_is_split_by_logger(logset: loggen.LogSet,
                                                      tmp_path: Path) -> None:
    """One nova.log for all of nova (as some installers write): the logger names the
    service of each record, so the components and the gap findings still work."""
    parts = [logset.root / "controller" / "nova" / f"{p}.log{suffix}"
             for p in ("nova-api", "nova-scheduler", "nova-conductor") for suffix in ("", ".1")]
    parts += [logset.root / "compute1" / "nova" / f"nova-compute.log{s}" for s in ("", ".1")]
    merged = sorted((r for p in parts for r in split_records(p.read_bytes())),
                    key=lambda r: r[:23])  # all in UTC, naive: the text sorts
    (tmp_path / "nova.log").write_bytes(b"".join(merged))
    files = sources.discover([str(tmp_path)]).files
    assert [f.service for f in files] == ["nova"]
    ok = run(files, logset.scenarios["ok"].instance)
    assert {t.label for t in ok.records} == {"nova-api", "nova-scheduler", "nova-conductor",
                                             "nova-compute"}
    assert codes(ok) == ["no-gap"]
    api_only = run(files, logset.scenarios["api_only"].instance)
    assert codes(api_only) == ["no-downstream"]


def test_a_broad_id_is_bounded_in_text(files: list[sources.LogFile]) -> None:
    """Tracing a host name reaches every periodic task of it: the text lists the first
    request ids only, the timeline is cut at --max-records."""
    result = run(files, "compute1", depth=1)
    assert len(result.requests) > render.MAX_IDS_SHOWN
    out = io.StringIO()
    render.trace_text(result, Console(file=out, width=200, color_system=None), max_records=5)
    text = out.getvalue()
    assert f"... {len(result.requests) - render.MAX_IDS_SHOWN} more (--json lists them all)" in (
        text)
    assert f"... {len(result.records) - 5} more records" in text
