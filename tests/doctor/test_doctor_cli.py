"""The doctor framework: checks as data, selection, --list, --json, exit codes, and a
check that cannot run (or breaks) turning into SKIP instead of a crash."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from doctor_helpers import facts, node

from _cli_tree import run_cli
from novakeeper.doctor import runner
from novakeeper.doctor.facts import Unavailable
from novakeeper.doctor.model import Check, Finding, Status, exit_code, worst
from novakeeper.errors import ExitCode, NovakeeperError

REPO = Path(__file__).resolve().parents[2]


def test_every_check_has_a_stable_id_a_title_and_words_for_readme() -> None:
    ids = [c.id for c in runner.CHECKS]
    assert len(ids) == len(set(ids))
    for c in runner.CHECKS:
        assert re.fullmatch(r"(conf|node|cloud)\.[a-z-]+", c.id), c.id
        assert c.title and c.looks_at and c.suggests


def test_the_option_names_are_package_data() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "doctor/*.json" in pyproject["tool"]["setuptools"]["package-data"]["novakeeper"]


def test_readme_documents_every_check() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### `novakeeper doctor`"):]
    for c in runner.CHECKS:
        assert f"`{c.id}`" in section, c.id


@pytest.mark.parametrize(("only", "skip", "ids"), [
    (["conf.values"], [], ["conf.values"]),
    (["conf.values,node.locale"], [], ["conf.values", "node.locale"]),
    (["cloud"], ["cloud.probe"], ["cloud.duplicate-services", "cloud.empty-services",
                                  "cloud.orphan-endpoints", "cloud.interfaces"]),
    (["conf.cache-*"], [], ["conf.cache-ages", "conf.cache-manager"]),
    ([], ["conf", "node", "cloud.*"], []),
])
def test_selection(only: list[str], skip: list[str], ids: list[str]) -> None:
    assert [c.id for c in runner.select(only, skip)] == ids


def test_an_unknown_check_is_a_usage_error_with_the_nearest_id() -> None:
    with pytest.raises(NovakeeperError) as err:
        runner.select(["conf.valeus"])
    assert err.value.code == ExitCode.USAGE
    assert err.value.message == "no check 'conf.valeus' (did you mean conf.values?)"
    proc = run_cli("doctor", "--only", "conf.valeus")
    assert proc.returncode == 2
    assert proc.stderr == ("novakeeper: error: no check 'conf.valeus' (did you mean "
                           "conf.values?)\n")


def test_worst_status_picks_the_exit_code() -> None:
    def f(status: Status) -> Finding:
        return Finding("x.y", status, "")

    assert exit_code([]) == 0 and worst([]) is Status.OK
    assert exit_code([f(Status.OK), f(Status.SKIP)]) == 0
    assert exit_code([f(Status.OK), f(Status.WARN), f(Status.SKIP)]) == 20
    assert exit_code([f(Status.WARN), f(Status.FAIL)]) == 21


def test_a_check_that_breaks_or_cannot_run_is_skip() -> None:
    def broken(_: object) -> list[Finding]:
        raise KeyError("oops")

    def blocked(_: object) -> list[Finding]:
        raise Unavailable("no permission to read /x")

    def silent(_: object) -> list[Finding]:
        return []

    f = facts()
    for fn, words, status in ((broken, "could not run: KeyError: 'oops'", Status.SKIP),
                              (blocked, "no permission to read /x", Status.SKIP),
                              (silent, "nothing to report", Status.OK)):
        (found,) = runner.run([Check("node.x", "t", "l", "s", fn)], f)
        assert (found.status, found.finding) == (status, words)


def test_list_shows_each_check_on_one_line() -> None:
    proc = run_cli("doctor", "--list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == [c.id for c in runner.CHECKS]
    data = json.loads(run_cli("doctor", "--list", "--json", "--only", "node").stdout)
    assert [c["id"] for c in data["checks"]] == [c.id for c in runner.select(["node"])]


def test_a_whole_run_on_a_sandbox_node(tmp_path: Path) -> None:
    conf, _ = node(tmp_path, "[image_cache]\nmanager_interval = 2400\n")
    proc = run_cli("doctor", "--config-file", str(conf), "--json", "--skip",
                   "node.console-ports,node.locale,node.cache-on-root,node.permissions")
    data = json.loads(proc.stdout)
    statuses = {f["check"]: f["status"] for f in data["findings"]}
    assert proc.returncode == data["exit_code"] == 0, proc.stdout
    assert statuses["conf.values"] == "OK" and statuses["node.space"] == "OK"
    assert statuses["cloud.duplicate-services"] == "SKIP"  # no credentials here
    assert set(data["checks"]) == set(statuses)
    for f in data["findings"]:
        assert set(f) == {"check", "status", "finding", "fix", "data"}
    text = run_cli("doctor", "--config-file", str(conf), "--skip",
                   "node.console-ports,node.locale,node.cache-on-root,node.permissions")
    assert text.stdout.splitlines()[-1].startswith("doctor: 16 checks, ")
    assert text.stdout.splitlines()[-1].endswith("; exit 0")


def test_the_global_instances_path_option_is_honoured(tmp_path: Path) -> None:
    conf, _ = node(tmp_path)
    proc = run_cli("doctor", "--config-file", str(conf), "--instances-path",
                   str(tmp_path / "elsewhere"), "--only", "node.paths")
    assert proc.returncode == 21
    assert f"instances_path {tmp_path / 'elsewhere'} does not exist" in proc.stdout
