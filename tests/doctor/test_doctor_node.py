"""Node checks on sandbox trees the tests write: paths, space against the budget, the
cache on /, owners and modes (for the real user `nobody`), stale locks, old .part files,
console ports through iptables-save / nft rules, and the locale of the shell and of a
running service process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from doctor_helpers import check, facts, node, one, statuses

from novakeeper.cache.layout import image_hash
from novakeeper.doctor import firewall
from novakeeper.doctor.model import Status

DAY = 86400


def test_a_missing_instances_path_fails(tmp_path: Path) -> None:
    conf, ipath = node(tmp_path)
    f = facts(conf)
    f.instances_path = str(tmp_path / "nowhere")
    fail = one(check("node.paths", f), Status.FAIL)
    assert fail.finding == f"instances_path {tmp_path / 'nowhere'} does not exist"
    assert "install -d -o nova -g nova" in fail.fix
    (ipath / "_base").rmdir()
    ok = one(check("node.paths", facts(conf)), Status.OK)
    assert "no cache folder" in ok.finding


def test_space_against_min_free_space_and_high_watermark(tmp_path: Path) -> None:
    conf, ipath = node(tmp_path, "[novakeeper]\nmin_free_space = 1000T\n")
    fail = one(check("node.space", facts(conf)), Status.FAIL)
    assert "under [novakeeper] min_free_space (1000.0 TiB)" in fail.finding
    st = os.statvfs(ipath)
    # the disk is shared with other jobs: what is free moves a little between two looks
    assert abs(fail.data["avail"] - st.f_bavail * st.f_frsize) < 1 << 30
    conf, _ = node(tmp_path, "[novakeeper]\nmin_free_space = 1%\n")
    assert statuses(check("node.space", facts(conf))) == [Status.OK]
    used = 100 - 100 * st.f_bavail / (st.f_bavail + st.f_blocks - st.f_bfree)
    if used > 0.5:
        conf, _ = node(tmp_path, "[novakeeper]\nhigh_watermark = 0.5%\n")
        warn = one(check("node.space", facts(conf)), Status.WARN)
        assert "above [novakeeper] high_watermark 0.5% used" in warn.finding


def test_space_without_a_budget_reports_free_bytes_and_inodes(tmp_path: Path) -> None:
    conf, ipath = node(tmp_path)
    found = check("node.space", facts(conf))
    assert found[0].data["path"] == str(ipath / "_base")  # one file system: named once
    assert len(found) == 1 and "of inodes free" in found[0].finding


def test_cache_on_the_root_file_system(tmp_path: Path) -> None:
    conf, ipath = node(tmp_path)
    warn = one(check("node.cache-on-root", facts(conf, root=str(tmp_path))), Status.WARN)
    assert warn.finding.startswith(f"{ipath / '_base'} is on the root file system")
    assert os.stat("/proc").st_dev != os.stat(tmp_path).st_dev
    assert statuses(check("node.cache-on-root", facts(conf, root="/proc"))) == [Status.OK]


def test_owners_and_modes_for_novas_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    conf, ipath = node(tmp_path)
    dirs = [ipath, ipath / "_base", ipath / "locks"]
    for d in dirs:
        os.chown(d, 0, 0)
        d.chmod(0o755)
    found = check("node.permissions", facts(conf, nova_user="nobody"))
    assert statuses(found) == [Status.FAIL] * 3
    assert [f.data["path"] for f in found] == [str(d) for d in dirs]
    assert found[0].fix == f"chown nobody:nogroup {ipath} && chmod 0755 {ipath}"
    assert "nobody cannot create files in it" in found[1].finding
    nobody = 65534
    for d in dirs:
        os.chown(d, nobody, nobody)
    assert statuses(check("node.permissions", facts(conf, nova_user="nobody"))) == [Status.OK]
    (ipath / "_base").chmod(0o777)
    warn = one(check("node.permissions", facts(conf, nova_user="nobody")), Status.WARN)
    assert "anyone on the host can write in it" in warn.finding
    assert warn.fix == f"chmod o-w {ipath / '_base'}"


def test_no_nova_user_is_skip(tmp_path: Path) -> None:
    conf, _ = node(tmp_path)
    skip = one(check("node.permissions", facts(conf, nova_user="no-such-user-xyz")),
               Status.SKIP)
    assert "no user 'no-such-user-xyz'" in skip.finding


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_stale_locks(tmp_path: Path) -> None:
    conf, ipath = node(tmp_path)
    gone, kept, young = image_hash("gone"), image_hash("kept"), image_hash("young")
    (ipath / "_base" / kept).write_bytes(b"x")
    for name in (gone, kept, young):
        (ipath / "locks" / f"nova-{name}").write_text("")
    (ipath / "locks" / "nova-storage-registry-lock").write_text("")  # not a base's lock
    for name in (gone, kept):
        _age(ipath / "locks" / f"nova-{name}", 2 * DAY)
    _age(ipath / "locks" / "nova-storage-registry-lock", 2 * DAY)
    warn = one(check("node.stale-locks", facts(conf)), Status.WARN)
    assert warn.data["paths"] == [str(ipath / "locks" / f"nova-{gone}")]
    assert warn.fix.startswith(f"rm -f -- {ipath / 'locks' / f'nova-{gone}'}")
    (ipath / "locks" / f"nova-{gone}").unlink()
    assert statuses(check("node.stale-locks", facts(conf))) == [Status.OK]


def test_old_part_files(tmp_path: Path) -> None:
    conf, ipath = node(tmp_path)
    old = ipath / "_base" / (image_hash("dead") + ".part")
    fresh = ipath / "_base" / (image_hash("live") + ".part")
    old.write_bytes(b"\1" * 8192)
    fresh.write_bytes(b"\1" * 8192)
    _age(old, DAY + 60)
    warn = one(check("node.partial-files", facts(conf)), Status.WARN)
    assert warn.data["paths"] == [str(old)] and warn.fix.startswith("novakeeper cache clean")
    old.unlink()
    assert statuses(check("node.partial-files", facts(conf))) == [Status.OK]


# -- console ports through the firewall -----------------------------------------------------

RHEL_DEFAULT = """\
# Generated by iptables-save v1.8.7 on Fri Nov 20 10:00:00 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p icmp -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT
-A INPUT -j REJECT --reject-with icmp-host-prohibited
COMMIT
"""
OPENED = RHEL_DEFAULT.replace(
    "-A INPUT -j REJECT", "-A INPUT -p tcp -m multiport --dports 5900:6923 -j ACCEPT\n"
                          "-A INPUT -j REJECT")
CHAINED = """\
*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -p tcp --dport 5900 -j DNAT --to-destination 10.0.0.9
COMMIT
*filter
:INPUT DROP [0:0]
:nova-compute-inp - [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -j nova-compute-inp
-A nova-compute-inp -s 10.0.0.0/24 -p tcp -m tcp --dport 5900:5999 -j ACCEPT
-A nova-compute-inp -j RETURN
COMMIT
"""


def nft(policy: str, *rules: list[dict[str, object]]) -> str:
    """`nft -j list ruleset` output for an inet filter table with an input chain."""
    items: list[dict[str, object]] = [
        {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5",
                      "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "filter", "handle": 1}},
        {"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1,
                   "type": "filter", "hook": "input", "prio": 0, "policy": policy}},
    ]
    for handle, expr in enumerate(rules, start=4):
        items.append({"rule": {"family": "inet", "table": "filter", "chain": "input",
                               "handle": handle, "expr": expr}})
    return json.dumps({"nftables": items})


CT_ESTABLISHED = [{"match": {"op": "in", "left": {"ct": {"key": "state"}},
                             "right": ["established", "related"]}}, {"accept": None}]
SSH_ONLY = [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                       "right": 22}}, {"accept": None}]
CONSOLES = [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                       "right": {"range": [5900, 6923]}}}, {"counter": {"packets": 0,
                                                                       "bytes": 0}},
            {"accept": None}]


@pytest.mark.parametrize(("rules", "status", "words"), [
    (RHEL_DEFAULT, Status.FAIL, "reject by `-A INPUT -j REJECT --reject-with"),
    (OPENED, Status.OK, "accepted by `-A INPUT -p tcp -m multiport --dports 5900:6923"),
    (CHAINED, Status.OK, "accepted by `-A nova-compute-inp -s 10.0.0.0/24"),
    (CHAINED.replace("5900:5999", "5900:5949"), Status.FAIL,
     "50 of ports 5900-5999, from 5950 (chain INPUT policy DROP)"),
    ("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n", Status.OK, "no input filter rules"),
    (nft("drop", CT_ESTABLISHED, SSH_ONLY), Status.FAIL, "chain inet filter input policy DROP"),
    (nft("drop", CT_ESTABLISHED, SSH_ONLY, CONSOLES), Status.OK,
     "accepted by `inet filter input handle 6`"),
])
def test_console_ports_through_the_firewall(tmp_path: Path, rules: str, status: Status,
                                            words: str) -> None:
    conf, _ = node(tmp_path)
    dump = tmp_path / "rules"
    dump.write_text(rules)
    found = check("node.console-ports", facts(conf, firewall_commands=[("cat", str(dump))]))
    assert statuses(found) == [status]
    assert words in found[0].finding
    if status is Status.FAIL:
        assert found[0].fix.startswith("nft insert rule" if rules.startswith("{")
                                       else "iptables -I INPUT -p tcp -m multiport --dports "
                                            "5900:5999 -j ACCEPT")


def test_the_display_ports_come_from_qemu_conf(tmp_path: Path) -> None:
    conf, _ = node(tmp_path)
    qemu = tmp_path / "qemu.conf"
    qemu.write_text("# remote_display_port_min = 5900\nremote_display_port_min = 6100\n"
                    "remote_display_port_max = 6149\n")
    dump = tmp_path / "rules"
    dump.write_text(OPENED)  # 5900:6923 accepted
    found = check("node.console-ports", facts(conf, qemu_conf=str(qemu),
                                              firewall_commands=[("cat", str(dump))]))
    assert statuses(found) == [Status.OK] and "tcp 6100-6149" in found[0].finding
    dump.write_text(OPENED.replace("5900:6923", "5900:6120"))
    fail = one(check("node.console-ports", facts(conf, qemu_conf=str(qemu), firewall_commands=[
        ("cat", str(dump))])), Status.FAIL)
    assert "29 of ports 6100-6149, from 6121" in fail.finding
    assert "--dports 6100:6149" in fail.fix


def test_console_ports_skip_when_rules_cannot_be_read(tmp_path: Path) -> None:
    conf, _ = node(tmp_path)
    skip = one(check("node.console-ports", facts(conf, firewall_commands=[
        ("/nonexistent/iptables-save",), ("false",)])), Status.SKIP)
    assert skip.finding == ("firewall rules not readable (no /nonexistent/iptables-save; "
                            "false: exit 1)")


def test_no_console_enabled_needs_no_firewall(tmp_path: Path) -> None:
    conf, _ = node(tmp_path, "[vnc]\nenabled = false\n")
    ok = one(check("node.console-ports", facts(conf, firewall_commands=[])), Status.OK)
    assert ok.finding == "no VNC or SPICE console enabled in nova.conf"


def test_iptables_save_rule_parsing() -> None:
    rules = firewall.parse_iptables_save(CHAINED)
    assert rules.entry == ["INPUT"] and rules.policies["INPUT"] == "DROP"
    assert not rules.verdict(22).open and rules.verdict(5999).open
    assert firewall.parse_iptables_save(RHEL_DEFAULT).verdict(22).open


# -- locale ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("env", "status", "words"), [
    ({"LC_ALL": "C", "LANG": "C.UTF-8"}, Status.WARN, "LC_ALL=C: ASCII only"),
    ({"LANG": "en_US.ISO-8859-1"}, Status.WARN, "LANG=en_US.ISO-8859-1: not a UTF-8 locale"),
    ({}, Status.WARN, "no LC_ALL, LC_CTYPE or LANG"),
    ({"LANG": "C.UTF-8"}, Status.OK, "use UTF-8"),
    ({"LC_CTYPE": "en_US.utf8"}, Status.OK, "use UTF-8"),
])
def test_the_shells_locale(tmp_path: Path, env: dict[str, str], status: Status,
                           words: str) -> None:
    conf, _ = node(tmp_path)
    found = check("node.locale", facts(conf, environ=env))
    own = [f for f in found if f.data.get("who") in ("doctor", None)]
    assert [f.status for f in own] == [status] and words in own[0].finding


@pytest.fixture
def service_with_c_locale() -> Iterator[int]:
    """A process named nova-compute (argv[0]) running with LC_ALL=C."""
    proc = subprocess.Popen(["nova-compute", "600"], executable=shutil.which("sleep"),
                            env={"LC_ALL": "C", "PATH": os.environ["PATH"]})
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_service_running_with_the_c_locale_warns(tmp_path: Path,
                                                   service_with_c_locale: int) -> None:
    conf, _ = node(tmp_path)
    found = check("node.locale", facts(conf, environ={"LANG": "C.UTF-8"}))
    warn = next(f for f in found if f.data.get("pid") == service_with_c_locale)
    assert warn.status is Status.WARN
    assert warn.finding.startswith(f"nova-compute (pid {service_with_c_locale}): LC_ALL=C")
    assert "Environment=LANG=C.UTF-8" in warn.fix


def test_a_state_folder_novakeeper_cannot_write_fails(tmp_path: Path) -> None:
    from _cli_tree import permission_prefix, run_cli

    prefix = permission_prefix()
    if prefix is None:
        pytest.skip("cannot drop root's permission override here")
    conf, _ = node(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    env = {**os.environ, "OS_NOVAKEEPER__STATE_PATH": str(locked / "nk" / "state.db")}
    proc = run_cli("doctor", "--config-file", str(conf), "--only", "node.permissions",
                   "--nova-user", "no-such-user-xyz", "--json", env=env, prefix=prefix)
    found = json.loads(proc.stdout)["findings"]
    assert [f["status"] for f in found] == ["FAIL", "SKIP"], found
    assert found[0]["finding"].startswith(f"novakeeper's state folder {locked / 'nk'}: ")
    assert f"cannot write in {locked}" in found[0]["finding"]
    assert proc.returncode == 21
