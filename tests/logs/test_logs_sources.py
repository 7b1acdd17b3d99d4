"""Which files are read, what each is called, which time zone it is in; time windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.logs import sources
from novakeeper.logs.window import parse_when, window

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("path", "service"), [
    ("/var/log/nova/nova-compute.log", "nova-compute"),
    ("/var/log/nova/nova-compute.log.1", "nova-compute"),
    ("/var/log/nova/nova-api.log.2.gz", "nova-api"),
    ("/var/log/nova/nova-api.log-20261120.gz", "nova-api"),
    ("/var/log/neutron/server.log", "neutron-server"),  # RDO's names
    ("/var/log/cinder/volume.log.3.gz", "cinder-volume"),
    ("/var/log/keystone/keystone.log", "keystone"),
    ("/srv/logs/compute2/nova/nova-compute.log", "nova-compute"),
])
def test_service_names(path: str, service: str) -> None:
    assert sources.service_name(path) == service


def test_labels_name_the_host_only_when_needed(tmp_path: Path) -> None:
    for rel in ("compute1/nova/nova-compute.log", "compute2/nova/nova-compute.log.1",
                "controller/nova/nova-api.log", "controller/nova/nova-api.log.1",
                "controller/nova/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x\n")
    disc = sources.discover([str(tmp_path)])
    assert sorted(f.label for f in disc.files) == [
        "compute1:nova-compute", "compute2:nova-compute", "nova-api", "nova-api"]
    assert {f.host for f in disc.files} == {"compute1", "compute2", "controller"}


def test_time_zone_rules(tmp_path: Path) -> None:
    plus1 = timezone(timedelta(hours=1))
    rules = [sources.parse_tz_rule("compute2/*=+01:00"),
             sources.parse_tz_rule("*.gz=-0530")]
    assert sources.tz_for("/logs/compute2/nova/nova-compute.log", rules, UTC) == plus1
    assert sources.tz_for("/logs/compute1/nova/x.log.2.gz", rules, UTC) == timezone(
        -timedelta(hours=5, minutes=30))
    assert sources.tz_for("/logs/compute1/nova/x.log", rules, plus1) == plus1  # the default
    assert sources.parse_offset("UTC") == UTC and sources.parse_offset("+2") == timezone(
        timedelta(hours=2))
    for bad in ("CET", "+25:00", "1:00"):
        with pytest.raises(NovakeeperError) as err:
            sources.parse_offset(bad)
        assert err.value.code == ExitCode.USAGE


def test_globs_folders_and_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text("x\n")
    (tmp_path / "b.log.1").write_text("x\n")
    disc = sources.discover([str(tmp_path / "*.log*"), str(tmp_path / "none-*.log")])
    assert [Path(f.path).name for f in disc.files] == ["a.log", "b.log.1"]
    assert disc.notes == [f"{tmp_path / 'none-*.log'}: matched no file"]
    same = sources.discover([str(tmp_path), str(tmp_path / "a.log")])
    assert len(same.files) == 2  # each file once
    with pytest.raises(NovakeeperError) as err:
        sources.discover([str(tmp_path / "gone.log")])
    assert err.value.code == ExitCode.PATH


def test_when_relative_and_absolute() -> None:
    assert parse_when("2h", "--since", now=NOW) == NOW - timedelta(hours=2)
    assert parse_when("7d", "--since", now=NOW) == NOW - timedelta(days=7)
    assert parse_when("90m", "--since", now=NOW) == NOW - timedelta(minutes=90)
    assert parse_when("2026-11-20 10:00", "--since") == datetime(2026, 11, 20, 10, tzinfo=UTC)
    plus1 = timezone(timedelta(hours=1))
    assert parse_when("2026-11-20 10:00", "--since", plus1) == datetime(
        2026, 11, 20, 9, tzinfo=UTC)
    assert parse_when("2026-11-20T10:00:00+02:00", "--until", plus1) == datetime(
        2026, 11, 20, 8, tzinfo=UTC)
    w = window("1d", "2h", now=NOW)
    assert w.holds(NOW - timedelta(hours=3)) and not w.holds(NOW - timedelta(hours=1))
    assert w.holds(None)  # an undated record is not thrown away
    with pytest.raises(NovakeeperError):
        window("2h", "1d", now=NOW)


@pytest.mark.parametrize(("name", "rotated"), [
    ("nova-api.log", False), ("nova-api.log.1", True), ("nova-api.log.2.gz", True),
    ("nova-api.log-20261120", True), ("keystone.log", False), ("server.log", False),
])
def test_rotated_files(name: str, rotated: bool) -> None:
    assert sources.is_rotated(f"/var/log/nova/{name}") == rotated
