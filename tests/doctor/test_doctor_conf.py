"""nova.conf checks on small config files the tests write: the typo case, values against
type and choices, deprecated and unknown names, the image cache settings together, and
novakeeper's budget against what the cache really holds."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from doctor_helpers import check, facts, node, one, statuses

from _cli_tree import permission_prefix, run_cli
from conftest import make_qcow2, make_raw, side_venv_python
from novakeeper.cache.layout import image_hash
from novakeeper.doctor import options
from novakeeper.doctor.model import Status

REPO = Path(__file__).resolve().parents[2]


def test_the_typo_keyston_fails_suggesting_keystone(tmp_path: Path) -> None:
    conf, _ = node(tmp_path, "auth_strategy = keyston\n")
    found = check("conf.values", facts(conf))
    fail = one(found, Status.FAIL)
    assert fail.finding.startswith(f"{conf}: [DEFAULT] auth_strategy = keyston: not one of "
                                   "keystone, noauth2 (did you mean 'keystone'?)")
    # the releases that read it, checked in nova's history: removed by d238306aa6 (32.0.0)
    assert "up to 31.x" in fail.finding and "32.0.0" in fail.finding
    assert fail.fix == f"in {conf}: [DEFAULT] auth_strategy = keystone"
    assert fail.data["suggested"] == "keystone"


def test_the_typo_in_the_api_group_too(tmp_path: Path) -> None:
    conf, _ = node(tmp_path, "[api]\nauth_strategy = Keystone2\n")
    fail = one(check("conf.values", facts(conf)), Status.FAIL)
    assert "[api] auth_strategy = Keystone2" in fail.finding
    assert fail.fix.endswith("[api] auth_strategy = keystone")


def test_noauth2_warns(tmp_path: Path) -> None:
    conf, _ = node(tmp_path, "[api]\nauth_strategy = noauth2\n")
    warn = one(check("conf.values", facts(conf)), Status.WARN)
    assert "no credential is checked" in warn.finding
    assert warn.fix == "[api] auth_strategy = keystone"


@pytest.mark.parametrize(("lines", "where", "words", "fix"), [
    ("[image_cache]\nmanager_interval = often\n", "[image_cache] manager_interval = often",
     "invalid literal for int()", "[image_cache] manager_interval = 2400"),
    ("[image_cache]\nmanager_interval = -5\n", "[image_cache] manager_interval = -5",
     "greater than or equal to -1", "[image_cache] manager_interval = 2400"),
    ("force_raw_images = maybe\n", "[DEFAULT] force_raw_images = maybe",
     "Unexpected boolean value", "[DEFAULT] force_raw_images = true"),
    ("disk_allocation_ratio = -1.5\n", "[DEFAULT] disk_allocation_ratio = -1.5",
     "greater than or equal to 0", "[DEFAULT] disk_allocation_ratio = ..."),
    ("reserved_host_disk_mb = 10G\n", "[DEFAULT] reserved_host_disk_mb = 10G",
     "invalid literal for int()", "[DEFAULT] reserved_host_disk_mb = 0"),
    ("[libvirt]\nimages_type = qcow3\n", "[libvirt] images_type = qcow3",
     "(did you mean 'qcow2'?)", "[libvirt] images_type = qcow2"),
    ("[libvirt]\nvirt_type = kvmm\n", "[libvirt] virt_type = kvmm",
     "(did you mean 'kvm'?)", "[libvirt] virt_type = kvm"),
    ("[novakeeper]\nservice_mode = cleen\n", "[novakeeper] service_mode = cleen",
     "(did you mean 'clean'?)", "[novakeeper] service_mode = clean"),
    ("[DEFAULT]\nimage_cache_manager_interval = 1h\n",
     "[DEFAULT] image_cache_manager_interval = 1h", "invalid literal for int()",
     "[DEFAULT] image_cache_manager_interval = 2400"),
])
def test_a_bad_value_fails_with_the_line_to_write(tmp_path: Path, lines: str, where: str,
                                                  words: str, fix: str) -> None:
    conf, _ = node(tmp_path, lines)
    fail = one(check("conf.values", facts(conf)), Status.FAIL)
    assert fail.finding.startswith(f"{conf}: {where}: ") and words in fail.finding
    assert fail.fix == f"in {conf}: {fix}"


def test_a_novakeeper_value_only_settings_rejects_is_reported(tmp_path: Path) -> None:
    conf, _ = node(tmp_path, "[novakeeper]\nmax_cache_size = lots\n")
    fail = one(check("conf.values", facts(conf)), Status.FAIL)
    assert "[novakeeper] max_cache_size: invalid value" in fail.finding


def test_a_sound_configuration_is_ok_throughout(tmp_path: Path) -> None:
    conf, _ = node(tmp_path, "[api]\nauth_strategy = keystone\n[image_cache]\n"
                             "manager_interval = 2400\n[libvirt]\nimages_type = qcow2\n")
    f = facts(conf)
    for cid in ("conf.files", "conf.values", "conf.deprecated", "conf.unknown",
                "conf.cache-ages", "conf.cache-manager", "conf.budget"):
        assert statuses(check(cid, f)) == [Status.OK], cid


def test_deprecated_names_warn_with_the_new_group_and_option(tmp_path: Path) -> None:
    conf, _ = node(tmp_path, "image_cache_manager_interval = 3600\nvnc_enabled = false\n"
                             "[libvirt]\nremove_unused_resized_minimum_age_seconds = 7200\n")
    found = check("conf.deprecated", facts(conf))
    assert statuses(found) == [Status.WARN] * 3
    by_old = {f.data["old"]: f for f in found}
    assert by_old["[DEFAULT] image_cache_manager_interval"].data["new"] == (
        "[image_cache] manager_interval")
    assert "renamed in nova 21.0.0 (Ussuri)" in by_old[
        "[DEFAULT] image_cache_manager_interval"].finding
    assert by_old["[DEFAULT] image_cache_manager_interval"].fix == (
        f"in {conf}: move it to [image_cache] manager_interval = 3600")
    assert by_old["[libvirt] remove_unused_resized_minimum_age_seconds"].fix.endswith(
        "[image_cache] remove_unused_resized_minimum_age_seconds = 7200")
    assert by_old["[DEFAULT] vnc_enabled"].data["new"] == "[vnc] enabled"


def test_old_and_new_name_both_set_the_old_one_is_to_go(tmp_path: Path) -> None:
    conf, _ = node(tmp_path, "image_cache_manager_interval = 60\n"
                             "[image_cache]\nmanager_interval = 2400\n")
    warn = one(check("conf.deprecated", facts(conf)), Status.WARN)
    assert "is set too and wins" in warn.finding
    assert warn.fix == f"in {conf}: remove [DEFAULT] image_cache_manager_interval"


def test_a_deprecated_typo_is_not_copied_into_the_fix(tmp_path: Path) -> None:
    conf, _ = node(tmp_path, "auth_strategy = keyston\n")
    warn = one(check("conf.deprecated", facts(conf)), Status.WARN)
    assert warn.fix == f"in {conf}: move it to [api] auth_strategy = keystone"
    assert "ignored since nova 32.0.0" in warn.finding


def test_unknown_options_in_known_groups_warn_with_the_nearest_name(tmp_path: Path) -> None:
    conf, _ = node(tmp_path, "instance_path = /srv/nova\n[libvirt]\nimage_type = rbd\n"
                             "[image_cache]\nremove_unused_base_image = false\n"
                             "[novakeeper]\nmax_cach_size = 50G\n"
                             "[neutron]\nwhatever_it_is = 1\n"  # not a group doctor knows
                             "[DEFAULT]\ncompletely_made_up_xyzzy = 1\n")
    found = check("conf.unknown", facts(conf))
    near = {f.data["option"]: f.data["nearest"] for f in found}
    assert near == {"instance_path": "instances_path", "image_type": "images_type",
                    "remove_unused_base_image": "remove_unused_base_images",
                    "max_cach_size": "max_cache_size", "completely_made_up_xyzzy": None}
    assert all(f.status is Status.WARN for f in found)
    image_type = next(f for f in found if f.data["option"] == "image_type")
    assert image_type.fix == f"in {conf}: [libvirt] images_type = rbd"


def test_options_nova_reads_from_its_libraries_are_known(tmp_path: Path) -> None:
    conf, _ = node(tmp_path, "debug = true\ntransport_url = rabbit://h\nlog_dir = /var/log\n"
                             "[oslo_concurrency]\nlock_path = /var/lib/nova/tmp\n"
                             "[vnc]\nserver_listen = 0.0.0.0\n")
    assert statuses(check("conf.unknown", facts(conf))) == [Status.OK]


def test_a_file_that_does_not_parse_fails_and_the_others_skip(tmp_path: Path) -> None:
    conf, _ = node(tmp_path, "[image_cache\nmanager_interval = 1\n")
    f = facts(conf)
    fail = one(check("conf.files", f), Status.FAIL)
    assert fail.finding.startswith(f"{conf}: line 3: ")
    for cid in ("conf.values", "conf.unknown", "conf.cache-ages"):
        skip = one(check(cid, f), Status.SKIP)
        assert skip.finding == fail.finding


def test_a_missing_file_fails(tmp_path: Path) -> None:
    fail = one(check("conf.files", facts(tmp_path / "nope.conf")), Status.FAIL)
    assert fail.finding == f"{tmp_path / 'nope.conf'}: config file not found"


def test_no_file_at_all_warns(tmp_path: Path) -> None:
    f = facts()
    f.config_files = []
    warn = one(check("conf.files", f), Status.WARN)
    assert "nova's defaults assumed" in warn.finding


def test_an_unreadable_file_is_skip_not_a_crash(tmp_path: Path) -> None:
    prefix = permission_prefix()
    if prefix is None:
        pytest.skip("cannot drop root's permission override here")
    conf, _ = node(tmp_path, "")
    conf.chmod(0)
    proc = run_cli("doctor", "--config-file", str(conf), "--only", "conf", "--json",
                   prefix=prefix)
    assert "Traceback" not in proc.stderr
    data = json.loads(proc.stdout)
    files = next(f for f in data["findings"] if f["check"] == "conf.files")
    assert files["status"] == "SKIP" and "permission denied" in files["finding"]


@pytest.mark.parametrize(("lines", "words"), [
    ("[image_cache]\nremove_unused_original_minimum_age_seconds = 60\n"
     "remove_unused_resized_minimum_age_seconds = 30\n",
     ["remove_unused_original_minimum_age_seconds = 60",
      "remove_unused_resized_minimum_age_seconds = 30"]),
    ("[image_cache]\nremove_unused_original_minimum_age_seconds = 3600\n"
     "remove_unused_resized_minimum_age_seconds = 86400\n",
     ["resized copies are kept longer than their originals"]),
])
def test_cache_ages(tmp_path: Path, lines: str, words: list[str]) -> None:
    conf, _ = node(tmp_path, lines)
    found = check("conf.cache-ages", facts(conf))
    assert statuses(found) == [Status.WARN] * len(words)
    for finding, word in zip(found, words, strict=True):
        assert word in finding.finding


def test_short_ages_do_not_matter_when_nothing_is_removed(tmp_path: Path) -> None:
    conf, _ = node(tmp_path, "[image_cache]\nremove_unused_base_images = false\n"
                             "remove_unused_original_minimum_age_seconds = 1\n"
                             "[novakeeper]\nservice_mode = clean\n")
    assert statuses(check("conf.cache-ages", facts(conf))) == [Status.OK]


def test_the_manager_off_and_no_other_cleaner_warns(tmp_path: Path) -> None:
    conf, _ = node(tmp_path, "[image_cache]\nmanager_interval = -1\n")
    warn = one(check("conf.cache-manager", facts(conf)), Status.WARN)
    assert "nothing removes unused bases" in warn.finding
    assert "service_mode = clean" in warn.fix
    keeper = tmp_path / "novakeeper.conf"
    keeper.write_text("[novakeeper]\nservice_mode = clean\n")
    ok = one(check("conf.cache-manager", facts(conf, keeper)), Status.OK)
    assert "novakeeper's service" in ok.finding


def test_two_cleaners_with_different_ages_warn(tmp_path: Path) -> None:
    conf, _ = node(tmp_path, "[image_cache]\nremove_unused_original_minimum_age_seconds = "
                             "86400\n")
    keeper = tmp_path / "novakeeper.conf"
    keeper.write_text("[novakeeper]\nservice_mode = clean\n[image_cache]\n"
                      "remove_unused_original_minimum_age_seconds = 7200\n")
    warn = one(check("conf.cache-manager", facts(conf, keeper)), Status.WARN)
    assert "two cleaners with different ages" in warn.finding
    assert "remove_unused_original_minimum_age_seconds: nova 86400 s, novakeeper 7200 s" in (
        warn.finding)
    keeper.write_text("[novakeeper]\nservice_mode = clean\n")  # same ages: one policy
    assert statuses(check("conf.cache-manager", facts(conf, keeper))) == [Status.OK]


def test_a_budget_smaller_than_what_is_in_use_cannot_be_met(tmp_path: Path) -> None:
    conf, ipath = node(tmp_path, "[novakeeper]\nmax_cache_size = 1M\n")
    base = make_raw(ipath / "_base" / image_hash("img-1"), 8 << 20, b"\1" * (4 << 20))
    inst = ipath / "11111111-2222-4333-8444-555555555555"
    make_qcow2(inst / "disk", backing=base, size="8M")
    (inst / "console.log").write_text("")
    warn = one(check("conf.budget", facts(conf)), Status.WARN)
    assert "the budget cannot be met" in warn.finding and "in-use" in warn.finding
    assert warn.fix.startswith("[novakeeper] max_cache_size = 1G or more")
    conf.write_text(conf.read_text().replace("1M", "1G"))
    assert statuses(check("conf.budget", facts(conf))) == [Status.OK]


def test_the_cli_typo_case_text_json_and_exit_code(tmp_path: Path) -> None:
    conf, _ = node(tmp_path, "auth_strategy = keyston\n")
    proc = run_cli("doctor", "--config-file", str(conf), "--only", "conf.values")
    assert proc.returncode == 21, proc.stderr
    assert proc.stdout.splitlines()[0].startswith(
        f"FAIL  conf.values  {conf}: [DEFAULT] auth_strategy = keyston: ")
    assert proc.stdout.splitlines()[1].strip() == (
        f"fix: in {conf}: [DEFAULT] auth_strategy = keystone")
    assert proc.stderr == ""  # oslo.config's own deprecation warning is not repeated
    data = json.loads(run_cli("doctor", "--config-file", str(conf), "--only",
                              "conf.values", "--json").stdout)
    assert data["worst"] == "FAIL" and data["exit_code"] == 21
    assert data["findings"][0]["data"]["suggested"] == "keystone"


def test_the_shipped_option_names_are_nova_34s(tmp_path: Path) -> None:
    python = side_venv_python("nova", "NOVAKEEPER_NOVA_VENV")
    proc = subprocess.run([str(python), str(Path(__file__).parent / "nova_option_names.py")],
                          capture_output=True, text=True, timeout=300, check=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    shipped = (REPO / "src/novakeeper/doctor/nova_option_names.json").read_text()
    assert json.loads(proc.stdout) == json.loads(shipped)


def test_every_checked_option_is_defined_once() -> None:
    keys = [(o.group, o.opt.dest) for o in options.catalogue()]
    assert len(keys) == len(set(keys))
    assert ("api", "auth_strategy") in keys and ("libvirt", "images_type") in keys
