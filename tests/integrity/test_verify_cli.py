"""`novakeeper cache verify` from the command line, end to end: `python -m novakeeper` in
child processes on a real tree (bases of random data, an instance's qcow2 disk made by
qemu-img), exit codes and the one-line errors as an operator sees them, the JSON, the
progress bar on a terminal (a pty) and not when piped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pty
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from _cli_tree import make_overlay, permission_prefix, run_cli
from novakeeper import cli as cli_mod
from novakeeper.cache.layout import QUARANTINE_NAME, image_hash
from novakeeper.errors import ExitCode

KiB = 1 << 10
USED, FREE, OTHER = (image_hash(f"cli-image-{k}") for k in ("used", "free", "other"))
SIZES = {USED: 700 * KiB + 3, FREE: 512 * KiB, OTHER: 300 * KiB}
INSTANCE = "0a0a0a0a-0000-4000-8000-0000000000c1"


@dataclass
class Tree:
    instances: Path
    cache: Path
    config: Path

    def run(self, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        return run_cli("--config-file", str(self.config), "--instances-path",
                       str(self.instances), "cache", "verify", *args, prefix=prefix)

    def json(self, *args: str) -> tuple[int, dict[str, object]]:
        proc = self.run("--json", *args)
        return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    instances = tmp_path / "instances"
    cache = instances / "_base"
    cache.mkdir(parents=True)
    for name, size in SIZES.items():
        (cache / name).write_bytes(os.urandom(size))
    (instances / INSTANCE).mkdir()
    make_overlay(str(instances / INSTANCE / "disk"), str(cache / USED))
    config = tmp_path / "nova.conf"
    config.write_text("[DEFAULT]\nhost = h1\n[novakeeper]\nlock_wait_seconds = 0.2\n")
    return Tree(instances, cache, config)


def flip_byte(path: Path, offset: int) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The last stderr line: the one-line error (log lines may come before it)."""
    lines = proc.stderr.strip().splitlines()
    assert lines, proc
    return lines[-1]


def test_a_sound_cache_exits_0_and_is_not_read_twice(tree: Tree) -> None:
    code, first = tree.json()
    assert code == 0
    files = {f["name"]: f for f in first["files"]}  # type: ignore[attr-defined]
    assert {n: f["status"] for n, f in files.items()} == dict.fromkeys(SIZES, "recorded")
    for name, f in files.items():
        assert f["digest"] == hashlib.sha256((tree.cache / name).read_bytes()).hexdigest()
    assert first["bytes_read"] == sum(SIZES.values())
    code, second = tree.json()
    assert code == 0 and second["bytes_read"] == 0
    assert second["summary"]["unchanged"] == 3  # type: ignore[index]

    text = tree.run()
    assert text.returncode == 0
    assert "read 0 files (0 B" in text.stdout and "3 unchanged, not read" in text.stdout


def test_a_flipped_byte_exits_12_and_quarantines(tree: Tree) -> None:
    assert tree.run().returncode == 0
    flip_byte(tree.cache / FREE, 4321)
    proc = tree.run()
    assert proc.returncode == ExitCode.CORRUPT == 12
    assert error_line(proc) == ("novakeeper: error: 1 corrupt base files: 1 quarantined, "
                                "0 in use")
    assert f"MISMATCH   {tree.cache / FREE}" in proc.stdout
    assert "size and mtime unchanged" in proc.stdout
    assert not (tree.cache / FREE).exists()
    assert (tree.cache / QUARANTINE_NAME / FREE).stat().st_size == SIZES[FREE]
    # the plan no longer sees it, nor the quarantine folder
    plan = run_cli("--config-file", str(tree.config), "--instances-path",
                   str(tree.instances), "cache", "plan", "--json")
    names = {d["name"] for d in json.loads(plan.stdout)["decisions"]}
    assert names == {USED, OTHER}


def test_a_corrupt_base_in_use_exits_12_naming_the_instances(tree: Tree) -> None:
    assert tree.run().returncode == 0
    flip_byte(tree.cache / USED, 9)
    proc = tree.run()
    assert proc.returncode == 12
    assert f"IN USE by instance {INSTANCE}: not moved" in proc.stdout
    assert error_line(proc) == (f"novakeeper: error: 1 corrupt base files: 0 quarantined, "
                                f"1 in use (instances at risk: instance {INSTANCE})")
    logged = [x for x in proc.stderr.splitlines() if " ERROR novakeeper.cache " in x]
    assert len(logged) == 1 and INSTANCE in logged[0] and USED in logged[0]
    assert (tree.cache / USED).exists()


