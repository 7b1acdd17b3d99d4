"""settings.load: nova's option names, defaults and deprecated names, read by oslo.config,
and every mistake in a file turned into one line naming file, section and option."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from pathlib import Path

import pytest

from novakeeper import settings
from novakeeper.errors import ExitCode, NovakeeperError


def write(tmp_path: Path, text: str, name: str = "nova.conf") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def config_error(files: list[str], **kwargs: str) -> str:
    """Load `files`, expect a config error, return its message after checking its form."""
    with pytest.raises(NovakeeperError) as info:
        settings.load(files, **kwargs)
    exc = info.value
    assert exc.code is ExitCode.CONFIG
    assert exc.message == str(exc)
    assert "\n" not in exc.message, "config errors must be one line"
    assert exc.message.strip() == exc.message and exc.message
    return exc.message


# -- defaults -------------------------------------------------------------------------


def test_defaults_are_novas() -> None:
    conf = settings.load([])
    assert conf.instances_path == "/var/lib/nova/instances"  # $state_path/instances
    assert conf.subdirectory_name == "_base"
    assert conf.cache_path == "/var/lib/nova/instances/_base"
    assert conf.manager_interval == 2400
    assert conf.policy.remove_unused_base_images is True
    assert conf.policy.remove_unused_original_minimum_age_seconds == 86400
    assert conf.policy.remove_unused_resized_minimum_age_seconds == 3600
    assert conf.policy.stale_partial_seconds == 3600
    assert conf.touch_in_use is True
    assert conf.config_files == ()


def test_an_empty_file_changes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "[DEFAULT]\n")
    conf = settings.load([path])
    assert conf == dataclasses.replace(settings.load([]), config_files=(path,))


def test_default_files_are_the_ones_that_exist(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    present = write(tmp_path, "[image_cache]\nmanager_interval = 77\n", "novakeeper.conf")
    absent = str(tmp_path / "nova.conf")
    monkeypatch.setattr(settings, "DEFAULT_CONFIG_FILES", (absent, present))
    assert settings.default_config_files() == [present]
    conf = settings.load(None)
    assert conf.config_files == (present,)
    assert conf.manager_interval == 77


def test_no_default_file_present_means_defaults(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "DEFAULT_CONFIG_FILES",
                        (str(tmp_path / "nova.conf"), str(tmp_path / "novakeeper.conf")))
    conf = settings.load(None)
    assert conf.config_files == ()
    assert conf.instances_path == "/var/lib/nova/instances"


def test_instances_path_follows_state_path(tmp_path: Path) -> None:
    path = write(tmp_path, "[DEFAULT]\nstate_path = /srv/nova\n")
    conf = settings.load([path])
    assert conf.instances_path == "/srv/nova/instances"
    assert conf.cache_path == "/srv/nova/instances/_base"


# -- current names ---------------------------------------------------------------------


def test_current_names(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        [DEFAULT]
        instances_path = /data/instances
        host = compute-7
        [image_cache]
        manager_interval = 600
        subdirectory_name = _cache
        remove_unused_base_images = false
        remove_unused_original_minimum_age_seconds = 7200
        remove_unused_resized_minimum_age_seconds = 120
        [novakeeper]
        stale_partial_seconds = 99
        touch_in_use = False
        """)
    conf = settings.load([path])
    assert conf.instances_path == "/data/instances"
    assert conf.host == "compute-7"
    assert conf.cache_path == "/data/instances/_cache"
    assert conf.manager_interval == 600
    assert conf.policy.remove_unused_base_images is False
    assert conf.policy.remove_unused_original_minimum_age_seconds == 7200
    assert conf.policy.remove_unused_resized_minimum_age_seconds == 120
    assert conf.policy.stale_partial_seconds == 99
    assert conf.touch_in_use is False
    assert conf.config_files == (path,)


@pytest.mark.parametrize("value", ["-1", "0"])
def test_manager_interval_accepts_novas_special_values(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"[image_cache]\nmanager_interval = {value}\n")
    assert settings.load([path]).manager_interval == int(value)


# -- deprecated names ------------------------------------------------------------------

