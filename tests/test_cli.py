"""The command line, end to end: real qcow2 disks made by qemu-img, `python -m novakeeper`
in a child process (exit codes, stderr as an operator sees it) and click's CliRunner where
an in-process run is enough. Every run passes --config-file with a file of its own, so no
test reads /etc/nova/nova.conf."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from _cli_tree import (
    DAY,
    EPHEMERAL_USED,
    ORIG_LOCAL,
    ORIG_OLD,
    ORIG_USED,
    SWAP_OLD,
    UNKNOWN,
    UUID_A,
    UUID_B,
    UUID_BROKEN,
    Tree,
    build_tree,
    make_base,
    make_overlay,
    permission_prefix,
    run_cli,
    snapshot,
    verdicts,
)
from novakeeper import cli as cli_mod
from novakeeper.cache.layout import image_hash
from novakeeper.cache.locks import RUN_LOCK_NAME
from novakeeper.errors import ExitCode

NOVA_LINE = re.compile(
    r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}) (\d+) (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"([\w.]+) \[-\] (.*)$")


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return build_tree(str(tmp_path))


@pytest.fixture
def broken_tree(tmp_path: Path) -> Tree:
    return build_tree(str(tmp_path), broken_swap=True)


def invoke(args: list[str]) -> Any:
    """CliRunner for runs that must succeed (errors are tested through `main`)."""
    result = CliRunner().invoke(cli_mod.cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """stderr must be exactly `novakeeper: error: ...`, one line, no traceback."""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("novakeeper: error: ")
    assert "Traceback" not in proc.stderr
    return lines[0]


def cache_names(tree: Tree) -> set[str]:
    """The cache files, without `clean`'s run lock (it stays, by design)."""
    return set(os.listdir(tree.cache_path)) - {RUN_LOCK_NAME}


def without_clock(plan: dict[str, Any]) -> dict[str, Any]:
    """A plan's JSON without what changes from one second to the next."""
    plan = dict(plan)
    plan.pop("now")
    plan["decisions"] = [{k: v for k, v in d.items() if k not in ("age_seconds", "last_used")}
                         for d in plan["decisions"]]
    return plan


# -- plan --------------------------------------------------------------------------------


def test_plan_json_verdicts(tree: Tree) -> None:
    proc = run_cli(*tree.cli("cache", "plan", "--json"))
    assert proc.returncode == 0, proc.stderr
    # without -v only warnings are logged; here the one unknown file
    [warning] = proc.stderr.splitlines()
    assert warning.endswith(f" WARNING novakeeper.cache [-] Unknown base file: "
                            f"{tree.cache_file(UNKNOWN)}")
    plan = json.loads(proc.stdout)
    assert verdicts(proc.stdout) == tree.expected
    assert plan["instances_path"] == tree.instances_path
    assert plan["cache_path"] == tree.cache_path
    summary = plan["summary"]
    assert summary["files"] == len(tree.expected)
    assert summary["removals"] == len(tree.removable) == 4
    assert summary["disks_seen"] == 3
    assert summary["folders_seen"] == 2  # instances/locks is not an instance folder
    assert summary["problems"] == 0
    by_name = {d["name"]: d for d in plan["decisions"]}
    assert by_name[ORIG_USED]["users"] == [UUID_A]
    assert by_name[ORIG_USED]["disks"] == [os.path.join(tree.instances_path, UUID_A, "disk")]
    assert by_name[EPHEMERAL_USED]["disks"] == [
        os.path.join(tree.instances_path, UUID_A, "disk.local")]
    assert by_name[ORIG_LOCAL]["users"] == [UUID_B]
    assert by_name[ORIG_OLD]["image_hash"] == image_hash("image-unused-old")
    assert by_name[ORIG_OLD]["frees"] > 0
    assert sum(d["frees"] for d in plan["decisions"] if d["name"] in tree.removable) == (
        summary["frees"])
    assert plan["policy"]["remove_unused_original_minimum_age_seconds"] == DAY


