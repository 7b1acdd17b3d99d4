"""`trace --hop-window`: after the search for ID in whole files, each hop's request ids
are searched only within the window of the records found so far. What it must keep: every
record the whole-file search finds in the generated logs, records at the margin, records
reached through a chain of records each within the window of the one before; what it
drops: records further than the window from everything found; and it must read less."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import loggen
import pytest

from novakeeper import cli
from novakeeper.errors import ExitCode
from novakeeper.logs import scan, sources
from novakeeper.logs import trace as trace_mod
from novakeeper.logs.records import Record
from novakeeper.logs.trace import Traced, TraceResult
from novakeeper.logs.window import Window

TZ_RULES = [sources.parse_tz_rule("compute2/*=+01:00")]
ID = "5d0f3a8e-93c1-4b7a-9e2d-0c6b1f4a7e55"
REQ_A = "req-aaaaaaaa-1111-4111-8111-111111111111"
REQ_B = "req-bbbbbbbb-2222-4222-8222-222222222222"
T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
START, END = T0 - timedelta(hours=4), T0 + timedelta(hours=4)


@pytest.fixture(scope="module")
def logset(tmp_path_factory: pytest.TempPathFactory) -> loggen.LogSet:
    return loggen.build(tmp_path_factory.mktemp("logs"))


@pytest.fixture(scope="module")
def files(logset: loggen.LogSet) -> list[sources.LogFile]:
    return sources.discover([str(logset.root)], TZ_RULES).files


def keys(result: TraceResult) -> list[tuple[str, int, int]]:
    return [(t.file.path, t.record.offset, t.hop) for t in result.records]


@pytest.mark.parametrize("name", ["ok", "disk_full", "no_valid_host", "rotated_fail",
                                  "api_only", "hung"])
def test_the_window_finds_what_whole_files_find_in_the_generated_logs(
        logset: loggen.LogSet, files: list[sources.LogFile], name: str) -> None:
    """The default (6 h) and a window of 10 minutes, which leaves out most of the 3 hours
    of these logs, find exactly the records, hops and request ids of the whole-file
    search: a scenario's requests take seconds to minutes."""
    target = logset.scenarios[name].instance
    whole = trace_mod.trace(target, files, hop_window=None)
    assert whole.records
    for reach in (trace_mod.HOP_WINDOW, timedelta(minutes=10)):
        windowed = trace_mod.trace(target, files, hop_window=reach)
        assert keys(windowed) == keys(whole)
        assert {r.id: (r.hop, r.records) for r in windowed.requests.values()} == {
            r.id: (r.hop, r.records) for r in whole.requests.values()}
        assert [f.code for f in windowed.findings] == [f.code for f in whole.findings]
    short = trace_mod.trace(target, files, hop_window=timedelta(minutes=10))
    assert {p.files for p in short.passes[1:]} <= {"window"}
    assert all(p.read < short.passes[0].read / 2 for p in short.passes[1:])


def stamp(when: datetime, tz: timezone = UTC) -> str:
    return when.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def oslo(when: datetime, logger: str, req: str, msg: str, tz: timezone = UTC,
         level: str = "INFO") -> str:
    return f"{stamp(when, tz)} 4242 {level} {logger} [None {req} u p - default default] {msg}"


