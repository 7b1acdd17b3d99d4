"""The systemd units in deploy/systemd/.

`systemd-analyze verify` (Debian's systemd) must pass on them with no warning at all: it
exits 0 even when it ignores a misspelt directive, so its output is what is checked. The
units are verified as shipped except for the ExecStart binary, /opt/novakeeper/bin/novakeeper
(README's venv), which verify wants to exist: the copies point at the entry point installed
here. Then the sandbox the issue asks for is checked directive by directive, the paths
against the code's own defaults, and every ExecStart against the real command line parser.

Without systemd-analyze the verify tests skip, except under CI=true where they fail: CI
must install it (apt-get install systemd).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from novakeeper import settings as settings_mod
from novakeeper.cache.locks import nova_lock_dir
from novakeeper.errors import ExitCode
from novakeeper.state.db import DEFAULT_PATH as DEFAULT_STATE_PATH

REPO = Path(__file__).resolve().parents[2]
UNIT_DIR = REPO / "deploy" / "systemd"
SERVICE = "novakeeper-cache.service"
CLEAN = "novakeeper-cache-clean.service"
TIMER = "novakeeper-cache-clean.timer"
UNITS = (SERVICE, CLEAN, TIMER)
SERVICES = (SERVICE, CLEAN)
SHIPPED_BINARY = "/opt/novakeeper/bin/novakeeper"
TEXTFILE = "/var/lib/prometheus/node-exporter/novakeeper.prom"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """systemd's unit syntax, as far as these files use it: sections, `#`/`;` comments,
    backslash continuations, repeated keys kept in order (an empty value resets)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if pending and line[:1] in ("#", ";"):
            continue  # a comment inside a continued line is skipped, as systemd does
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"directive outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line!r}"
        values = section.setdefault(key.strip(), [])
        if value.strip():
            values.append(" ".join(value.split()))
        else:
            values.clear()
    return unit


def load(name: str) -> Unit:
    return parse_unit((UNIT_DIR / name).read_text())


