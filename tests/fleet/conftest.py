"""One fleet on this machine for the whole tests/fleet session (building it and running
the role once costs most of a minute): see _lab.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet import _lab

HOSTS = ("node1", "node2", "node3")
INSTANCES = 20


def need_ansible() -> None:
    missing = [t for t in ("ansible-playbook", "ansible-lint") if shutil.which(t) is None]
    try:
        import ansible_runner  # noqa: F401
    except ImportError:
        missing.append("ansible-runner")
    if missing:
        message = f"{', '.join(missing)} not installed (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run this test")
        pytest.skip(message)


@dataclass
class Lab:
    root: Path
    wheels: Path
    nodes: dict[str, _lab.Node]
    inventory: Path


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    need_ansible()
    root = tmp_path_factory.mktemp("fleet")
    wheels = _lab.build_wheels(root / "wheels")
    nodes = {name: _lab.build_node(root, name, INSTANCES, seed, wheels)
             for seed, name in enumerate(HOSTS, start=1)}
    inventory = _lab.write_inventory(root / "inventory.yml", list(nodes.values()))
    yield Lab(root, wheels, nodes, inventory)


@pytest.fixture(scope="session")
def installed(lab: Lab) -> subprocess.CompletedProcess[str]:
    """The role's first run over the reachable nodes."""
    proc = _lab.playbook(lab.inventory, "novakeeper.yml", "--limit", REACHABLE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


REACHABLE = f"compute:!{_lab.DOWN_HOST}"


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP: host -> {ok, changed, unreachable, failed, ...}."""
    tail = output.rsplit("PLAY RECAP", 1)[-1]
    out = {}
    for m in re.finditer(r"^(\S+)\s+:\s+(.*)$", tail, re.M):
        out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return out


def snapshot(node: _lab.Node) -> dict[str, tuple[int, int, int]]:
    """Every file the role manages on a node, with (mode, size, mtime_ns)."""
    out = {}
    for top in ("etc", "systemd", "metrics", "wheels", "venv/bin", "state"):
        for dirpath, dirnames, filenames in os.walk(node.root / top):
            for name in [*filenames, *dirnames]:
                st = os.lstat(os.path.join(dirpath, name))
                out[os.path.join(dirpath, name)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out
