"""The oslo.log format: headers, contexts, both timestamp styles, and which lines belong
to which record (prefixed and bare traceback lines, foreign formats)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from novakeeper.logs import records

REQ = "req-c381e88f-38c0-48fd-a712-b8bc076f3787"
GLOBAL = "req-0f1e2d3c-4b5a-4968-8776-655443322110"
INST = "b9d179e0-6c0f-44f5-a813-0c4237730edf"
PLUS_ONE = timezone(timedelta(hours=1))


def parse(line: str, tz: timezone = UTC) -> records.Record:
    return records.parse_record(line.encode(), 0, 0, tz)


@pytest.mark.parametrize(("context", "req", "glob", "user", "project"), [
    (f"[None {REQ} 6aa5 66458 - default default]", REQ, None, "6aa5", "66458"),
    (f"[{GLOBAL} {REQ} 6aa5 66458 - default default]", REQ, GLOBAL, "6aa5", "66458"),
    (f"[{REQ} 6aa5 66458 - - -]", REQ, None, "6aa5", "66458"),  # before Queens
    (f"[None {REQ} - - - - - -]", REQ, None, None, None),  # a periodic task
    ("[-]", None, None, None, None),  # no context
])
def test_contexts(context: str, req: str | None, glob: str | None, user: str | None,
                  project: str | None) -> None:
    rec = parse(f"2026-11-20 10:24:08.530 4202 INFO nova.compute.manager {context} "
                f"[instance: {INST}] Claim successful on node compute2")
    assert (rec.request_id, rec.global_request_id, rec.user, rec.project) == (
        req, glob, user, project)
    assert rec.instance == INST
    assert rec.message == "Claim successful on node compute2"
    assert rec.level == "INFO" and rec.logger == "nova.compute.manager" and rec.pid == 4202


def test_both_timestamp_styles_and_file_time_zone() -> None:
    naive = parse("2026-11-20 11:24:08.530 4202 INFO nova.compute.manager [-] x", PLUS_ONE)
    assert naive.when == datetime(2026, 11, 20, 10, 24, 8, 530000, tzinfo=UTC)
    iso = parse("2026-11-20T10:24:08.530123+00:00 3101 INFO neutron.wsgi [-] x", PLUS_ONE)
    assert iso.when == datetime(2026, 11, 20, 10, 24, 8, 530123, tzinfo=UTC)  # its own zone
    comma = parse("2026-11-20 10:41:12,384 2931 ERROR openstack_dashboard.views Invalid")
    assert comma.when == datetime(2026, 11, 20, 10, 41, 12, 384000, tzinfo=UTC)
    assert comma.request_id is None and comma.message == "Invalid"


def test_line_without_header() -> None:
    rec = parse("qemu-img: error while writing sector 1569792: No space left on device")
    assert rec.when is None and rec.level == "" and rec.lines == [rec.message]


def test_request_ids_written_in_messages_are_collected() -> None:
    rec = parse(f"2026-11-20 10:24:03.530 4202 DEBUG nova.network.neutron [None {REQ} u p - d d]"
                f" Neutron server returns request_ids: ['{GLOBAL}'] _update_port")
    assert rec.request_ids() == {REQ, GLOBAL}
    err = parse("2026-11-20 10:24:03.530 4202 ERROR nova.volume.cinder [-] ClientException: "
                f"Internal Server Error (HTTP 500) (Request-ID: {GLOBAL})")
    assert err.request_ids() == {GLOBAL}


BUF = "\n".join([
    f"2026-11-20 10:24:08.400 4202 INFO nova.compute.manager [None {REQ} u p - d d] before",
    f"2026-11-20 10:24:08.530 4202 ERROR nova.compute.manager [None {REQ} u p - d d] "
    f"[instance: {INST}] Instance failed to spawn: ProcessExecutionError: Unexpected error",
    "Command: qemu-img convert -O raw /var/lib/nova/instances/_base/f5.part "
    "/var/lib/nova/instances/_base/f5.converted",
    "Stderr: 'qemu-img: error while writing sector 1569792: No space left on device\\n'",
    f"2026-11-20 10:24:08.530 4202 ERROR nova.compute.manager [instance: {INST}] Traceback "
    "(most recent call last):",
    f'2026-11-20 10:24:08.530 4202 ERROR nova.compute.manager [instance: {INST}]   File '
    '"/usr/lib/python3/dist-packages/nova/compute/manager.py", line 2743, in _build_resources',
    f"2026-11-20 10:24:08.530 4202 ERROR nova.compute.manager [instance: {INST}] "
    "ProcessExecutionError: Unexpected error while running command.",
    f"2026-11-20 10:24:08.530 4202 ERROR nova.compute.manager [instance: {INST}] ",
    # same time, pid and logger, but a context: a new record
    f"2026-11-20 10:24:08.530 4202 ERROR nova.compute.manager [None {REQ} u p - d d] again",
    # no context, but another pid: a new record too
    f"2026-11-20 10:24:08.530 4999 ERROR nova.compute.manager [instance: {INST}] other pid",
    "[Fri Nov 20 10:22:34.127583 2026] [core:error] [pid 4499] (13)Permission denied: AH00072",
    "Nov 20 10:22:34 controller0 httpd[4499]: (13)Permission denied: make_sock",
    "",
]).encode()


def bounds_of(text: str) -> bytes:
    pos = BUF.index(text.encode())
    start, end = records.record_bounds(BUF, pos, 0, len(BUF))
    return BUF[start:end]


def test_traceback_and_continuation_lines_belong_to_their_record() -> None:
    record = bounds_of("No space left on device")
    assert record.startswith(b"2026-11-20 10:24:08.530 4202 ERROR")
    assert b"Instance failed to spawn" in record and b"Traceback" in record
    assert record.rstrip().endswith(b"[instance: " + INST.encode() + b"]")
    assert b"before" not in record and b"again" not in record
    assert bounds_of("line 2743") == record  # a hit inside the traceback: the same record
    assert bounds_of("again").count(b"\n") == 1
    assert bounds_of("other pid").count(b"\n") == 1


def test_foreign_formats_are_records_of_their_own() -> None:
    assert bounds_of("AH00072").startswith(b"[Fri Nov 20")
    assert bounds_of("AH00072").count(b"\n") == 1
    assert bounds_of("make_sock").startswith(b"Nov 20 10:22:34")


def test_old_trace_style_lines_join_the_record() -> None:
    old = "\n".join([
        f"2017-05-18 15:01:24.867 40639 ERROR nova.compute.manager [{REQ} u p - - -] "
        f"[instance: {INST}] Instance failed to spawn",
        f"2017-05-18 15:01:24.867 40639 TRACE nova.compute.manager [instance: {INST}] "
        "Traceback (most recent call last):",
        f"2017-05-18 15:01:24.867 40639 TRACE nova.compute.manager [instance: {INST}] "
        "ImageNotAuthorized: Not authorized for image dcd85799.",
        f"2017-05-18 15:01:25.001 40639 INFO nova.compute.manager [{REQ} u p - - -] next",
        "",
    ]).encode()
    pos = old.index(b"ImageNotAuthorized")
    start, end = records.record_bounds(old, pos, 0, len(old))
    assert start == 0 and old[start:end].count(b"\n") == 3
    assert records.last_record_start(old, 0, len(old)) == old.index(b"2017-05-18 15:01:25")


def test_parse_record_keeps_all_lines_and_body_strips_prefixes() -> None:
    rec = records.parse_record(bounds_of("No space left"), 0, 0, UTC)
    assert rec.is_error and rec.request_id == REQ and len(rec.lines) == 7
    assert records.body(rec.lines[4]).startswith('  File "/usr/lib/python3')
    assert records.body(rec.lines[2]) == rec.lines[2]  # a bare line stays as it is


def test_over_long_lines_are_cut_when_decoded() -> None:
    lines, truncated = records.decode_lines(b"x" * 100_000 + b"\nshort\n")
    assert truncated and lines[1] == "short" and "more bytes" in lines[0]
    assert len(lines[0]) < 17_000


def test_stamps_at_both_ends_of_a_region() -> None:
    assert records.first_stamp(BUF, 0, len(BUF)) == b"2026-11-20 10:24:08.400"
    assert records.last_stamp(BUF, 0, len(BUF)) == b"2026-11-20 10:24:08.530"