def one(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= should be set once, is {values}"
    return values[0]


def words(unit: Unit, section: str, key: str) -> list[str]:
    return [w for v in unit.get(section, {}).get(key, []) for w in v.split()]


def yes(value: str) -> bool:
    return value.lower() in ("yes", "true", "on", "1")


def seconds(value: str) -> float:
    """A systemd time span such as 15min, 30s, 1h 30min."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600,
             "hr": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts and "".join(n + u for n, u in parts) == value.replace(" ", ""), value
    return sum(float(n) * units[u or "s"] for n, u in parts)


def entry_point() -> str | None:
    """The novakeeper console script of the interpreter running the tests."""
    beside = Path(sys.executable).parent / "novakeeper"
    if beside.exists():
        return str(beside)
    return shutil.which("novakeeper")


def exec_argv(unit: Unit, key: str = "ExecStart") -> list[str]:
    argv = shlex.split(one(unit, "Service", key))
    return argv


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (Debian: apt-get install systemd)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run this test")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def testable_units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Copies of the units whose ExecStart binary exists on this machine."""
    script = entry_point()
    if script is None:
        pytest.skip("the novakeeper console script is not installed (pip install -e .)")
    folder = tmp_path_factory.mktemp("units")
    for name in UNITS:
        text = (UNIT_DIR / name).read_text()
        (folder / name).write_text(text.replace(SHIPPED_BINARY, script))
    return folder


def verify(*paths: Path) -> subprocess.CompletedProcess[str]:
    tool = need("systemd-analyze")
    return subprocess.run([tool, "verify", "--man=no", *map(str, paths)],
                          capture_output=True, text=True, timeout=60, check=False,
                          stdin=subprocess.DEVNULL)


def unit_complaints(proc: subprocess.CompletedProcess[str], folder: Path) -> list[str]:
    """Lines of verify's output about our units (it may also mention other units of the
    host, which are not ours to judge)."""
    names = (*UNITS, str(folder))
    return [line for line in (proc.stdout + proc.stderr).splitlines()
            if any(n in line for n in names)]


# -- systemd-analyze ------------------------------------------------------------------------


def test_verify_passes_with_no_warning(testable_units: Path) -> None:
    proc = verify(*(testable_units / n for n in UNITS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert unit_complaints(proc, testable_units) == [], proc.stdout + proc.stderr


def test_only_the_binary_differs_from_the_shipped_units(testable_units: Path) -> None:
    for name in UNITS:
        shipped = (UNIT_DIR / name).read_text()
        tested = (testable_units / name).read_text()
        assert tested == shipped.replace(SHIPPED_BINARY, str(entry_point()))
    assert SHIPPED_BINARY in (UNIT_DIR / SERVICE).read_text()
    assert SHIPPED_BINARY in (UNIT_DIR / CLEAN).read_text()


@pytest.mark.parametrize(("mistake", "expected"), [
    ("ProtectSystme=strict\n", "Unknown key"),
    ("WatchdogSec=fifteen\n", "Failed to parse"),
    ("RestrictAddressFamilies=AF_BOGUS\n", "AF_BOGUS"),
])
def test_verify_would_catch_a_mistake(testable_units: Path, tmp_path: Path, mistake: str,
                                      expected: str) -> None:
    """verify exits 0 on these, so the no-warning check above is what catches them."""
    text = (testable_units / SERVICE).read_text()
    broken = tmp_path / SERVICE
    broken.write_text(text.replace("[Service]\n", "[Service]\n" + mistake, 1))
    proc = verify(broken)
    complaints = unit_complaints(proc, tmp_path)
    assert any(expected in line for line in complaints), proc.stdout + proc.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_security_exposure_stays_low(testable_units: Path, name: str) -> None:
    """systemd's own estimate of the sandbox (0 = locked down, 10 = none): "OK" is below
    3. Ours is 2.0; the threshold is in tenths."""
    tool = need("systemd-analyze")
    proc = subprocess.run([tool, "security", "--offline=yes", "--threshold=25",
                           str(testable_units / name)],
                          capture_output=True, text=True, timeout=60, check=False,
                          stdin=subprocess.DEVNULL)
    overall = re.search(r"Overall exposure level for \S+: ([\d.]+)", proc.stdout)
    assert overall, proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exposure {overall.group(1)} is over 2.5:\n{proc.stdout}"


# -- the sandbox ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVICES)
def test_sandbox_directives(name: str) -> None:
    unit = load(name)
    for key, value in {
        "User": "nova", "Group": "nova", "ProtectSystem": "strict",
        "StateDirectory": "novakeeper",
    }.items():
        assert one(unit, "Service", key) == value, key
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                "ProtectControlGroups", "ProtectClock", "ProtectHostname",
                "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID",
                "LockPersonality", "MemoryDenyWriteExecute"):
        assert yes(one(unit, "Service", key)), key
    assert sorted(words(unit, "Service", "RestrictAddressFamilies")) == [
        "AF_INET", "AF_INET6", "AF_UNIX"]
    filters = unit["Service"]["SystemCallFilter"]
    assert "@system-service" in filters
    denied = {w for f in filters if f.startswith("~") for w in f[1:].split()}
    # what CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH could be turned into
    assert {"@debug", "@privileged", "process_vm_readv", "process_vm_writev"} <= denied
    assert one(unit, "Service", "SystemCallArchitectures") == "native"


@pytest.mark.parametrize("name", SERVICES)
def test_proc_stays_visible(name: str) -> None:
    """hidepid-style hardening would hide qemu (another user's process) from the
    open-files usage source without any error: never."""
    service = load(name)["Service"]
    assert service.get("ProtectProc", ["default"]) == ["default"]
    assert "ProcSubset" not in service or service["ProcSubset"] == ["all"]
    assert "PrivatePIDs" not in service and "PrivateUsers" not in service
    caps = set(words(load(name), "Service", "CapabilityBoundingSet"))
    ambient = set(words(load(name), "Service", "AmbientCapabilities"))
    assert caps <= {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}
    assert ambient <= caps


@pytest.mark.parametrize("name", SERVICES)
def test_writable_paths_are_the_code_defaults(name: str) -> None:
    """ReadWritePaths= is the cache and nova's lock folder of the default configuration,
    never the instances folder or anything above it; the state database lives in the
    StateDirectory."""
    defaults = settings_mod.load([])
    unit = load(name)
    writable = [p.lstrip("-") for p in words(unit, "Service", "ReadWritePaths")]
    required = [p for p in words(unit, "Service", "ReadWritePaths") if not p.startswith("-")]
    assert defaults.cache_path in required
    assert nova_lock_dir(defaults.instances_path) in required
    for path in writable:
        assert os.path.commonpath([path, defaults.instances_path]) != path, (
            f"{path} makes the instances folder writable")
    state_dir = "/var/lib/" + one(unit, "Service", "StateDirectory")
    # (the tests point OS_NOVAKEEPER__STATE_PATH elsewhere: the shipped default is this)
    assert os.path.dirname(DEFAULT_STATE_PATH) == state_dir
    assert one(unit, "Unit", "RequiresMountsFor") == defaults.instances_path


def test_service_semantics() -> None:
    unit = load(SERVICE)
    service = unit["Service"]
    assert one(unit, "Service", "Type") == "notify"
    assert seconds(one(unit, "Service", "WatchdogSec")) >= 60
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert Path("/bin/kill").exists()
    prevent = {int(c) for c in words(unit, "Service", "RestartPreventExitStatus")}
    assert prevent == {ExitCode.USAGE, ExitCode.CONFIG}
    argv = exec_argv(unit)
    assert argv[:3] == [SHIPPED_BINARY, "cache", "serve"]
    metrics_file = argv[argv.index("--metrics-file") + 1]
    assert metrics_file == TEXTFILE
    assert "-" + os.path.dirname(TEXTFILE) in words(unit, "Service", "ReadWritePaths")
    # the folders ReadWritePaths= needs are made (as nova) before the sandbox is set up
    pre = " ".join(service["ExecStartPre"])
    defaults = settings_mod.load([])
    assert defaults.cache_path in pre and nova_lock_dir(defaults.instances_path) in pre
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_clean_service_and_timer() -> None:
    unit = load(CLEAN)
    assert one(unit, "Service", "Type") == "oneshot"
    assert exec_argv(unit) == [SHIPPED_BINARY, "cache", "clean", "--yes"]
    success = {int(c) for c in words(unit, "Service", "SuccessExitStatus")}
    assert success == {ExitCode.PROBLEMS, ExitCode.SHORTFALL, ExitCode.BUSY}
    assert "WatchdogSec" not in unit["Service"] and "Restart" not in unit["Service"]
    # a node without a cache yet skips the run instead of failing it every hour
    conditions = unit["Unit"]["ConditionPathIsDirectory"]
    assert settings_mod.load([]).cache_path in conditions
    timer = load(TIMER)
    assert one(timer, "Timer", "OnCalendar") == "hourly"
    assert seconds(one(timer, "Timer", "RandomizedDelaySec")) >= 5 * 60
    assert yes(one(timer, "Timer", "Persistent"))
    assert "Unit" not in timer["Timer"]  # so it starts novakeeper-cache-clean.service
    assert one(timer, "Install", "WantedBy") == "timers.target"


def test_service_and_timer_say_use_one_of_them() -> None:
    for name in UNITS:
        flat = " ".join((UNIT_DIR / name).read_text().replace("#", " ").split())
        assert re.search(r"EITHER .* OR .* not both", flat), name
        assert "exit 11" in flat, name  # why overlap is harmless: the run lock


# -- ExecStart against the real command line --------------------------------------------------


def run_help(script: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([script, *command, "--help"], capture_output=True, text=True,
                          timeout=60, check=False, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("name", SERVICES)
def test_exec_start_is_a_real_command_line(name: str) -> None:
    script = entry_point()
    if script is None:
        pytest.skip("the novakeeper console script is not installed (pip install -e .)")
    argv = exec_argv(load(name))
    command = argv[1:3]
    options = [a for a in argv[3:] if a.startswith("-")]
    proc = run_help(script, *command)
    if proc.returncode != 0 and "No such command" in proc.stderr and command[-1] == "serve":
        pytest.skip("`novakeeper cache serve` does not exist yet (being written): "
                    f"{proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    for option in options:
        assert re.search(rf"(^|[\s,]){re.escape(option)}\b", proc.stdout, re.M), (
            f"{' '.join(command)} has no {option} option:\n{proc.stdout}")