OLD_NAMES = [
    ("DEFAULT", "image_cache_manager_interval", "123",
     lambda c: c.manager_interval, 123),
    ("DEFAULT", "image_cache_subdirectory_name", "_old_base",
     lambda c: c.subdirectory_name, "_old_base"),
    ("DEFAULT", "remove_unused_base_images", "False",
     lambda c: c.policy.remove_unused_base_images, False),
    ("DEFAULT", "remove_unused_original_minimum_age_seconds", "4242",
     lambda c: c.policy.remove_unused_original_minimum_age_seconds, 4242),
    ("libvirt", "remove_unused_resized_minimum_age_seconds", "77",
     lambda c: c.policy.remove_unused_resized_minimum_age_seconds, 77),
]
OLD_IDS = [f"{s}.{o}" for s, o, *_ in OLD_NAMES]


@pytest.mark.parametrize(("section", "option", "value", "get", "expected"), OLD_NAMES,
                         ids=OLD_IDS)
def test_deprecated_names_are_read(tmp_path: Path, section: str, option: str, value: str,
                                   get: object, expected: object) -> None:
    path = write(tmp_path, f"[{section}]\n{option} = {value}\n")
    conf = settings.load([path])
    assert get(conf) == expected  # type: ignore[operator]
    assert get(settings.load([])) != expected  # type: ignore[operator]


@pytest.mark.parametrize(("section", "option", "bad"), [
    ("DEFAULT", "image_cache_manager_interval", "often"),
    ("DEFAULT", "remove_unused_base_images", "maybe"),
    ("DEFAULT", "remove_unused_original_minimum_age_seconds", "1d"),
    ("libvirt", "remove_unused_resized_minimum_age_seconds", "1.5"),
], ids=["interval", "remove", "original-age", "resized-age"])
def test_bad_value_under_old_name_names_the_old_name(tmp_path: Path, section: str,
                                                     option: str, bad: str) -> None:
    path = write(tmp_path, f"[{section}]\n{option} = {bad}\n")
    msg = config_error([path])
    assert msg.startswith(f"{path}: [{section}] {option}: invalid value")
    assert bad in msg


def test_bad_old_subdirectory_name_names_the_old_name(tmp_path: Path) -> None:
    path = write(tmp_path, "[DEFAULT]\nimage_cache_subdirectory_name = a/b\n")
    msg = config_error([path])
    assert msg.startswith(f"{path}: [DEFAULT] image_cache_subdirectory_name: ")
    assert "'a/b'" in msg


def test_current_name_beats_old_name_in_the_same_file(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        [DEFAULT]
        image_cache_manager_interval = 5
        [image_cache]
        manager_interval = 6
        """)
    assert settings.load([path]).manager_interval == 6


def test_error_names_the_name_oslo_read_not_a_valid_old_one(tmp_path: Path) -> None:
    # oslo.config reads [image_cache] manager_interval (current names first), so that is
    # the line the operator must fix, not the valid deprecated one above it.
    path = write(tmp_path, """\
        [DEFAULT]
        image_cache_manager_interval = 5
        [image_cache]
        manager_interval = soon
        """)
    msg = config_error([path])
    assert msg.startswith(f"{path}: [image_cache] manager_interval: invalid value")


def test_group_names_match_in_any_case_and_are_named_as_written(tmp_path: Path) -> None:
    good = write(tmp_path, "[Image_Cache]\nmanager_interval = 61\n", "good.conf")
    assert settings.load([good]).manager_interval == 61
    bad = write(tmp_path, "[IMAGE_CACHE]\nmanager_interval = x\n", "bad.conf")
    assert config_error([bad]).startswith(f"{bad}: [IMAGE_CACHE] manager_interval: ")


# -- several files ---------------------------------------------------------------------


def test_later_config_file_wins(tmp_path: Path) -> None:
    first = write(tmp_path, "[image_cache]\nmanager_interval = 100\n"
                            "remove_unused_base_images = False\n", "1.conf")
    second = write(tmp_path, "[image_cache]\nmanager_interval = 200\n", "2.conf")
    conf = settings.load([first, second])
    assert conf.manager_interval == 200
    assert conf.policy.remove_unused_base_images is False  # only the first sets it
    assert conf.config_files == (first, second)
    assert settings.load([second, first]).manager_interval == 100


def test_later_file_wins_across_old_and_new_names(tmp_path: Path) -> None:
    new = write(tmp_path, "[image_cache]\nmanager_interval = 100\n", "new.conf")
    old = write(tmp_path, "[DEFAULT]\nimage_cache_manager_interval = 300\n", "old.conf")
    assert settings.load([new, old]).manager_interval == 300
    assert settings.load([old, new]).manager_interval == 100


def test_error_names_the_file_whose_value_was_used(tmp_path: Path) -> None:
    good = write(tmp_path, "[image_cache]\nmanager_interval = 100\n", "good.conf")
    bad = write(tmp_path, "[image_cache]\nmanager_interval = lots\n", "bad.conf")
    assert config_error([good, bad]).startswith(f"{bad}: [image_cache] manager_interval: ")
    # a bad value overridden by a later file is never read, as in nova
    assert settings.load([bad, good]).manager_interval == 100


# -- interpolation and overrides -------------------------------------------------------


def test_base_my_ip_interpolation(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        [DEFAULT]
        my_ip = 192.0.2.17
        [image_cache]
        subdirectory_name = _base_$my_ip
        """)
    conf = settings.load([path])
    assert conf.subdirectory_name == "_base_192.0.2.17"
    assert conf.cache_path == "/var/lib/nova/instances/_base_192.0.2.17"


