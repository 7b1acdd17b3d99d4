"""The signatures issue 12 added: each needs its own condition (a disk line near the
no-valid-host, a down compute host near the forcing), and the unreadable-module one is
found in the traceback Python really prints for a package its user cannot read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from _cli_tree import permission_prefix
from novakeeper.logs import diagnose, sources

SHIPPED = diagnose.load()
BY_ID = {s.id: s for s in SHIPPED}
ADDED = ("module-unreadable", "console-proxy-unreachable-backend", "no-valid-host-disk",
         "forced-host-down", "guest-agent-not-enabled")


def found(root: Path) -> list[str]:
    files = sources.discover([str(root)]).files
    return [h.signature.id for h in diagnose.diagnose(files, SHIPPED).hits]


def test_the_five_are_shipped_with_a_sample_and_a_fix() -> None:
    for sid in ADDED:
        sig = BY_ID[sid]
        assert sig.sample and sig.cause and sig.fix


def test_no_allocation_candidates_needs_a_disk_line_near_it(tmp_path: Path) -> None:
    placement, scheduler = BY_ID["no-valid-host-disk"].sample.strip("\n").splitlines()
    log = tmp_path / "nova-scheduler.log"
    log.write_text(scheduler + "\n")  # alone: could be RAM or VCPU
    assert found(tmp_path) == []
    log.write_text(placement.replace("80 DISK_GB", "4096 MEMORY_MB") + "\n" + scheduler + "\n")
    assert found(tmp_path) == []
    log.write_text(placement + "\n" + scheduler + "\n")
    assert found(tmp_path) == ["no-valid-host-disk"]
    old = ("2026-11-20 12:01:00.000 2202 INFO nova.filters [None req-1 u p - d d] Filter "
           "DiskFilter returned 0 hosts\n2026-11-20 12:01:00.100 2303 ERROR "
           "nova.conductor.manager [None req-1 u p - d d] Failed to schedule instances: "
           "NoValidHost_Remote: No valid host was found. There are not enough hosts "
           "available.\n")
    log.write_text(old)  # before placement: DiskFilter
    assert found(tmp_path) == ["no-valid-host-disk"]


def test_forcing_a_host_needs_a_down_compute_near_it(tmp_path: Path) -> None:
    down, forcing = BY_ID["forced-host-down"].sample.strip("\n").splitlines()
    log = tmp_path / "nova-scheduler.log"
    log.write_text(forcing + "\n")
    assert found(tmp_path) == []
    log.write_text(down.replace("13:40:02", "11:40:02") + "\n" + forcing + "\n")  # 2 h before
    assert found(tmp_path) == []
    log.write_text(down + "\n" + forcing + "\n")
    assert found(tmp_path) == ["forced-host-down"]


def test_libvirts_own_words_for_a_missing_agent_channel(tmp_path: Path) -> None:
    (tmp_path / "nova-compute.log").write_text(
        "2026-11-20 14:07:02.118 4101 ERROR nova.compute.manager [None req-1 u p - d d] "
        "[instance: 8d2f4c6a-1b3e-4a5c-9d7f-0e2a4c6e8a0b] libvirt.libvirtError: argument "
        "unsupported: QEMU guest agent is not configured\n")
    assert found(tmp_path) == ["guest-agent-not-enabled"]


@pytest.mark.parametrize(("mode_of", "statement", "words"), [
    ("pkg/sub", "import pkg.sub.mod", "No module named 'pkg.sub.mod'"),
    ("pkg/sub", "from pkg.sub import VALUE",
     "cannot import name 'VALUE' from 'pkg.sub' (unknown location)"),
    ("pkg/sub/mod.py", "import pkg.sub.mod", "PermissionError: [Errno 13] Permission denied"),
])
def test_pythons_real_error_for_an_unreadable_module_is_found(
        tmp_path: Path, mode_of: str, statement: str, words: str) -> None:
    prefix = permission_prefix()
    if prefix is None:
        pytest.skip("cannot drop root's permission override here")
    site = tmp_path / "site"
    (site / "pkg" / "sub").mkdir(parents=True)
    (site / "pkg" / "__init__.py").write_text("")
    (site / "pkg" / "sub" / "__init__.py").write_text("VALUE = 1\n")
    (site / "pkg" / "sub" / "mod.py").write_text("X = 1\n")
    os.chmod(site / mode_of, 0)  # as if another user's with mode 0700 / 0600
    proc = subprocess.run([*prefix, sys.executable, "-S", "-c",
                           f"import sys; sys.path.insert(0, {str(site)!r}); {statement}"],
                          capture_output=True, text=True, timeout=60, check=False)
    os.chmod(site / mode_of, 0o755)
    assert proc.returncode == 1 and words in proc.stderr, proc.stderr
    prefix_words = "2026-11-20 09:12:03.441 3120 ERROR nova.virt.driver "
    log = [prefix_words + "[-] Unable to load the virtualization driver"]
    log += [prefix_words + line for line in proc.stderr.rstrip("\n").splitlines()]
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "nova-compute.log").write_text("\n".join(log) + "\n")
    assert found(logs) == ["module-unreadable"]
