"""The Ansible role (deploy/ansible/roles/novakeeper) on a fleet of local hosts: installs
from the controller's wheels, configures, is idempotent, --check --diff changes nothing,
bad variables change nothing, upgrades, removes; ansible-lint passes on it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fleet import _lab
from fleet.conftest import HOSTS, REACHABLE, Lab, recap, snapshot
from novakeeper import settings

UNITS = ("novakeeper-cache.service", "novakeeper-cache-clean.service",
         "novakeeper-cache-clean.timer")


def test_first_run_installs_and_configures(lab: Lab,
                                           installed: subprocess.CompletedProcess[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OS_NOVAKEEPER__STATE_PATH")
    counts = recap(installed.stdout)
    assert set(counts) == set(HOSTS), installed.stdout
    for name, node in lab.nodes.items():
        assert counts[name]["changed"] > 0 and counts[name]["failed"] == 0
        version = node.run("--version")
        assert version.returncode == 0 and version.stdout.split()[-1] == "0.1.0", version
        # the file novakeeper reads is the one the variables describe
        conf = settings.load([str(node.config)])
        assert conf.instances_path == node.sandbox.instances_path
        assert conf.state_path == node.vars["novakeeper_state_path"]
        assert conf.policy.budget.max_cache_size == int(
            node.vars["novakeeper_max_cache_size"][:-1]) << 20
        assert [p.value for p in conf.pins] == [node.sandbox.pinned_image]
        assert conf.service_mode == "plan"
        # the units are the shipped ones, byte for byte; the drop-in points at this node
        for unit in UNITS:
            assert (node.root / "systemd" / unit).read_bytes() == (
                _lab.REPO / "deploy" / "systemd" / unit).read_bytes()
        dropin = (node.root / "systemd" / "novakeeper-cache.service.d" / "ansible.conf")
        text = dropin.read_text()
        assert f"ExecStart={node.bin} --config-file {node.config} cache serve " \
               f"--metrics-file {node.root}/metrics/novakeeper.prom" in text
        assert f"ReadWritePaths={node.sandbox.cache_path} " in text
        info = (node.root / "metrics" / "novakeeper-node.prom").read_text()
        assert (f'novakeeper_node_info{{cell="{node.vars["novakeeper_cell"]}",'
                'aggregate="ssd",az="az1",mode="service",version="0.1.0"} 1') in info
        # and the installed command really works on the node's cache
        status = node.run("cache", "status", "--json")
        assert status.returncode == 0, status.stderr


def test_drop_ins_pass_systemd_analyze(lab: Lab, installed: object,
                                       tmp_path: Path) -> None:
    """The shipped units with the role's drop-ins, as systemd would merge them."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    node = lab.nodes["node1"]
    unit_dir = tmp_path / "system"
    shutil.copytree(node.root / "systemd", unit_dir)
    # the shipped units name /opt/novakeeper/bin/novakeeper; the drop-ins replace it with
    # the node's venv, which exists, so verify needs no copy edited

    def verify() -> tuple[subprocess.CompletedProcess[str], list[str]]:
        proc = subprocess.run([tool, "verify", "--man=no", *(str(unit_dir / u) for u in UNITS)],
                              capture_output=True, text=True, timeout=60, check=False,
                              env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_dir}:"},
                              stdin=subprocess.DEVNULL)
        return proc, [line for line in (proc.stdout + proc.stderr).splitlines()
                      if "novakeeper" in line or str(unit_dir) in line]

    proc, complaints = verify()
    assert proc.returncode == 0 and complaints == [], proc.stdout + proc.stderr
    # the drop-ins are read: a mistake in one is reported
    dropin = unit_dir / "novakeeper-cache.service.d" / "ansible.conf"
    dropin.write_text(dropin.read_text() + "ProtectSystme=strict\n")
    _, complaints = verify()
    assert any("ansible.conf" in line and "ProtectSystme" in line for line in complaints)


def test_second_run_changes_nothing(lab: Lab, installed: object) -> None:
    before = {n: snapshot(node) for n, node in lab.nodes.items()}
    proc = _lab.playbook(lab.inventory, "novakeeper.yml", "--limit", REACHABLE)
    assert proc.returncode == 0, proc.stdout
    assert {h: c["changed"] for h, c in recap(proc.stdout).items()} == dict.fromkeys(HOSTS, 0)
    assert {n: snapshot(node) for n, node in lab.nodes.items()} == before


def test_check_diff_shows_a_change_and_makes_none(lab: Lab, installed: object) -> None:
    before = {n: snapshot(node) for n, node in lab.nodes.items()}
    proc = _lab.playbook(lab.inventory, "novakeeper.yml", "--limit", REACHABLE, "--check",
                         "--diff", "-e", "novakeeper_service_mode=clean")
    assert proc.returncode == 0, proc.stdout
    assert "-service_mode = plan" in proc.stdout and "+service_mode = clean" in proc.stdout
    assert all(c["changed"] >= 1 for c in recap(proc.stdout).values())
    assert {n: snapshot(node) for n, node in lab.nodes.items()} == before