def test_a_truncated_base_exits_12(tree: Tree) -> None:
    assert tree.run().returncode == 0
    os.truncate(tree.cache / OTHER, 1000)
    code, report = tree.json(OTHER)
    assert code == 12
    [f] = report["files"]  # type: ignore[misc]
    assert f["status"] == "mismatch" and f["detail"].startswith("truncated: 1000 bytes")
    assert f["action"] == "quarantined"


@pytest.mark.parametrize(("arg", "code", "message"), [
    ("/etc/hostname", 2, "/etc/hostname: not in the cache folder {cache}; verify reads "
                         "cache files only"),
    ("{cache}/.novakeeper-quarantine/x", 2, "not in the cache folder"),
    ("no-such-base", 4, "no-such-base: no such file in the cache {cache}"),
    ("{part}", 2, "{part}: a download in progress, not a base file"),
    ("link", 2, "link: a symbolic link, not a base file"),
])
def test_bad_file_arguments_are_one_line_errors(tree: Tree, arg: str, code: int,
                                                message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """In process (cli.main prints the same line as the command): one subprocess each
    would only test the interpreter's start-up again."""
    part = image_hash("x") + ".part"
    (tree.cache / part).write_bytes(b"partial")
    (tree.cache / "link").symlink_to(tree.cache / FREE)
    fill = {"cache": str(tree.cache), "part": part}
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with pytest.raises(SystemExit) as info:
            cli_mod.main(["--config-file", str(tree.config), "--instances-path",
                          str(tree.instances), "cache", "verify", arg.format(**fill)])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    out, err = capsys.readouterr()
    assert info.value.code == code
    line = err.strip().splitlines()[-1]
    assert line.startswith("novakeeper: error: ") and message.format(**fill) in line
    assert out == ""


def test_permission_denied_is_exit_5(tree: Tree) -> None:
    prefix = permission_prefix()
    if prefix is None:
        pytest.skip("cannot drop root's permission override here")
    os.chmod(tree.cache / OTHER, 0)
    try:
        named = tree.run(OTHER, prefix=prefix)
        assert named.returncode == ExitCode.PERMISSION
        assert error_line(named) == f"novakeeper: error: {tree.cache / OTHER}: permission denied"
        everything = tree.run(prefix=prefix)
        assert everything.returncode == ExitCode.PERMISSION
        assert error_line(everything) == (f"novakeeper: error: {tree.cache / OTHER}: "
                                          "permission denied")
        assert "recorded" in everything.stdout  # the readable ones were verified
    finally:
        os.chmod(tree.cache / OTHER, 0o644)


def test_algorithm_and_rate_limit_options(tree: Tree) -> None:
    code, report = tree.json("--algorithm", "md5", "--rate-limit", "50", FREE)
    assert code == 0
    assert report["algorithm"] == "md5" and report["rate_limit_mib_s"] == 50
    [f] = report["files"]  # type: ignore[misc]
    assert f["digest"] == hashlib.md5((tree.cache / FREE).read_bytes()).hexdigest()
    bad = tree.run("--algorithm", "crc32")
    assert bad.returncode == 2 and "crc32" in bad.stderr
    # --force reads what is unchanged
    code, again = tree.json("--algorithm", "md5", "--force", FREE)
    assert code == 0 and again["bytes_read"] == SIZES[FREE]


def _on_a_terminal(tree: Tree, *args: str) -> tuple[int, str, str]:
    """stderr on a pty (the progress bar's console), stdout piped."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "novakeeper", "--config-file", str(tree.config),
         "--instances-path", str(tree.instances), "cache", "verify", *args],
        stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL,
        env=dict(os.environ, COLUMNS="120", TERM="xterm"))
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out = proc.stdout.read().decode() if proc.stdout else ""
    if proc.stdout:
        proc.stdout.close()
    return proc.wait(timeout=60), out, b"".join(chunks).decode(errors="replace")


def test_a_progress_bar_with_bytes_per_second_on_a_terminal_only(tree: Tree) -> None:
    # 1.5 MiB at 4 MiB/s: about 0.4 s, several refreshes of the bar
    code, out, term = _on_a_terminal(tree, "--rate-limit", "4")
    assert code == 0
    assert "MiB/s" in term and "verifying" not in out
    piped = tree.run("--force")
    assert piped.returncode == 0
    assert "MiB/s" not in piped.stderr and "\x1b[" not in piped.stderr