def test_interpolation_of_host_and_state_path(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        [DEFAULT]
        host = cn-3
        state_path = /srv/nova
        instances_path = ${state_path}/vms
        [image_cache]
        subdirectory_name = _base_$host
        """)
    conf = settings.load([path])
    assert conf.cache_path == "/srv/nova/vms/_base_cn-3"


def test_substituting_an_unknown_option_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[image_cache]\nsubdirectory_name = _base_$pybasedir\n")
    msg = config_error([path])
    assert msg.startswith(f"{path}: [image_cache] subdirectory_name: ")
    assert "pybasedir" in msg


def test_instances_path_argument_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[DEFAULT]\ninstances_path = /from/file\n")
    assert settings.load([path]).instances_path == "/from/file"
    target = tmp_path / "nodes" / "instances"
    conf = settings.load([path], instances_path=str(target))
    assert conf.instances_path == str(target)
    assert conf.cache_path == str(target / "_base")


def test_relative_instances_path_argument_is_made_absolute(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    conf = settings.load([], instances_path="rel/instances")
    assert conf.instances_path == os.path.join(str(tmp_path), "rel", "instances")


# -- errors ----------------------------------------------------------------------------


def test_malformed_file_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[DEFAULT]\nstate_path = /srv\nthis line has no equals sign\n")
    msg = config_error([path])
    assert msg.startswith(f"{path}: line 3 in [DEFAULT]: ")
    assert "this line has no equals sign" in msg


def test_malformed_line_names_its_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[DEFAULT]\nhost = a\n\n[image_cache]\n# note\nforty two\n")
    assert config_error([path]).startswith(f"{path}: line 6 in [image_cache]: ")


def test_option_outside_any_section_is_malformed(tmp_path: Path) -> None:
    path = write(tmp_path, "state_path = /srv\n")
    assert config_error([path]).startswith(f"{path}: ")


@pytest.mark.parametrize(("text", "section", "option", "words"), [
    ("[image_cache]\nmanager_interval = ten\n", "image_cache", "manager_interval",
     "'ten'"),
    ("[image_cache]\nremove_unused_original_minimum_age_seconds = 1.5\n", "image_cache",
     "remove_unused_original_minimum_age_seconds", "'1.5'"),
    ("[image_cache]\nremove_unused_base_images = maybe\n", "image_cache",
     "remove_unused_base_images", "'maybe'"),
    ("[novakeeper]\ntouch_in_use = sometimes\n", "novakeeper", "touch_in_use",
     "'sometimes'"),
    ("[image_cache]\nmanager_interval = -2\n", "image_cache", "manager_interval", "-1"),
    ("[novakeeper]\nstale_partial_seconds = -1\n", "novakeeper", "stale_partial_seconds",
     "0"),
], ids=["int", "float-for-int", "bool", "novakeeper-bool", "interval-below-minus-1",
        "negative-stale"])
def test_invalid_values(tmp_path: Path, text: str, section: str, option: str,
                        words: str) -> None:
    path = write(tmp_path, text)
    msg = config_error([path])
    assert msg.startswith(f"{path}: [{section}] {option}: invalid value: ")
    assert words in msg


@pytest.mark.parametrize("section", ["novakeeper", "NoVaKeeper"])
def test_unknown_option_in_novakeepers_group(tmp_path: Path, section: str) -> None:
    path = write(tmp_path, f"[{section}]\nstale_partial_secs = 60\n")
    msg = config_error([path])
    assert msg.startswith(f"{path}: [novakeeper] stale_partial_secs: unknown option")
    assert "stale_partial_seconds" in msg  # names what is known


def test_unknown_options_in_novas_groups_are_novas_business(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        [DEFAULT]
        compute_driver = libvirt.LibvirtDriver
        [image_cache]
        some_future_option = 1
        [libvirt]
        virt_type = kvm
        """)
    assert settings.load([path]).manager_interval == 2400