def service_log(path: Path, logger: str, events: list[tuple[datetime, str, str]],
                tz: timezone = UTC, gz: bool = False) -> Path:
    """Background lines every 2 seconds from START to END (so that a file is several MiB
    and bisection has something to cut), with `events` (time, request id, message) among
    them in time order."""
    lines: list[tuple[datetime, str]] = []
    t, n = START, 0
    while t < END:
        req = f"req-{n:08x}-0000-4000-8000-000000000000"
        lines.append((t, oslo(t, logger, req, f"periodic task {n} ran; nothing to do here, "
                                              "the usual background noise of a service", tz)))
        t += timedelta(seconds=2)
        n += 1
    lines += [(when, oslo(when, logger, req, msg, tz)) for when, req, msg in events]
    lines.sort(key=lambda x: x[0])
    data = ("\n".join(text for _, text in lines) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path.write_bytes(data)
    return path


def chain_logs(root: Path, gz: bool = False, compute_tz: timezone = UTC) -> Path:
    """ID is named once, on compute at T0, by a record of request A. A's records: on the
    API 40 minutes before and 50 minutes after (the latter returns request B's id); B's
    records on neutron at T0 + 1 h 40 (50 minutes after the record that revealed it) and
    at T0 + 3 h."""
    service_log(root / "compute1" / "nova" / "nova-compute.log", "nova.compute.manager",
                [(T0, REQ_A, f"[instance: {ID}] Claim successful on node compute1")],
                tz=compute_tz, gz=gz)
    service_log(root / "controller" / "nova" / "nova-api.log", "nova.api.wsgi", [
        (T0 - timedelta(minutes=40), REQ_A, '10.0.0.5 "POST /v2.1/servers" status: 202'),
        (T0 + timedelta(minutes=50), REQ_A,
         f"Neutron server returns request_ids: ['{REQ_B}']")], gz=gz)
    service_log(root / "controller" / "neutron" / "neutron-server.log", "neutron.wsgi", [
        (T0 + timedelta(minutes=100), REQ_B, "port bound"),
        (T0 + timedelta(hours=3), REQ_B, "port status changed, three hours later")], gz=gz)
    return root


def messages(result: TraceResult) -> list[str]:
    return [t.record.message for t in result.records]


def chain(root: Path, reach: timedelta | None, rules: list[sources.TzRule] | None = None
          ) -> TraceResult:
    found = sources.discover([str(root)], rules or []).files
    return trace_mod.trace(ID, found, hop_window=reach)


BOOT, NEUTRON_RETURNS = '10.0.0.5 "POST /v2.1/servers" status: 202', "Neutron server returns"


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_a_request_is_followed_within_the_window_of_every_record_found(
        tmp_path: Path, gz: bool) -> None:
    root = chain_logs(tmp_path, gz=gz)
    whole = chain(root, None)
    assert len(whole.records) == 5
    hour = chain(root, timedelta(hours=1))
    # A's records 40 and 50 minutes from ID's record; B's first record 1 h 40 from it but
    # 50 minutes from A's record that revealed B; B's record at T0 + 3 h is 2 h 10 from
    # everything found before B was searched
    assert [m.split("] ")[-1] for m in messages(hour)] == [
        BOOT, "Claim successful on node compute1", f"{NEUTRON_RETURNS} request_ids: ['{REQ_B}']",
        "port bound"]
    assert [t.hop for t in hour.records] == [1, 0, 1, 2]
    assert [p.files for p in hour.passes] == ["all", "window", "window"]
    if not gz:  # a plain file is read only around the windows
        assert all(p.read < hour.passes[0].read * 0.6 for p in hour.passes[1:])


def test_records_at_the_margin_are_kept(tmp_path: Path) -> None:
    """The window is closed: a record exactly `hop_window` from a record found is in it,
    and bisection, which reads a little wider, adds nothing beyond it."""
    root = chain_logs(tmp_path)
    exact = chain(root, timedelta(minutes=50))  # A's record at T0 + 50 min, exactly
    assert NEUTRON_RETURNS in " ".join(messages(exact))
    assert BOOT in messages(exact)[0]  # 40 minutes before
    assert "port bound" in messages(exact)[-1]  # 50 minutes after its revealing record
    short = chain(root, timedelta(minutes=50) - timedelta(milliseconds=1))
    assert [m.split("] ")[-1] for m in messages(short)] == [
        BOOT, "Claim successful on node compute1"]
    assert REQ_B not in short.requests


def test_the_window_is_in_utc_whatever_the_files_zone(tmp_path: Path) -> None:
    """compute1 logs local time (UTC+1); told so, its records and the windows around them
    line up with the other files; not told, its record is an hour off and the API's
    records 40 minutes before it in real time are 1 h 40 away."""
    root = chain_logs(tmp_path, compute_tz=timezone(timedelta(hours=1)))
    rules = [sources.parse_tz_rule("compute1/*=+01:00")]
    told = chain(root, timedelta(hours=1), rules)
    assert len(told.records) == 4 and told.records[1].record.when == T0
    untold = chain(root, timedelta(hours=1))
    assert BOOT not in " ".join(messages(untold))


def test_a_record_without_a_time_makes_the_next_pass_read_whole_files(tmp_path: Path
                                                                     ) -> None:
    root = chain_logs(tmp_path)
    api = root / "controller" / "nova" / "nova-api.log"
    api.write_bytes(f"no header here, {ID} by {REQ_A}\n".encode() + api.read_bytes())
    result = chain(root, timedelta(minutes=1))
    assert [(p.files, p.searched) for p in result.passes] == [("all", 1), ("all", 1),
                                                              ("all", 1)]
    assert "port status changed, three hours later" in messages(result)[-1]


def test_hop_windows_merge_and_stay_bounded() -> None:
    def traced(when: datetime | None) -> Traced:
        rec = Record(0, 0, when, "", None, "INFO", "x")
        return Traced(rec, None, 0, [])  # type: ignore[arg-type]

    minute = timedelta(minutes=1)
    got = trace_mod.hop_windows([traced(T0), traced(T0 + 3 * minute),
                                 traced(T0 + 10 * minute)], 2 * minute)
    assert got == [(T0 - 2 * minute, T0 + 5 * minute),
                   (T0 + 8 * minute, T0 + 12 * minute)]
    many = trace_mod.hop_windows([traced(T0 + i * 10 * minute) for i in range(200)], minute)
    assert many is not None and len(many) == trace_mod.MAX_WINDOWS
    assert many[0][0] == T0 - minute and many[-1][1] == T0 + 1991 * minute
    assert trace_mod.hop_windows([traced(T0), traced(None)], minute) is None


def test_a_windowed_pass_skips_files_outside_and_bisects_the_others(tmp_path: Path) -> None:
    root = chain_logs(tmp_path)
    old = service_log(tmp_path / "controller" / "cinder" / "cinder-volume.log",
                      "cinder.volume.manager", [])
    old.write_text(old.read_text().replace("2026-11-20", "2026-11-10"))
    found = sources.discover([str(root)]).files
    needles = scan.Needles((REQ_A.encode(),))
    window = [(T0 - timedelta(minutes=5), T0 + timedelta(minutes=5))]
    with scan.Scanner(found, jobs=1) as sc:
        full = sc.run(needles)
        part = sc.run(needles, windows=window)
        probes = sum(len(p) for p in sc._probes.values())
        again = sc.run(needles, windows=window)
        assert sum(len(p) for p in sc._probes.values()) == probes  # remembered
    cinder = next(f.index for f in found if f.service == "cinder-volume")
    assert cinder in full.spans and cinder not in part.spans  # not read at all
    assert part.read < full.read / 10 and again.read == part.read
    assert [h.offset for _, h in part.hits] == [h.offset for _, h in full.hits
                                                if b"Claim successful" in h.data]
    # with --since/--until too: the intersection
    late = Window(T0 + timedelta(hours=1), None)
    with scan.Scanner(found, late, jobs=1) as sc:
        sc.run(needles)
        assert sc.run(needles, windows=window).hits == []


def main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[object, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main([*args, "--config-file", "/dev/null"])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.mark.usefixtures("_restore_logging")
def test_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(chain_logs(tmp_path))
    code, out, err = main(["trace", ID, root], capsys)  # the default: 6 hours
    assert (code, err) == (0, "")
    assert "3 passes (1 over all logs, 2 within 6 h of the records found)" in out
    assert "port status changed" in out
    code, out, _ = main(["trace", ID, root, "--hop-window", "1h", "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and len(data["records"]) == 4
    assert [p["files"] for p in data["passes"]] == ["all", "window", "window"]
    code, out, _ = main(["trace", ID, root, "--hop-window", "0", "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and len(data["records"]) == 5
    assert [p["files"] for p in data["passes"]] == ["current"] * 3
    code, out, err = main(["trace", ID, root, "--hop-window", "soon"], capsys)
    assert code == ExitCode.USAGE and out == ""
    assert err.startswith("novakeeper: error: --hop-window: 'soon' is not a duration")