@pytest.mark.parametrize(("extra", "expected"), [
    (["-e", "novakeeper_high_watermark=80%", "-e", "novakeeper_low_watermark=90%"],
     "A novakeeper configuration variable is wrong"),
    (["-e", "novakeeper_max_cache_size=fifty"], "A novakeeper configuration variable is wrong"),
    (["-e", "novakeeper_high_watermark=120%"], "a watermark is a percentage"),
    (["-e", "novakeeper_service_mode=remove"], "novakeeper_service_mode"),
    (["-e", '{"novakeeper_extra_options": {"max_cache_sise": "1G"}}'],
     "A novakeeper configuration variable is wrong"),
    (["-e", "novakeeper_wheel_dir=/nonexistent"], "novakeeper_wheel_dir must name a folder"),
])
def test_bad_variables_change_nothing(lab: Lab, installed: object, extra: list[str],
                                      expected: str) -> None:
    before = {n: snapshot(node) for n, node in lab.nodes.items()}
    proc = _lab.playbook(lab.inventory, "novakeeper.yml", "--limit", "node1", *extra)
    assert proc.returncode != 0
    assert expected in proc.stdout, proc.stdout
    assert recap(proc.stdout)["node1"]["changed"] == 0
    assert {n: snapshot(node) for n, node in lab.nodes.items()} == before


def test_a_config_novakeeper_rejects_is_never_put_in_place(lab: Lab,
                                                          installed: object) -> None:
    """What the role's own checks let through, novakeeper's validation (the template's
    validate) still stops: here an option value oslo.config refuses."""
    node = lab.nodes["node2"]
    before = node.config.read_bytes()
    proc = _lab.playbook(lab.inventory, "novakeeper.yml", "--limit", "node2", "-e",
                         '{"novakeeper_extra_options": {"removal_batch_size": 0}}')
    assert proc.returncode != 0
    assert "removal_batch_size" in proc.stdout, proc.stdout
    assert node.config.read_bytes() == before


def test_upgrade_to_a_new_version(lab: Lab, installed: object) -> None:
    node = lab.nodes["node1"]
    wheels = _lab.build_wheels(lab.root / "wheels-new", version="0.1.1")
    proc = _lab.playbook(lab.inventory, "novakeeper.yml", "--limit", "node1", "-e",
                         f"novakeeper_wheel_dir={wheels}")
    assert proc.returncode == 0, proc.stdout
    assert recap(proc.stdout)["node1"]["changed"] >= 1
    assert node.run("--version").stdout.split()[-1] == "0.1.1"
    assert 'version="0.1.1"' in (node.root / "metrics" / "novakeeper-node.prom").read_text()
    again = _lab.playbook(lab.inventory, "novakeeper.yml", "--limit", "node1", "-e",
                          f"novakeeper_wheel_dir={wheels}")
    assert recap(again.stdout)["node1"]["changed"] == 0, again.stdout


def test_state_absent_removes_and_keeps_the_journal(lab: Lab, installed: object) -> None:
    node = lab.nodes["node3"]
    state_db = Path(node.vars["novakeeper_state_path"])
    node.run("cache", "pin", node.sandbox.pinned_image)  # the state database exists
    assert state_db.exists()
    proc = _lab.playbook(lab.inventory, "novakeeper.yml", "--limit", "node3", "-e",
                         "novakeeper_state=absent")
    assert proc.returncode == 0, proc.stdout
    assert recap(proc.stdout)["node3"]["changed"] >= 1
    for gone in (node.bin, node.config, node.root / "wheels",
                 node.root / "metrics" / "novakeeper-node.prom",
                 *(node.root / "systemd" / u for u in UNITS),
                 node.root / "systemd" / "novakeeper-cache.service.d"):
        assert not gone.exists(), gone
    assert state_db.exists()  # the removal journal outlives the software
    assert sorted(p.name for p in Path(node.sandbox.cache_path).iterdir())  # cache untouched
    again = _lab.playbook(lab.inventory, "novakeeper.yml", "--limit", "node3", "-e",
                          "novakeeper_state=absent")
    assert recap(again.stdout)["node3"]["changed"] == 0, again.stdout


# -- ansible-lint -------------------------------------------------------------------------


def lint(folder: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("ansible-lint")
    assert binary
    return subprocess.run([binary, "--nocolor", "--offline"], cwd=folder, capture_output=True,
                          text=True, timeout=300, check=False, env=_lab.ansible_env(),
                          stdin=subprocess.DEVNULL)


def test_ansible_lint_passes_on_the_role_and_playbooks(lab: Lab) -> None:
    proc = lint(_lab.ANSIBLE_DIR)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "0 failure(s), 0 warning(s)" in out and "'production'" in out, out


def test_ansible_lint_would_catch_a_mistake(lab: Lab, tmp_path: Path) -> None:
    copy = tmp_path / "ansible"
    shutil.copytree(_lab.ANSIBLE_DIR, copy, symlinks=True)
    units = copy / "roles" / "novakeeper" / "files" / "systemd"
    units.unlink()  # a relative link to deploy/systemd, dangling in the copy
    shutil.copytree(_lab.REPO / "deploy" / "systemd", units)
    tasks = copy / "roles" / "novakeeper" / "tasks" / "present.yml"
    tasks.write_text(tasks.read_text() + "\n- name: restart by hand\n  shell: echo hi\n")
    proc = lint(copy)
    assert proc.returncode != 0, proc.stdout
    assert "no-changed-when" in proc.stdout + proc.stderr


def test_the_role_documents_every_variable() -> None:
    import yaml

    role = _lab.ANSIBLE_DIR / "roles" / "novakeeper"
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    spec = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options)
    for name, option in options.items():
        assert option["default"] == defaults[name], name
        assert option.get("description"), name
    readme = (role / "README.md").read_text()
    missing = [name for name in defaults if f"`{name}`" not in readme]
    assert not missing, f"not in the role's README.md: {missing}"
