"""Playbook runs through ansible-runner: Ansible's inventory, connections, forks, become
and serial do the work; this module only starts a playbook and sorts its events by host.

The playbooks are deploy/ansible/playbooks/ (shipped in the package as
novakeeper/fleet/playbooks). Task names starting "Fleet: " are the ones read back.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from novakeeper.errors import ExitCode, NovakeeperError

PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"
REPORT_PLAYBOOK = "fleet-report.yml"
CLEAN_PLAYBOOK = "fleet-clean.yml"
FETCH_PLAYBOOK = "fleet-fetch.yml"
TASK_PREFIX = "Fleet: "


@dataclass
class HostRun:
    """What one host answered: the "Fleet: ..." tasks' results by task name, or why not."""

    host: str
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    unreachable: str | None = None
    failed_task: str | None = None
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.unreachable is None and self.failure is None


@dataclass
class PlaybookRun:
    playbook: str
    status: str
    rc: int
    seconds: float
    hosts: dict[str, HostRun]
    no_hosts_matched: bool = False
    errors: tuple[str, ...] = ()
    """Ansible's own [ERROR] lines, and its warning when the inventory did not parse."""


def _reason(res: dict[str, Any]) -> str:
    """Ansible's reason for a failed or unreachable host, on one line."""
    parts = []
    msg = str(res.get("msg") or "").strip()
    if msg == "Error executing command." and isinstance(res.get("rc"), int):
        # the command module could not start the program: rc is the errno
        cmd = res.get("cmd")
        program = cmd[0] if isinstance(cmd, list) and cmd else str(cmd or "").split(" ")[0]
        return f"cannot run {program}: {os.strerror(res['rc'])}"
    stderr = str(res.get("stderr") or "").strip()
    if stderr:
        parts.append(stderr.splitlines()[-1])
    if msg and msg != "non-zero return code":
        parts.insert(0, msg.splitlines()[0] if len(msg) < 300 else msg[:300])
    if "rc" in res and res["rc"] not in (0, None):
        parts.append(f"exit {res['rc']}")
    return "; ".join(parts) or "failed (Ansible gave no reason)"


def _ansible_config() -> dict[str, str]:
    """The caller's ansible.cfg: ansible-runner runs ansible-playbook in its own folder,
    where the one in the operator's current folder would not be found."""
    env: dict[str, str] = {}
    if "ANSIBLE_CONFIG" not in os.environ and os.path.isfile("ansible.cfg"):
        env["ANSIBLE_CONFIG"] = os.path.abspath("ansible.cfg")
    return env


def run_playbook(name: str, inventory: str, limit: str | None = None, forks: int = 5,
                 extravars: dict[str, Any] | None = None) -> PlaybookRun:
    """Run one of the fleet playbooks against `inventory` and gather each host's answers."""
    import ansible_runner

    if shutil.which("ansible-playbook") is None:
        raise NovakeeperError(ExitCode.PATH, "ansible-playbook is not installed "
                              "(pip install ansible-core ansible-runner)")
    if not os.path.exists(inventory):
        raise NovakeeperError(ExitCode.PATH, f"{inventory}: inventory not found")
    playbook = PLAYBOOKS / name
    if not playbook.is_file():
        raise NovakeeperError(ExitCode.INTERNAL, f"{playbook}: playbook missing from the "
                              "installation")
    hosts: dict[str, HostRun] = {}
    no_hosts = False
    started = time.perf_counter()
    private = tempfile.mkdtemp(prefix="novakeeper-fleet-")
    try:
        result = ansible_runner.run(
            private_data_dir=private, playbook=str(playbook),
            inventory=os.path.abspath(inventory), limit=limit, forks=forks,
            extravars={"novakeeper_hosts": "all", **(extravars or {})},
            envvars={"ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0",
                     **_ansible_config()},
            quiet=True, json_mode=False, suppress_env_files=True,
        )
        for event in result.events:
            kind = event.get("event", "")
            data = event.get("event_data", {})
            if kind == "playbook_on_no_hosts_matched":
                no_hosts = True
                continue
            host = data.get("host")
            if not host or not kind.startswith("runner_on_"):
                continue
            run = hosts.setdefault(host, HostRun(host))
            res = data.get("res") or {}
            task = str(data.get("task", ""))
            if kind == "runner_on_unreachable":
                run.unreachable = _reason(res)
            elif kind == "runner_on_failed" and not data.get("ignore_errors"):
                run.failed_task = task.removeprefix(TASK_PREFIX)
                run.failure = _reason(res)
                if task.startswith(TASK_PREFIX):
                    run.results[task.removeprefix(TASK_PREFIX)] = res
            elif kind == "runner_on_ok" and task.startswith(TASK_PREFIX):
                run.results[task.removeprefix(TASK_PREFIX)] = res
        status, rc = str(result.status), int(result.rc or 0)
        errors = tuple(_errors(result.stdout.read() if result.stdout else ""))
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return PlaybookRun(name, status, rc, time.perf_counter() - started, hosts, no_hosts,
                       errors)


def _errors(output: str) -> list[str]:
    lines = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith(("[ERROR]", "ERROR!")) or (
                line.startswith("[WARNING]") and "as an inventory source" in line):
            lines.append(line.split("]:", 1)[-1].removeprefix("ERROR!").strip())
    return lines


def check_reached(run: PlaybookRun, inventory: str, limit: str | None) -> None:
    """A run that reached no host at all is the command's failure, in one line: an
    inventory Ansible could not parse, a --limit matching nothing, or Ansible's error."""
    if run.hosts:
        return
    unparsed = [e for e in run.errors if "as an inventory source" in e]
    if unparsed:
        raise NovakeeperError(ExitCode.CONFIG, f"{inventory}: Ansible cannot parse this "
                              "inventory (ansible-inventory -i FILE --list says why)")
    if run.no_hosts_matched or any("no hosts to target" in e for e in run.errors):
        where = f" matching --limit {limit!r}" if limit else ""
        raise NovakeeperError(ExitCode.USAGE, f"{inventory}: no hosts{where}")
    detail = run.errors[-1] if run.errors else f"exit {run.rc}"
    raise NovakeeperError(ExitCode.CONFIG, f"ansible-playbook reached no host: {detail}")
