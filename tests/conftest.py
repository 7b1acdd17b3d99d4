"""Shared helpers: real image files made with qemu-img (no mocks).

The test folders have no __init__.py (pytest's default "prepend" import mode puts this
folder on sys.path), so test modules anywhere under tests/ can do
`from conftest import make_qcow2, make_raw, qemu_img`.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

QEMU_IMG = shutil.which("qemu-img") or "qemu-img"


def qemu_img(*args: str, cwd: str | os.PathLike[str] | None = None) -> str:
    """Run qemu-img; fail the test with its stderr when it fails. Returns stdout."""
    proc = subprocess.run(
        [QEMU_IMG, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )
    if proc.returncode != 0:
        raise AssertionError(f"qemu-img {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def make_qcow2(
    path: str | os.PathLike[str],
    backing: str | os.PathLike[str] | None = None,
    backing_fmt: str = "raw",
    size: str | None = "1G",
    extra_args: Sequence[str] = (),
) -> Path:
    """`qemu-img create -q -f qcow2 [-b backing -F fmt] [extra] path [size]`, run in the
    folder of `path` so that a relative `backing` is taken as qemu will read it."""
    target = Path(os.path.abspath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    args = ["create", "-q", "-f", "qcow2"]
    if backing is not None:
        args += ["-b", os.fspath(backing), "-F", backing_fmt]
    args += [*extra_args, str(target)]
    if size is not None:
        args.append(size)
    qemu_img(*args, cwd=target.parent)
    return target


def make_raw(path: str | os.PathLike[str], size: int, data: bytes = b"") -> Path:
    """A sparse raw file of `size` bytes that starts with `data`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as f:
        f.write(data)
        f.truncate(max(size, len(data)))
    return target


def make_deep_chain(root: Path, base_name: str, base_data: bytes = b"") -> dict[str, Path]:
    """inst/disk -> ../snap/top.qcow2 -> ../other/mid.qcow2 -> ../_base/<base_name> (raw),
    every backing name relative to its own image's folder."""
    base = make_raw(root / "_base" / base_name, 4 << 20, base_data)
    mid = make_qcow2(root / "other" / "mid.qcow2", backing=f"../_base/{base_name}", size="4M")
    top = make_qcow2(root / "snap" / "top.qcow2", backing="../other/mid.qcow2",
                     backing_fmt="qcow2", size="4M")
    disk = make_qcow2(root / "inst" / "disk", backing="../snap/top.qcow2",
                      backing_fmt="qcow2", size="4M")
    return {"disk": disk, "top": top, "mid": mid, "base": base}


@pytest.fixture(autouse=True)
def _private_state_database(tmp_path_factory: pytest.TempPathFactory,
                            monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own state database, through oslo.config's environment source
    (inherited by the CLI subprocesses); no test ever writes /var/lib/novakeeper."""
    path = tmp_path_factory.mktemp("state") / "novakeeper" / "state.db"
    monkeypatch.setenv("OS_NOVAKEEPER__STATE_PATH", str(path))
    return path


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """In-process CLI runs point the root logger at a stream that dies with the run."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def side_venv_python(name: str, variable: str) -> Path:
    """The python of a side virtualenv that .ci/<name>-setup fills (Keystone, nova), where
    the tests need it: `$variable`, else the script's default under the user's cache
    folder. Missing: a failure in CI (.ci/run installs it), a skip elsewhere."""
    venv = os.environ.get(variable)
    if not venv:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(
            os.environ.get("HOME") or "/tmp", ".cache")
        venv = os.path.join(cache, "novakeeper", f"{name}-venv")
    python = Path(venv) / "bin" / "python"
    if not python.exists():
        message = f"no {name} virtualenv at {python}: run .ci/{name}-setup"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


def start_ready_server(cmd: Sequence[str], log_path: Path, what: str, timeout: float = 180
                       ) -> tuple[subprocess.Popen[str], int]:
    """Start a server script (Keystone, Glance) that prints `READY <port>` on stdout and
    exits when its stdin closes; fail the test with the end of its log if it does not
    come up. No OS_* variable of the test's reaches it."""
    log = open(log_path, "w")  # noqa: SIM115 - the child keeps its own copy
    proc = subprocess.Popen(list(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=log, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("OS_")})
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: [lines.put(x) for x in stdout], daemon=True).start()
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        line = ""
    log.close()
    if not line.startswith("READY "):
        proc.kill()
        proc.wait()
        pytest.fail(f"{what} did not start: {log_path.read_text()[-3000:]}")
    return proc, int(line.split()[1])


def stop_server(proc: subprocess.Popen[str]) -> None:
    """Close its stdin (the servers exit then); kill it if it does not within 10 s."""
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
