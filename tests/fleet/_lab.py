"""A fleet on this machine: hosts with ansible_connection=local, each its own compute node
(a sandbox from novakeeper's demo builder: real qcow2 disks over a real _base), its own
venv, configuration, state, systemd and metrics folders; and one host that cannot be
reached. Used by the tests and by bench/fleet.py."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from novakeeper.demo import Sandbox, build_sandbox

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "deploy" / "ansible"
PLAYBOOKS = ANSIBLE_DIR / "playbooks"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "novakeeper"
MiB = 1 << 20
DOWN_HOST = "node-down"


def dependency_wheels() -> Path:
    """Wheels of novakeeper's dependencies, built once per dependency list and kept in
    ~/.cache/novakeeper/fleet-wheels-<hash> (CI time: seconds after the first run)."""
    text = (REPO / "pyproject.toml").read_text()
    deps = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    key = hashlib.sha256((deps + sys.version).encode()).hexdigest()[:12]
    folder = CACHE / f"fleet-wheels-{key}"
    if not (folder / ".complete").exists():
        folder.mkdir(parents=True, exist_ok=True)
        requirements = [d.strip().strip('",') for d in deps.splitlines() if d.strip()]
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir",
                        str(folder), *requirements], check=True, capture_output=True)
        (folder / ".complete").write_text("")
    return folder


def build_wheels(target: Path, version: str | None = None) -> Path:
    """A wheel folder as an operator's controller would hold it: novakeeper built from this
    checkout (optionally with another version number, for upgrade tests) and its
    dependencies."""
    target.mkdir(parents=True, exist_ok=True)
    for wheel in dependency_wheels().glob("*.whl"):
        shutil.copy(wheel, target / wheel.name)
    source = REPO
    if version is not None:
        source = target.parent / f"src-{version}"
        shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
            ".git", "tests", "bench", "docs", "*.egg-info", "build", "__pycache__"),
            symlinks=True)
        for path, old, new in ((source / "pyproject.toml", 'version = "0.1.0"',
                                f'version = "{version}"'),
                               (source / "src/novakeeper/__init__.py",
                                '__version__ = "0.1.0"', f'__version__ = "{version}"')):
            path.write_text(path.read_text().replace(old, new))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--wheel-dir", str(target), str(source)], check=True, capture_output=True,
                   cwd=target)
    return target


@dataclass
class Node:
    name: str
    root: Path
    sandbox: Sandbox
    vars: dict[str, Any]

    @property
    def bin(self) -> Path:
        return Path(self.vars["novakeeper_venv"]) / "bin" / "novakeeper"

    @property
    def config(self) -> Path:
        return Path(self.vars["novakeeper_config_path"])

    def argv(self, *command: str) -> list[str]:
        return [str(self.bin), "--config-file", str(self.config), *command]

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*command), capture_output=True, text=True,
                              timeout=300, check=False, env=node_env(), stdin=subprocess.DEVNULL)


def allocated(path: str) -> int:
    return sum(e.stat(follow_symlinks=False).st_blocks * 512 for e in os.scandir(path))


def build_node(root: Path, name: str, instances: int, seed: int,
               wheel_dir: Path) -> Node:
    home = root / name
    sb = build_sandbox(str(home), instances=instances, seed=seed)
    budget_mib = max(1, int(allocated(sb.cache_path) * 0.55) // MiB)
    node_vars = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "novakeeper_become": False,
        "novakeeper_wheel_dir": str(wheel_dir),
        "novakeeper_python": sys.executable,
        "novakeeper_venv": str(home / "venv"),
        "novakeeper_wheel_cache": str(home / "wheels"),
        "novakeeper_config_path": str(home / "etc" / "novakeeper.conf"),
        "novakeeper_nova_config_files": [],
        "novakeeper_config_group": "root",
        "novakeeper_user": "root",
        "novakeeper_instances_path": sb.instances_path,
        "novakeeper_state_path": str(home / "state" / "state.db"),
        "novakeeper_max_cache_size": f"{budget_mib}M",
        "novakeeper_pinned_images": [sb.pinned_image],
        "novakeeper_systemd_manage": False,
        "novakeeper_systemd_dir": str(home / "systemd"),
        "novakeeper_metrics_dir": str(home / "metrics"),
        "novakeeper_cell": f"cell{seed % 2 + 1}",
        "novakeeper_aggregate": "ssd",
        "novakeeper_az": "az1",
    }
    (home / "systemd").mkdir(parents=True, exist_ok=True)
    return Node(name, home, sb, node_vars)


def write_inventory(path: Path, nodes: list[Node], down: bool = True) -> Path:
    hosts: dict[str, Any] = {}
    if down:
        # first in the inventory, so a serial clean meets it first; nothing listens on
        # port 1: ssh is refused at once (no timeout to wait for)
        hosts[DOWN_HOST] = {"ansible_connection": "ssh", "ansible_host": "127.0.0.1",
                            "ansible_port": 1, "ansible_user": "nobody",
                            "novakeeper_become": False}
    hosts.update({n.name: n.vars for n in nodes})
    path.write_text(yaml.safe_dump({"all": {"children": {"compute": {"hosts": hosts}}}},
                                   sort_keys=False))
    return path


def node_env() -> dict[str, str]:
    """The environment of a "node": no PYTHONPATH (its venv's own novakeeper runs, not
    this checkout's) and none of the tests' OS_NOVAKEEPER__* overrides (its own
    configuration file decides)."""
    return {k: v for k, v in os.environ.items()
            if k != "PYTHONPATH" and not k.startswith("OS_NOVAKEEPER__")}


def ansible_env() -> dict[str, str]:
    env = node_env()
    env.update(ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_SSH_ARGS="-o ConnectTimeout=5 -o StrictHostKeyChecking=no",
               ANSIBLE_RETRY_FILES_ENABLED="0")
    return env


def playbook(inventory: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("ansible-playbook")
    assert binary, "ansible-playbook is not installed (pip install -e '.[test]')"
    return subprocess.run([binary, "-i", str(inventory), str(PLAYBOOKS / name), *args],
                          capture_output=True, text=True, timeout=900, check=False,
                          env=ansible_env(), cwd=ANSIBLE_DIR, stdin=subprocess.DEVNULL)


def fleet_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`novakeeper fleet ...` from this checkout, with the nodes' environment passed on to
    Ansible (this checkout is put on sys.path inside the process, not in PYTHONPATH)."""
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from novakeeper.cli import main; main(sys.argv[1:])")
    return subprocess.run([sys.executable, "-c", code, str(REPO / "src"), "fleet", *args],
                          capture_output=True, text=True, timeout=900, check=False,
                          env=ansible_env(), cwd=cwd or ANSIBLE_DIR, stdin=subprocess.DEVNULL)