def test_plan_json_on_a_tree_with_a_truncated_disk(broken_tree: Tree) -> None:
    proc = run_cli(*broken_tree.cli("cache", "plan", "--json"))
    assert proc.returncode == 0  # plan reports problems; only clean fails on them
    plan = json.loads(proc.stdout)
    assert verdicts(proc.stdout) == broken_tree.expected
    bad_disk = os.path.join(broken_tree.instances_path, UUID_BROKEN + "_del", "disk.swap")
    [problem] = plan["problems"]
    assert problem["code"] == "disk-corrupt"
    assert problem["path"] == bad_disk
    assert problem["instance"] == UUID_BROKEN
    assert problem["holds_kinds"] == ["swap"]
    held = {d["name"]: d for d in plan["decisions"]}[SWAP_OLD]
    assert held["held_by"] == [bad_disk]
    assert held["frees"] == 0
    # the problem is also a warning on stderr, in nova's format
    assert f"WARNING novakeeper.cache [-] Problem: disk-corrupt: {bad_disk}" in proc.stderr


def test_plan_table(tree: Tree) -> None:
    out = invoke(tree.cli("cache", "plan")).stdout
    rows = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] in tree.expected:
            rows[fields[2]] = fields[0]
    assert rows == tree.expected
    # the summary line closes the table; only notes (none, or this host's) follow it
    lines = out.splitlines()
    summary = next(i for i, line in enumerate(lines) if "files to remove" in line)
    assert f"{len(tree.removable)} of {len(tree.expected)} files to remove" in lines[summary]
    assert all(line.startswith("note: ") for line in lines[summary + 1:])


READING_ORDER = ["remove", "stale-partial", "held", "too-young", "downloading", "in-use",
                 "kept-by-config", "unknown"]


def test_plan_rows_come_in_reading_order(broken_tree: Tree) -> None:
    """What will go first, then why the rest stays; by name within a verdict."""
    out = invoke(broken_tree.cli("cache", "plan")).stdout
    rows = [(READING_ORDER.index(line.split()[0]), line.split()[2])
            for line in out.splitlines()
            if len(line.split()) > 2 and line.split()[2] in broken_tree.expected]
    assert len(rows) == len(broken_tree.expected)
    assert rows == sorted(rows)


# -- status ------------------------------------------------------------------------------


def test_status_json(tree: Tree) -> None:
    data = json.loads(invoke(tree.cli("cache", "status", "--json")).stdout)
    assert data["cache_path"] == tree.cache_path
    assert data["files"] == len(tree.expected)
    assert data["disks"] == 3
    assert data["disks_by_format"] == {"qcow2": 3}
    assert data["instance_folders"] == 2
    assert data["problems"] == []
    counts: dict[str, int] = {}
    for verdict in tree.expected.values():
        counts[verdict] = counts.get(verdict, 0) + 1
    assert {v: row["files"] for v, row in data["by_verdict"].items()} == counts
    assert data["by_kind"]["original"]["files"] == 4
    assert data["reclaimable"] > 0


def test_status_text(broken_tree: Tree) -> None:
    proc = run_cli(*broken_tree.cli("cache", "status"))
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0] == f"cache        {broken_tree.cache_path}"
    assert lines[1].startswith(f"files        {len(broken_tree.expected)}: ")
    assert "problems     1" in lines
    assert any(line.strip().startswith("disk-corrupt: ") for line in lines)


# -- nothing but clean changes anything --------------------------------------------------


@pytest.mark.parametrize("command", [
    ["cache", "status"],
    ["cache", "status", "--json"],
    ["cache", "plan"],
    ["cache", "plan", "--json"],
    ["cache", "plan", "--cross-check"],
    ["cache", "clean", "--dry-run"],
    ["cache", "clean", "--dry-run", "--json"],
], ids=lambda c: " ".join(c[1:]))
def test_read_only_commands_modify_nothing(broken_tree: Tree, command: list[str]) -> None:
    before = snapshot(broken_tree.root)
    proc = run_cli(*broken_tree.cli(*command))
    assert proc.returncode == 0, proc.stderr
    assert snapshot(broken_tree.root) == before


# -- clean -------------------------------------------------------------------------------


