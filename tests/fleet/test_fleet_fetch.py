"""`novakeeper fleet fetch` through ansible-runner: every node of a local fleet puts a
real Glance image (behind the real Keystone) into its own cache, exactly the bytes
Glance holds, under the cache name nova uses; an image Glance does not have fails on
every node with `cache fetch`'s reason and leaves the caches as they were; the
unreachable host is named with Ansible's reason."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet import _lab
from fleet.conftest import need_ansible

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "glance"))
from _cloud import Cloud, cloud_fixture, glance_env  # noqa: F401 - the fixture

from novakeeper.errors import ExitCode

NODES = ("fetch1", "fetch2")


def wrapper(folder: Path) -> Path:
    """A node's `novakeeper`: this checkout, run by this python (the role's venv is not
    needed to test the fetch; tests/fleet/test_role.py tests the role)."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "novakeeper"
    src = _lab.REPO / "src"
    script.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c 'import sys; sys.path.insert(0, \"{src}\"); "
        "from novakeeper.cli import main; main(sys.argv[1:])' \"$@\"\n")
    script.chmod(0o755)
    return folder


def fleet_of(root: Path, cloud: Cloud) -> tuple[Path, dict[str, Path]]:
    venv = wrapper(root / "venv")
    caches: dict[str, Path] = {}
    hosts: dict[str, Any] = {_lab.DOWN_HOST: {
        "ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 1,
        "ansible_user": "nobody", "novakeeper_become": False}}
    for name in NODES:
        home = root / name
        cache = home / "instances" / "_base"
        cache.mkdir(parents=True)
        conf = home / "novakeeper.conf"
        conf.write_text(f"[DEFAULT]\ninstances_path = {home / 'instances'}\nhost = {name}\n"
                        "[novakeeper]\nglance_images = true\nglance_cloud = admin\n"
                        f"usage_sources =\nstate_path = {home / 'state.db'}\n")
        caches[name] = cache
        hosts[name] = {"ansible_connection": "local",
                       "ansible_python_interpreter": sys.executable,
                       "novakeeper_become": False, "novakeeper_venv": str(venv),
                       "novakeeper_nova_config_files": [],
                       "novakeeper_config_path": str(conf),
                       "novakeeper_environment": glance_env(cloud)}
    inventory = root / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"compute": {"hosts": hosts}}}}))
    return inventory, caches


def fetch(inventory: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    proc = _lab.fleet_cli("fetch", *args, "-i", str(inventory), "--json")
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def test_every_node_fetches_the_image_as_nova_names_it(tmp_path: Path, cloud: Cloud) -> None:
    need_ansible()
    image_file = tmp_path / "tiny.raw"
    image_file.write_bytes(os.urandom(1 << 20) + bytes(1 << 20))
    image = cloud.upload(image_file, "raw", "fleet-tiny")
    inventory, caches = fleet_of(tmp_path / "fleet", cloud)

    code, data, stderr = fetch(inventory, image.id, "--limit", "compute", "--pin")
    assert code == ExitCode.PROBLEMS, stderr  # the unreachable host
    assert [d["host"] for d in data["down"]] == [_lab.DOWN_HOST]
    assert "port 1" in data["down"][0]["reason"] or "refused" in data["down"][0]["reason"]
    assert sorted(n["host"] for n in data["done"]) == list(NODES), [
        n["reason"] for n in data["failed"]]
    assert not data["failed"]
    name = hashlib.sha1(image.id.encode()).hexdigest()
    for n in data["done"]:
        (got,) = n["fetched"]
        assert got["action"] == "fetched" and got["pinned"] is True
        base = caches[n["host"]] / name
        assert got["path"] == str(base)
        assert base.read_bytes() == image_file.read_bytes()  # exactly Glance's bytes
    assert data["totals"]["fetched"] == 2 and data["totals"]["bytes"] == 2 * (2 << 20)

    # again, on the reachable nodes only: present, touched, nothing downloaded
    code, again, stderr = fetch(inventory, image.id, "--limit", ",".join(NODES))
    assert code == 0, stderr
    assert [f["action"] for n in again["done"] for f in n["fetched"]] == ["present"] * 2
    assert again["totals"]["bytes"] == 0


def test_an_image_glance_lacks_fails_on_every_node_and_leaves_the_caches(
        tmp_path: Path, cloud: Cloud) -> None:
    need_ansible()
    inventory, caches = fleet_of(tmp_path / "fleet", cloud)
    missing = "0e4c3b7a-9a51-4c8e-8f55-5bd0d8b1e0aa"
    code, data, stderr = fetch(inventory, missing, "--limit", ",".join(NODES))
    assert code == ExitCode.PROBLEMS, stderr
    assert sorted(n["host"] for n in data["failed"]) == list(NODES) and not data["done"]
    for n in data["failed"]:
        assert missing in n["reason"] and n["exit"] not in (0, None)
        assert n["errors"][0]["image_id"] == missing
    for cache in caches.values():
        assert [p.name for p in cache.iterdir() if not p.name.startswith(".novakeeper")] == []
    assert "did not fetch" in stderr and stderr.count("\n") == 1


@pytest.mark.parametrize(("args", "code"), [
    (("not an id", "--limit", "compute"), ExitCode.USAGE),
    (("0e4c3b7a-9a51-4c8e-8f55-5bd0d8b1e0aa", "--limit", "compute"), ExitCode.PATH),
])
def test_bad_command_lines_are_one_line_errors(tmp_path: Path, args: tuple[str, ...],
                                               code: ExitCode) -> None:
    proc = _lab.fleet_cli("fetch", *args, "-i", str(tmp_path / "no-inventory.yml"))
    assert proc.returncode == code
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
