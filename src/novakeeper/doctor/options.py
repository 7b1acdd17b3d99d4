"""The nova.conf options doctor validates, defined here (never imported from nova: doctor
runs on nodes of any release and executes nothing of nova's), each with the releases that
read it. Types, choices and ranges are nova's own, read from its source:
nova/conf/{api,compute,imagecache,libvirt,vnc,spice}.py.

The options novakeeper itself reads (settings.OPT_GROUPS) are validated too; where doctor
knows nova's stricter definition (choices of [libvirt] virt_type) that one is used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources

from oslo_config import cfg

from novakeeper import settings

NOVA_34 = "read by nova 34 (2026.2)"
IMAGE_CACHE_RENAMED = "nova 21.0.0 (Ussuri)"


@dataclass(frozen=True)
class NovaOption:
    group: str
    opt: cfg.Opt
    read_by: str
    """Which releases read it: said in every finding about it."""
    removed_in: str | None = None
    """The first release that ignores it, if any."""
    renamed_in: str | None = None
    """The release that gave it its current name (the old one is still read)."""


AUTH_STRATEGY = NovaOption(
    "api",
    cfg.StrOpt("auth_strategy", default="keystone", choices=["keystone", "noauth2"],
               deprecated_group="DEFAULT"),
    "read by nova up to 31.x (2025.1 Epoxy): as [DEFAULT] auth_strategy up to 14.x (Newton), "
    "as [api] auth_strategy (the old name still read) from 15.0.0 (Ocata)",
    removed_in="nova 32.0.0 (2025.2 Flamingo), which always uses Keystone",
    renamed_in="nova 15.0.0 (Ocata)",
)

_NOVA_ONLY: tuple[NovaOption, ...] = (  # nova's, whether novakeeper reads them or not
    AUTH_STRATEGY,
    NovaOption("DEFAULT", cfg.BoolOpt("force_raw_images", default=True), NOVA_34),
    NovaOption("DEFAULT", cfg.BoolOpt("use_cow_images", default=True), NOVA_34),
    NovaOption("DEFAULT", cfg.FloatOpt("disk_allocation_ratio", min=0.0), NOVA_34),
    NovaOption("DEFAULT", cfg.IntOpt("reserved_host_disk_mb", default=0, min=0), NOVA_34),
    NovaOption("image_cache", cfg.IntOpt("precache_concurrency", default=1, min=1), NOVA_34,
               renamed_in=IMAGE_CACHE_RENAMED),
    NovaOption("libvirt", cfg.StrOpt(
        "images_type", default="default",
        choices=["raw", "flat", "qcow2", "lvm", "rbd", "ploop", "default"]), NOVA_34),
    NovaOption("vnc", cfg.BoolOpt("enabled", default=True, deprecated_group="DEFAULT",
                                  deprecated_name="vnc_enabled"), NOVA_34),
    NovaOption("spice", cfg.BoolOpt("enabled", default=False, deprecated_group="DEFAULT"),
               NOVA_34),
)

_STRICTER: Mapping[tuple[str, str], cfg.Opt] = {
    ("libvirt", "virt_type"): cfg.StrOpt("virt_type", default="kvm",
                                         choices=["kvm", "lxc", "qemu", "parallels"]),
}


def _read_by(group: str) -> str:
    return "read by novakeeper only" if group == "novakeeper" else NOVA_34


@cache
def catalogue() -> tuple[NovaOption, ...]:
    """Every option doctor validates, once per (group, name): novakeeper's own options,
    with doctor's definition of a nova option wherever novakeeper reads it too (same
    name, nova's type and range, and the releases that read it)."""
    out: dict[tuple[str, str], NovaOption] = {}
    for group, opts in settings.OPT_GROUPS:
        for opt in opts:
            out[(group, opt.dest)] = NovaOption(
                group, _STRICTER.get((group, opt.dest), opt), _read_by(group),
                renamed_in=IMAGE_CACHE_RENAMED if group == "image_cache" else None)
    for option in _NOVA_ONLY:
        out[(option.group, option.opt.dest)] = option
    return tuple(out.values())


@cache
def known_names() -> dict[str, frozenset[str]]:
    """Option names per group that nova 34 (plus the libraries it reads options for) and
    novakeeper know, deprecated names included: an option outside these in one of these
    groups is read by nobody. Generated from nova 34 by tests/doctor/nova_option_names.py."""
    text = resources.files("novakeeper.doctor").joinpath(
        "nova_option_names.json").read_text(encoding="utf-8")
    names: dict[str, set[str]] = {g: set(v) for g, v in json.loads(text).items()}
    for option in catalogue():
        names.setdefault(option.group, set()).add(option.opt.dest)
        for dep in option.opt.deprecated_opts:
            names.setdefault(dep.group or option.group, set()).add(dep.name or option.opt.dest)
    return {g: frozenset(v) for g, v in names.items()}