def test_clean_yes_removes_exactly_the_removable_files(tree: Tree) -> None:
    before = snapshot(tree.root)
    names = cache_names(tree)
    proc = run_cli(*tree.cli("cache", "clean", "--yes"))
    assert proc.returncode == 0, proc.stderr
    assert cache_names(tree) == names - tree.removable
    after = snapshot(tree.root)
    cache_rel = os.path.relpath(tree.cache_path, tree.root)

    locks_rel = os.path.relpath(os.path.join(tree.instances_path, "locks"), tree.root)

    def outside(snap: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in snap.items()
                if k not in (cache_rel, locks_rel) and not k.startswith(cache_rel + os.sep)}

    assert outside(after) == outside(before)  # instance folders and disks untouched
    # nova's lock of each removed base was taken, then its file removed as nova does
    assert os.listdir(os.path.join(tree.instances_path, "locks")) == []
    # kept files are untouched, except that in-use bases are marked as nova marks them
    for name in names - tree.removable:
        rel = os.path.join(cache_rel, name)
        if name in tree.in_use:
            assert after[rel][2] > before[rel][2]
        else:
            assert after[rel] == before[rel]
    assert f"removed {len(tree.removable)} files" in proc.stdout
    assert f"marked {len(tree.in_use)} in-use bases" in proc.stdout
    # each removal is logged in nova's words, even without -v
    removing = {m.group(1) for m in re.finditer(r"Removing base file: (\S+)", proc.stderr)}
    assert removing == {tree.cache_file(n) for n in tree.removable}


def test_clean_twice_removes_nothing_the_second_time(tree: Tree) -> None:
    assert run_cli(*tree.cli("cache", "clean", "--yes")).returncode == 0
    names = cache_names(tree)
    proc = run_cli(*tree.cli("cache", "clean", "--yes"))
    assert proc.returncode == 0
    assert "removed 0 files" in proc.stdout
    assert cache_names(tree) == names


def test_clean_json_report(tree: Tree) -> None:
    out = json.loads(invoke(tree.cli("cache", "clean", "--yes", "--json")).stdout)
    result = out["result"]
    assert result["removed"] == len(tree.removable)
    assert result["failed"] == result["skipped"] == 0
    assert {o["name"] for o in result["outcomes"]} == tree.removable
    assert {o["action"] for o in result["outcomes"]} == {"removed"}
    assert verdicts(json.dumps(out["plan"])) == tree.expected


def test_clean_respects_touch_in_use_false(tree: Tree) -> None:
    with open(tree.config, "a") as f:
        f.write("[novakeeper]\ntouch_in_use = false\n")
    before = os.stat(tree.cache_file(ORIG_USED)).st_mtime_ns
    out = invoke(tree.cli("cache", "clean", "--yes")).stdout
    assert "marked 0 in-use bases" in out
    assert os.stat(tree.cache_file(ORIG_USED)).st_mtime_ns == before
    assert not os.path.exists(tree.cache_file(ORIG_OLD))


def test_clean_respects_remove_unused_base_images_false(tree: Tree) -> None:
    with open(tree.config, "a") as f:
        f.write("[DEFAULT]\nremove_unused_base_images = False\n")  # nova's old name
    names = cache_names(tree)
    proc = run_cli(*tree.cli("cache", "clean", "--yes", "--json"))
    assert proc.returncode == 0, proc.stderr
    assert cache_names(tree) == names
    # oslo.config's deprecation warning reaches the operator, in nova's format
    assert re.search(r"WARNING oslo_config\.cfg \[-\] .*remove_unused_base_images",
                     proc.stderr)


