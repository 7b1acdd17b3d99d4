"""One fleet on this machine for the whole tests/fleet session (building it and running
the role once costs most of a minute): see _lab.py."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fleet import _lab

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