@pytest.mark.parametrize("value", ["a/b", "..", "../x", ".", "/abs", ""])
def test_subdirectory_name_must_be_a_plain_folder_name(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"[image_cache]\nsubdirectory_name = {value}\n")
    msg = config_error([path])
    assert msg.startswith(f"{path}: [image_cache] subdirectory_name: ")
    assert repr(value) in msg


def test_empty_instances_path(tmp_path: Path) -> None:
    path = write(tmp_path, "[DEFAULT]\ninstances_path =\n")
    assert "instances_path" in config_error([path])


def test_missing_config_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.conf")
    assert config_error([missing]) == f"{missing}: config file not found"


def test_missing_file_among_good_ones(tmp_path: Path) -> None:
    good = write(tmp_path, "[DEFAULT]\n")
    missing = str(tmp_path / "nope.conf")
    assert config_error([good, missing]).startswith(missing)


def test_directory_as_config_file(tmp_path: Path) -> None:
    folder = tmp_path / "conf.d"
    folder.mkdir()
    assert config_error([str(folder)]) == f"{folder}: is a directory, not a config file"


@pytest.mark.skipif(os.geteuid() == 0,
                    reason="running as root: root reads a mode-000 file, so an unreadable "
                           "config file cannot be made")
def test_unreadable_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[DEFAULT]\n")
    os.chmod(path, 0)
    assert config_error([path]) == f"{path}: permission denied"


# -- nova's disk options (disk report's scheduler view) ------------------------------


def test_disk_options_default_as_novas(tmp_path: Path) -> None:
    conf = settings.load([write(tmp_path, "[DEFAULT]\n")])
    assert conf.disk_allocation_ratio == 1.0 and conf.reserved_host_disk_mb == 0


@pytest.mark.parametrize(("text", "ratio"), [
    ("disk_allocation_ratio = 1.5\n", 1.5),
    # unset: what nova gives placement at first, initial_disk_allocation_ratio
    ("initial_disk_allocation_ratio = 2.0\n", 2.0),
    ("disk_allocation_ratio = 0.9\ninitial_disk_allocation_ratio = 2.0\n", 0.9),
])
def test_disk_allocation_ratio_is_read(tmp_path: Path, text: str, ratio: float) -> None:
    conf = settings.load([write(tmp_path, "[DEFAULT]\nreserved_host_disk_mb = 2048\n" + text)])
    assert conf.disk_allocation_ratio == ratio and conf.reserved_host_disk_mb == 2048


@pytest.mark.parametrize("text", ["reserved_host_disk_mb = -1", "disk_allocation_ratio = x"])
def test_bad_disk_options_are_one_line_errors(tmp_path: Path, text: str) -> None:
    message = config_error([write(tmp_path, f"[DEFAULT]\n{text}\n")])
    assert text.split(" = ")[0] in message