def test_clean_with_problems_exits_6_and_keeps_held_files(broken_tree: Tree) -> None:
    names = cache_names(broken_tree)
    proc = run_cli(*broken_tree.cli("cache", "clean", "--yes"))
    assert proc.returncode == ExitCode.PROBLEMS == 6
    assert cache_names(broken_tree) == names - broken_tree.removable
    assert SWAP_OLD in cache_names(broken_tree)
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("novakeeper: error: 1 problems met while scanning; 1 files held")
    assert sum(line.startswith("novakeeper: error:") for line in proc.stderr.splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_clean_dry_run_prints_the_same_plan_as_plan(tree: Tree) -> None:
    names = cache_names(tree)
    plan = run_cli(*tree.cli("cache", "plan"))
    dry = run_cli(*tree.cli("cache", "clean", "--dry-run"))
    assert dry.returncode == plan.returncode == 0
    assert dry.stdout == plan.stdout
    assert "removed" not in dry.stdout
    plan_json = run_cli(*tree.cli("cache", "plan", "--json"))
    dry_json = run_cli(*tree.cli("cache", "clean", "--dry-run", "--json"))
    assert without_clock(json.loads(dry_json.stdout)) == without_clock(
        json.loads(plan_json.stdout))
    assert "Removing base file" not in dry.stderr + dry_json.stderr
    assert cache_names(tree) == names


def test_clean_without_yes_proceeds_when_stdin_is_not_a_tty(tree: Tree) -> None:
    """Documented behaviour: `clean` asks only when stdin is a terminal. From cron, a
    pipe or /dev/null there is nobody to ask, so it proceeds as if --yes were given."""
    names = cache_names(tree)
    proc = run_cli(*tree.cli("cache", "clean"), stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "Remove " not in proc.stderr  # no question was asked
    assert cache_names(tree) == names - tree.removable


@pytest.mark.parametrize(("answer", "code"), [(b"n\n", ExitCode.ABORTED), (b"y\n", 0)])
def test_clean_without_yes_asks_on_a_tty(tree: Tree, answer: bytes, code: int) -> None:
    names = cache_names(tree)
    master, slave = pty.openpty()
    try:
        os.write(master, answer)  # typed ahead: the terminal holds it until read
        proc = run_cli(*tree.cli("cache", "clean"), stdin=slave, timeout=30)
    finally:
        os.close(slave)
        os.close(master)
    assert f"Remove {len(tree.removable)} files, freeing " in proc.stderr
    assert proc.returncode == code, proc.stderr
    if code == ExitCode.ABORTED:
        # the answer echoes on the terminal, not into stderr: the error follows the prompt
        assert proc.stderr.endswith("? [y/N]: novakeeper: error: nothing removed: "
                                    "not confirmed\n")
        assert cache_names(tree) == names
    else:
        assert cache_names(tree) == names - tree.removable


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["cache", "status"], ["cache", "plan", "--json"],
                                     ["cache", "clean", "--yes"]],
                         ids=["status", "plan", "clean"])
def test_missing_instances_path(tmp_path: Path, command: list[str]) -> None:
    conf = tmp_path / "nova.conf"
    conf.write_text("[DEFAULT]\n")
    missing = tmp_path / "no" / "instances"
    proc = run_cli("--config-file", str(conf), "--instances-path", str(missing), *command)
    assert proc.returncode == ExitCode.PATH == 4
    assert one_error_line(proc) == f"novakeeper: error: instances path {missing} does not exist"
    assert proc.stdout == ""


def test_instances_path_from_the_config_file(tree: Tree, tmp_path: Path) -> None:
    conf = tmp_path / "other.conf"
    conf.write_text(f"[DEFAULT]\ninstances_path = {tree.instances_path}\n")
    proc = run_cli("--config-file", str(conf), "cache", "plan", "--json")
    assert proc.returncode == 0, proc.stderr
    assert verdicts(proc.stdout) == tree.expected


def test_missing_cache_folder(tree: Tree) -> None:
    os.rename(tree.cache_path, tree.cache_path + ".old")
    proc = run_cli(*tree.cli("cache", "plan"))
    assert proc.returncode == 4
    assert one_error_line(proc) == (
        f"novakeeper: error: cache folder {tree.cache_path} does not exist")


def test_cache_folder_named_by_config_must_exist(tree: Tree) -> None:
    with open(tree.config, "a") as f:
        f.write("[image_cache]\nsubdirectory_name = _base_$my_ip\n")
    proc = run_cli(*tree.cli("cache", "status"))
    assert proc.returncode == 4
    assert re.fullmatch(r"novakeeper: error: cache folder .*/_base_\S+ does not exist",
                        one_error_line(proc))


def test_instances_path_is_a_file(tmp_path: Path) -> None:
    conf = tmp_path / "nova.conf"
    conf.write_text("[DEFAULT]\n")
    afile = tmp_path / "instances"
    afile.write_text("not a folder\n")
    proc = run_cli("--config-file", str(conf), "--instances-path", str(afile), "cache", "plan")
    assert proc.returncode == 4
    assert one_error_line(proc) == f"novakeeper: error: instances path {afile} is not a directory"


def test_cache_folder_is_a_file(tree: Tree) -> None:
    os.rename(tree.cache_path, tree.cache_path + ".old")
    Path(tree.cache_path).write_text("oops\n")
    proc = run_cli(*tree.cli("cache", "clean", "--yes"))
    assert proc.returncode == 4
    assert one_error_line(proc) == (
        f"novakeeper: error: cache folder {tree.cache_path} is not a directory")


def test_cache_folder_is_a_dangling_link(tree: Tree) -> None:
    os.rename(tree.cache_path, tree.cache_path + ".old")
    os.symlink(tree.cache_path + ".gone", tree.cache_path)
    proc = run_cli(*tree.cli("cache", "status"))
    assert proc.returncode == 4
    one_error_line(proc)


