"""`novakeeper trace` and `novakeeper diagnose` from the command line: exit codes, one-line
errors, unreadable files listed and skipped, global options after the command. In-process
through `cli.main` where that is enough; as a child process where stderr, permissions or
the real entry point matter. Every run passes --config-file, so /etc/nova is never read."""

from __future__ import annotations

import glob
import gzip
import json
import os
from datetime import timedelta
from pathlib import Path

import loggen
import pytest

from _cli_tree import permission_prefix, run_cli
from novakeeper import cli
from novakeeper.errors import ExitCode
from novakeeper.logs import diagnose, sources

TZ = ["--tz-offset", "compute2/*=+01:00"]
DISK_FULL = next(s for s in diagnose.load() if s.id == "disk-full-base").sample.strip("\n")


@pytest.fixture(scope="module")
def logset(tmp_path_factory: pytest.TempPathFactory) -> loggen.LogSet:
    return loggen.build(tmp_path_factory.mktemp("logs"), span=timedelta(hours=2))


@pytest.fixture(scope="module")
def conf(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A nova.conf whose instances path has a _base folder with two files."""
    root = tmp_path_factory.mktemp("node")
    base = root / "instances" / "_base"
    base.mkdir(parents=True)
    for name in ("a" * 40, "b" * 40):
        (base / name).write_bytes(b"\1" * 4096)
    path = root / "nova.conf"
    path.write_text(f"[DEFAULT]\ninstances_path = {root / 'instances'}\n")
    return str(path)


def main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    out, err = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 1), out, err


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("novakeeper: error: ")
    return lines[0]


def test_trace_prints_the_timeline_then_the_summary(logset: loggen.LogSet, conf: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    sc = logset.scenarios["disk_full"]
    code, out, err = main(["trace", sc.instance, str(logset.root), *TZ, "--config-file", conf],
                          capsys)
    assert (code, err) == (0, "")
    assert out.startswith(f"trace {sc.instance}: ")
    assert out.index("Instance failed to spawn") < out.index("\nSummary\n") < out.index(
        "\nFindings\n")
    assert "compute2:nova-compute" in out and "none of the gap cases applies" in out


def test_trace_json(logset: loggen.LogSet, conf: str,
                    capsys: pytest.CaptureFixture[str]) -> None:
    sc = logset.scenarios["api_only"]
    code, out, _ = main(["trace", sc.instance.upper(), str(logset.root), "--json",
                         "--config-file", conf], capsys)  # a uuid in capitals is found too
    data = json.loads(out)
    assert code == 0 and [f["code"] for f in data["findings"]] == ["no-downstream"]
    assert {r["label"] for r in data["records"]} == {"nova-api"}


def test_global_options_are_accepted_after_the_command(
        logset: loggen.LogSet, conf: str, capsys: pytest.CaptureFixture[str]) -> None:
    sc = logset.scenarios["ok"]
    code, out, _ = main(["trace", sc.instance, str(logset.root), "--depth", "1",
                         "--config-file", conf, "-v", "--log-format", "json"], capsys)
    assert code == 0 and "Summary" in out


def test_a_missing_path_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "nova-api.log"
    proc = run_cli("trace", "b9d179e0-6c0f-44f5-a813-0c4237730edf", str(missing),
                   "--config-file", os.devnull)
    assert proc.returncode == ExitCode.PATH == 4
    assert one_error_line(proc.stderr) == f"novakeeper: error: {missing}: no such file or folder"
    assert proc.stdout == ""


def test_a_folder_without_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = main(["diagnose", str(tmp_path), "--config-file", os.devnull], capsys)
    assert code == ExitCode.PATH
    assert one_error_line(err) == f"novakeeper: error: no log files found in {tmp_path}"


def test_the_default_log_set(capsys: pytest.CaptureFixture[str]) -> None:
    if any(glob.glob(g) for g in sources.DEFAULT_GLOBS):
        pytest.skip("this host has OpenStack logs in /var/log")
    code, _, err = main(["trace", "b9d179e0-6c0f-44f5-a813-0c4237730edf", "--config-file",
                         os.devnull], capsys)
    assert code == ExitCode.PATH
    assert one_error_line(err).startswith("novakeeper: error: no log files found in "
                                          "/var/log/nova/*.log* /var/log/neutron/*.log*")


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "yesterday-ish"], "bad --since 'yesterday-ish': use a time like"),
    (["--until", "2026-13-45"], "bad --until '2026-13-45'"),
    (["--since", "2026-11-21", "--until", "2026-11-20"], "--since is after --until"),
    (["--tz-offset", "compute2"], "bad --tz-offset 'compute2': use PATTERN=+HH:MM"),
    (["--tz-offset", "compute2/*=+25:00"], "bad time zone offset '+25:00': out of range"),
    (["--tz", "CET"], "bad time zone offset 'CET'"),
])
def test_bad_options_are_usage_errors(logset: loggen.LogSet, args: list[str], message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = main(["trace", "b9d179e0-6c0f-44f5-a813-0c4237730edf", str(logset.root),
                           *args, "--config-file", os.devnull], capsys)
    assert code == ExitCode.USAGE and out == ""
    assert message in one_error_line(err)


def test_click_rejects_out_of_range_values(logset: loggen.LogSet,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = main(["trace", "abcd1234", str(logset.root), "--depth", "11"], capsys)
    assert code == ExitCode.USAGE and "Invalid value for '--depth'" in err
    code, _, err = main(["trace", "ab", str(logset.root)], capsys)
    assert code == ExitCode.USAGE and "too short to trace" in one_error_line(err)


def unprivileged() -> tuple[str, ...]:
    prefix = permission_prefix()
    if prefix is None:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE (no working setpriv): "
                    "root ignores permission bits, so an unreadable file cannot be made")
    return prefix


def test_unreadable_files_are_listed_and_skipped(tmp_path: Path) -> None:
    good = tmp_path / "compute1" / "nova-compute.log"
    locked = tmp_path / "compute2" / "nova-compute.log"
    for p in (good, locked):
        p.parent.mkdir()
        p.write_text(DISK_FULL + "\n")
    locked.chmod(0)
    try:
        proc = run_cli("diagnose", str(tmp_path), "--config-file", os.devnull,
                       prefix=unprivileged())
        proc_all = run_cli("trace", "2c5a8e62-62d0-430d-8747-795350bb6939", str(locked),
                           "--config-file", os.devnull, prefix=unprivileged())
    finally:
        locked.chmod(0o644)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == f"novakeeper: warning: skipped {locked}: permission denied\n"
    assert "disk-full-base" in proc.stdout and f"{good}:1 (1)" not in proc.stdout
    assert f"{good} (1)" in proc.stdout
    assert proc_all.returncode == ExitCode.PERMISSION
    assert proc_all.stderr.splitlines() == [
        f"novakeeper: warning: skipped {locked}: permission denied",
        f"novakeeper: error: none of the 1 log files found could be read ({locked}: "
        "permission denied)"]


def test_a_truncated_gzip_is_searched_up_to_where_it_stops(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [f"2026-11-20 10:{i // 60 % 60:02d}:{i % 60:02d}.000 4101 INFO nova.compute.manager "
             f"[None req-00000000-0000-4000-a000-{i:012d} - - - - - -] line {i}"
             for i in range(20_000)]
    data = gzip.compress(("\n".join([*lines[:10], DISK_FULL, *lines]) + "\n").encode())
    p = tmp_path / "nova-compute.log.2.gz"
    p.write_bytes(data[: len(data) * 2 // 3])
    code, out, err = main(["diagnose", str(tmp_path), "--config-file", os.devnull], capsys)
    assert code == 0 and "disk-full-base" in out
    assert err.startswith(f"novakeeper: warning: {p}: truncated gzip file: its data ends at "
                          f"byte {len(data) * 2 // 3:,}")


def test_binary_garbage_and_a_huge_line_through_the_cli(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "nova-compute.log"
    p.write_bytes(os.urandom(200_000) + b"\n" + b"z" * 10_000_000 + b"\n"
                  + DISK_FULL.encode() + b"\n" + os.urandom(1000))
    code, out, err = main(["diagnose", str(p), "--json", "--config-file", os.devnull], capsys)
    assert code == 0 and err == ""
    assert [h["id"] for h in json.loads(out)["hits"]] == ["disk-full-base"]


def test_diagnose_shows_disk_and_cache_figures(tmp_path: Path, conf: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "nova-compute.log").write_text(DISK_FULL + "\n")
    code, out, _ = main(["diagnose", str(tmp_path), "--config-file", conf], capsys)
    base = Path(conf).parent / "instances" / "_base"
    assert code == 0
    disk = next(line for line in out.splitlines() if line.startswith("  disk "))
    assert f"{base}: " in disk and " free of " in disk and "holds 2 files" in disk
    assert "novakeeper cache clean" in out


def test_diagnose_without_a_usable_config_only_loses_the_figures(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "nova-compute.log").write_text(DISK_FULL + "\n")
    bad = tmp_path / "nova.conf"
    bad.write_text("[image_cache]\nmanager_interval = often\n")
    code, out, err = main(["diagnose", str(tmp_path / "nova-compute.log"), "--config-file",
                           str(bad)], capsys)
    assert code == 0 and err == ""
    disk = next(line for line in out.splitlines() if line.startswith("  disk "))
    assert "configuration not loaded" in disk and "manager_interval" in disk


def test_diagnose_with_a_bad_signatures_file(tmp_path: Path) -> None:
    user = tmp_path / "mine.toml"
    user.write_text('[[signature]]\nid = "x"\n')
    proc = run_cli("diagnose", str(tmp_path), "--signatures", str(user), "--config-file",
                   os.devnull)
    assert proc.returncode == ExitCode.CONFIG
    assert one_error_line(proc.stderr) == (
        f"novakeeper: error: {user}: signature 'x': 'title' is missing")


def test_diagnose_lists_the_knowledge_base(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = main(["diagnose", "--list-signatures", "--json"], capsys)
    ids = [s["id"] for s in json.loads(out)]
    assert code == 0 and "disk-full-base" in ids and len(ids) >= 13
    code, out, _ = main(["diagnose", "--list-signatures"], capsys)
    assert code == 0 and "imagecache-flood" in out and "(min 100)" in out


def test_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = main(["trace", "--help"], capsys)
    assert code == 0
    for option in ("--json", "--since", "--until", "--depth", "--tz-offset", "--tz",
                   "--silence-minutes", "--max-records", "--jobs", "--config-file", "-v",
                   "--log-format"):
        assert option in out
    _, out, _ = main(["diagnose", "--help"], capsys)
    for option in ("--signatures", "--examples", "--list-signatures", "--since", "--json"):
        assert option in out