def unprivileged() -> tuple[str, ...]:
    """Prefix for a child that permission bits apply to; skip when there is none."""
    prefix = permission_prefix()
    if prefix is None:
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE (no working setpriv): "
                    "root ignores permission bits, so 'permission denied' cannot be "
                    "produced honestly; run the tests as an ordinary user")
    return prefix


@pytest.mark.parametrize("which", ["instances", "cache"])
def test_unreadable_instances_path_or_cache_folder(tree: Tree, which: str) -> None:
    folder = tree.instances_path if which == "instances" else tree.cache_path
    names = cache_names(tree)
    os.chmod(folder, 0)
    try:
        proc = run_cli(*tree.cli("cache", "clean", "--yes"), prefix=unprivileged())
    finally:
        os.chmod(folder, 0o755)
    assert proc.returncode == ExitCode.PERMISSION == 5
    what = "instances path" if which == "instances" else "cache folder"
    assert one_error_line(proc) == f"novakeeper: error: {what} {folder}: permission denied"
    assert cache_names(tree) == names


def test_unreadable_instance_folder_holds_everything(tree: Tree) -> None:
    folder = os.path.join(tree.instances_path, UUID_B)
    names = cache_names(tree)
    os.chmod(folder, 0)
    try:
        proc = run_cli(*tree.cli("cache", "clean", "--yes", "--json"), prefix=unprivileged())
    finally:
        os.chmod(folder, 0o755)
    assert proc.returncode == ExitCode.PROBLEMS, proc.stderr
    assert cache_names(tree) == names  # a folder we cannot read could use any of them
    plan = json.loads(proc.stdout)["plan"]
    assert [p["code"] for p in plan["problems"]] == ["folder-unreadable"]
    seen = verdicts(json.dumps(plan))
    assert seen[ORIG_OLD] == seen[SWAP_OLD] == "held"
    assert seen[ORIG_USED] == "in-use" and seen[UNKNOWN] == "unknown"


def test_unreadable_config_file_exits_3(tree: Tree) -> None:
    os.chmod(tree.config, 0)
    proc = run_cli(*tree.cli("cache", "plan"), prefix=unprivileged())
    assert proc.returncode == ExitCode.CONFIG
    assert one_error_line(proc) == f"novakeeper: error: {tree.config}: permission denied"


@pytest.mark.parametrize(("text", "words"), [
    ("[DEFAULT]\nno equals sign here\n", "line 2"),
    ("[image_cache]\nmanager_interval = often\n", "[image_cache] manager_interval"),
    ("[DEFAULT]\nremove_unused_base_images = maybe\n", "[DEFAULT] remove_unused_base_images"),
    ("[novakeeper]\ntuoch_in_use = true\n", "[novakeeper] tuoch_in_use: unknown option"),
    ("[image_cache]\nsubdirectory_name = ../etc\n", "[image_cache] subdirectory_name"),
], ids=["malformed", "int", "old-bool", "unknown", "subdir"])
def test_bad_config_exits_3(tree: Tree, text: str, words: str) -> None:
    with open(tree.config, "w") as f:
        f.write(text)
    names = cache_names(tree)
    proc = run_cli(*tree.cli("cache", "clean", "--yes"))
    assert proc.returncode == ExitCode.CONFIG == 3
    # oslo's deprecation warning may come first; the error itself is one line
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0] == proc.stderr.splitlines()[-1]
    assert errors[0].startswith(f"novakeeper: error: {tree.config}: ")
    assert words in errors[0]
    assert "Traceback" not in proc.stderr
    assert cache_names(tree) == names


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_config_file_missing_or_a_directory(tmp_path: Path, what: str) -> None:
    path = tmp_path / "nova.conf"
    if what == "directory":
        path.mkdir()
    proc = run_cli("--config-file", str(path), "cache", "status")
    assert proc.returncode == 3
    assert one_error_line(proc).startswith(f"novakeeper: error: {path}: ")


def test_usage_error_exits_2(tree: Tree) -> None:
    proc = run_cli(*tree.cli("cache", "plan", "--no-such-flag"))
    assert proc.returncode == ExitCode.USAGE == 2
    assert "No such option" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_main_turns_errors_into_one_line(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "nova.conf"
    conf.write_text("[DEFAULT]\n")
    with pytest.raises(SystemExit) as info:
        cli_mod.main(["--config-file", str(conf), "--instances-path", str(tmp_path / "x"),
                      "cache", "status"])
    assert info.value.code == ExitCode.PATH
    err = capsys.readouterr().err
    assert err == f"novakeeper: error: instances path {tmp_path / 'x'} does not exist\n"


@pytest.mark.parametrize("verbose", [[], ["-vv"]], ids=["quiet", "-vv"])
def test_internal_error_is_one_line_unless_vv(tree: Tree, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str],
                                              verbose: list[str]) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli_mod, "plan_pass", broken)
    with pytest.raises(SystemExit) as info:
        cli_mod.main([*verbose, *tree.cli("cache", "plan")])
    assert info.value.code == ExitCode.INTERNAL
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == ("novakeeper: error: internal error: RuntimeError: boom "
                                    "(run with -vv for the traceback)")
    assert ("Traceback" in err) == bool(verbose)


# -- logging -----------------------------------------------------------------------------


def test_verbose_logs_in_novas_format_and_words(tree: Tree) -> None:
    proc = run_cli("-v", *tree.cli("cache", "plan", "--json"))
    assert proc.returncode == 0
    parsed = [NOVA_LINE.match(line) for line in proc.stderr.splitlines()]
    assert parsed and all(parsed), proc.stderr
    matches = [m for m in parsed if m is not None]
    pids = {int(m.group(2)) for m in matches}
    assert len(pids) == 1 and os.getpid() not in pids  # the child's pid, on every line
    assert {m.group(4) for m in matches} == {"novakeeper.cache"}
    messages = {m.group(5).split(":", 1)[0]: m for m in matches}
    active = messages["Active base files"]
    assert active.group(3) == "INFO"
    assert set(active.group(5).split(": ", 1)[1].split()) == {
        tree.cache_file(n) for n in tree.in_use}
    removable = messages["Removable base files"]
    assert removable.group(3) == "INFO"
    assert set(removable.group(5).split(": ", 1)[1].split()) == {
        tree.cache_file(n) for n in tree.removable}
    assert messages["Base file too young to remove"].group(3) == "INFO"
    assert messages["Unknown base file"].group(3) == "WARNING"


def test_without_verbose_plan_logs_no_info(tree: Tree) -> None:
    proc = run_cli(*tree.cli("cache", "plan"))
    assert proc.returncode == 0
    assert " INFO " not in proc.stderr
    assert "Active base files" not in proc.stderr
    assert "Unknown base file" in proc.stderr  # warnings always show


def test_clean_logs_removals_in_novas_format(tree: Tree) -> None:
    proc = run_cli(*tree.cli("cache", "clean", "--yes"))
    assert proc.returncode == 0
    lines = [NOVA_LINE.match(line) for line in proc.stderr.splitlines()]
    assert all(lines), proc.stderr
    removing = [m for m in lines if m and m.group(5).startswith("Removing base file: ")]
    assert len(removing) == len(tree.removable)
    assert {m.group(3) for m in removing} == {"INFO"}
    assert any(m and m.group(5).startswith("Active base files: ") for m in lines)


def test_log_format_json(tree: Tree) -> None:
    proc = run_cli("--log-format", "json", "-v", *tree.cli("cache", "clean", "--yes"))
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    assert records
    for r in records:
        assert {"time", "pid", "level", "logger", "message"} <= set(r)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}", r["time"])
    assert {r["pid"] for r in records} != {os.getpid()}
    by_msg = {r["message"].split(":", 1)[0]: r for r in records}
    assert by_msg["Active base files"]["level"] == "INFO"
    removals = [r for r in records if r.get("event") == "remove"]
    assert {r["file"] for r in removals} == {tree.cache_file(n) for n in tree.removable}
    for r in removals:
        assert r["message"] == f"Removing base file: {r['file']}"
        assert r["verdict"] in ("remove", "stale-partial")
        assert r["frees"] >= 0 and r["reason"]


def test_log_format_json_covers_oslo_warnings_and_keeps_the_error_line(tree: Tree) -> None:
    with open(tree.config, "w") as f:
        f.write("[DEFAULT]\nimage_cache_manager_interval = 60\n"
                "[image_cache]\nsubdirectory_name = missing\n")
    proc = run_cli("--log-format", "json", *tree.cli("cache", "plan"))
    assert proc.returncode == 4
    *logs, error = proc.stderr.splitlines()
    assert error.startswith("novakeeper: error: cache folder ")
    records = [json.loads(line) for line in logs]
    assert any("image_cache_manager_interval" in r["message"] and r["level"] == "WARNING"
               for r in records)


# -- cross-check -------------------------------------------------------------------------


def test_cross_check_agrees_on_a_healthy_tree(tree: Tree) -> None:
    checked = run_cli(*tree.cli("cache", "plan", "--json", "--cross-check"))
    assert checked.returncode == 0, checked.stderr
    plain = run_cli(*tree.cli("cache", "plan", "--json"))
    assert without_clock(json.loads(checked.stdout)) == without_clock(json.loads(plain.stdout))
    assert json.loads(checked.stdout)["problems"] == []


def _lying_backing_format(tree: Tree) -> str:
    """A disk whose header says its backing file is raw when it is a qcow2 overlay.

    qemu-img believes the header and stops at the overlay; novakeeper reads every header
    and follows on to the base. The two chains differ: a real disagreement.
    """
    folder = os.path.join(tree.instances_path, "0d0d0d0d-0000-4000-8000-00000000000d")
    os.makedirs(folder)
    open(os.path.join(folder, "console.log"), "w").close()  # a finished spawn
    base = make_base(tree.cache_file(image_hash("image-behind-a-lie")), age=3 * DAY)
    mid = make_overlay(os.path.join(folder, "snap.qcow2"), base)
    make_overlay(os.path.join(folder, "disk"), mid, backing_format="raw")
    return os.path.join(folder, "disk")


def test_cross_check_disagreement_exits_9_and_holds_bases(tree: Tree) -> None:
    disk = _lying_backing_format(tree)
    plain = run_cli(*tree.cli("cache", "plan", "--json"))
    assert plain.returncode == 0
    assert verdicts(plain.stdout)[ORIG_OLD] == "remove"
    proc = run_cli(*tree.cli("cache", "plan", "--json", "--cross-check"))
    assert proc.returncode == ExitCode.CROSS_CHECK == 9
    plan = json.loads(proc.stdout)
    [problem] = plan["problems"]
    assert problem["code"] == "cross-check"
    assert problem["path"] == disk
    seen = verdicts(proc.stdout)
    assert seen[image_hash("image-behind-a-lie")] == "in-use"  # we follow the real header
    assert seen[ORIG_OLD] == "held"  # a root disk in doubt holds unused originals
    assert seen[ORIG_USED] == "in-use"
    assert proc.stderr.splitlines()[-1] == (
        "novakeeper: error: qemu-img disagrees with novakeeper on 1 disks; "
        "their bases are held")


def test_clean_with_cross_check_disagreement_keeps_held_bases(tree: Tree) -> None:
    _lying_backing_format(tree)
    proc = run_cli(*tree.cli("cache", "clean", "--yes", "--cross-check"))
    assert proc.returncode == 9
    assert os.path.exists(tree.cache_file(ORIG_OLD))
    assert not os.path.exists(tree.cache_file(SWAP_OLD))  # a root disk holds no swap


# -- entry points ------------------------------------------------------------------------


def test_console_script(tree: Tree) -> None:
    script = os.path.join(os.path.dirname(sys.executable), "novakeeper")
    if not os.path.exists(script):
        pytest.skip(f"console script not installed next to {sys.executable}")
    proc = subprocess.run([script, *tree.cli("cache", "plan", "--json")],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert verdicts(proc.stdout) == tree.expected


def test_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("novakeeper, version ")


def test_global_options_also_follow_the_command(tree: Tree) -> None:
    """`novakeeper cache plan --instances-path X`, as the issue and operators write it."""
    before = run_cli(*tree.cli("cache", "plan", "--json"))
    after = run_cli("cache", "plan", "--json", "--config-file", tree.config,
                    "--instances-path", tree.instances_path, "-v", "--log-format", "json")
    assert after.returncode == 0, after.stderr
    assert verdicts(after.stdout) == verdicts(before.stdout) == tree.expected
    logged = [json.loads(line) for line in after.stderr.splitlines()]
    assert any(r["message"].startswith("Active base files: ") for r in logged)


def test_instances_path_after_the_command_wins_over_the_one_before(tree: Tree) -> None:
    proc = run_cli("--instances-path", "/nonexistent", "cache", "status", "--json",
                   "--config-file", tree.config, "--instances-path", tree.instances_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["instances_path"] == tree.instances_path
