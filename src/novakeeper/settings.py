"""Settings read from nova.conf the way nova reads them (oslo.config, nova's option names,
defaults and deprecated names), plus novakeeper's own `[novakeeper]` group.

Everything is read and validated once, here; the rest of the program gets a frozen
Settings. Any mistake in a file becomes a NovakeeperError naming file, section and option.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from oslo_config import cfg, types

from novakeeper.cache.budget import BudgetConfig
from novakeeper.cache.policy import PolicyConfig
from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.state import pins
from novakeeper.state.db import DEFAULT_PATH as DEFAULT_STATE_PATH
from novakeeper.units import parse_percent, parse_size

DEFAULT_CONFIG_FILES = ("/etc/nova/nova.conf", "/etc/novakeeper/novakeeper.conf")


def _default_host() -> str:
    return socket.gethostname()


def _default_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


DEFAULT_OPTS: list[cfg.Opt] = [
    cfg.StrOpt("state_path", default="/var/lib/nova",
               help="Top-level directory for nova's state (nova's default on distributions)."),
    cfg.StrOpt("instances_path", default="$state_path/instances",
               help="Where instances are stored; the image cache is a folder inside it."),
    cfg.StrOpt("host", default=_default_host(), sample_default="<hostname>",
               help="This compute host's name, as nova knows it."),
    cfg.StrOpt("my_ip", default=_default_ip(), sample_default="<host ip>",
               help="Read so that nova's `_base_$my_ip` cache names interpolate."),
    cfg.IntOpt("reserved_host_disk_mb", default=0, min=0,
               help="nova's disk reserved for the host (`disk report`'s scheduler view)."),
    cfg.FloatOpt("disk_allocation_ratio", default=None, min=0.0,
                 help="nova's DISK_GB allocation ratio; unset: initial_disk_allocation_ratio."),
    cfg.FloatOpt("initial_disk_allocation_ratio", default=1.0, min=0.0,
                 help="nova's allocation ratio when disk_allocation_ratio is unset."),
    cfg.BoolOpt("force_raw_images", default=True,
                help="nova's: `cache fetch` converts non-raw images to raw, as nova does."),
]

IMAGE_CACHE_OPTS: list[cfg.Opt] = [
    cfg.IntOpt("manager_interval", default=2400, min=-1,
               deprecated_name="image_cache_manager_interval", deprecated_group="DEFAULT",
               help="Seconds between cache manager passes (0: every 60 s, -1: disabled)."),
    cfg.StrOpt("subdirectory_name", default="_base",
               deprecated_name="image_cache_subdirectory_name", deprecated_group="DEFAULT",
               help="Cache folder name, relative to instances_path."),
    cfg.BoolOpt("remove_unused_base_images", default=True, deprecated_group="DEFAULT",
                help="Should unused base images be removed?"),
    cfg.IntOpt("remove_unused_original_minimum_age_seconds", default=24 * 3600,
               deprecated_group="DEFAULT",
               help="Unused unresized base images younger than this are not removed."),
    cfg.IntOpt("remove_unused_resized_minimum_age_seconds", default=3600,
               deprecated_group="libvirt",
               help="Unused resized base images younger than this are not removed."),
]

NOVAKEEPER_OPTS: list[cfg.Opt] = [
    cfg.IntOpt("stale_partial_seconds", default=3600, min=0,
               help="A .part/.converted file untouched this long is a dead download."),
    cfg.IntOpt("spawn_hold_seconds", default=120, min=0,
               help="A young instance folder whose disks are not all created yet, and a "
                    "base modified this recently, are held: a spawn may be between "
                    "nova's unlocked look for the base and its disk's creation."),
    cfg.IntOpt("removal_batch_size", default=128, min=1,
               help="The smallest batch of removals decided by one rescan of the node "
                    "(larger cleans use at most 4 batches); nova's lock is held on every "
                    "file of a batch while it is re-checked."),
    cfg.BoolOpt("touch_in_use", default=True,
                help="clean marks in-use bases by setting their mtime to now, as nova does."),
    cfg.StrOpt("max_cache_size", sample_default="50G",
               help="Allocated bytes the cache may hold (50G, 500M, 2T)."),
    cfg.StrOpt("high_watermark", sample_default="85%",
               help="Eviction starts when the file system holding the cache is fuller."),
    cfg.StrOpt("low_watermark", sample_default="80%",
               help="Eviction stops once the file system is down to this."),
    cfg.StrOpt("min_free_space", sample_default="20G",
               help="Bytes (20G) or percent (10%) to keep free on the cache's file system."),
    cfg.IntOpt("eviction_min_age_seconds", default=3600, min=0,
               help="An unused base younger than this is never evicted for space."),
    cfg.StrOpt("service_mode", default="plan", choices=["plan", "clean"],
               help="What `cache serve` does each pass: plan (record, export metrics, "
                    "remove nothing) or clean (remove what the plan allows)."),
    cfg.IntOpt("trash_grace_seconds", default=0, min=0,
               help="0: remove at once. Otherwise removed bases wait this long in "
                    "_base/.novakeeper-trash, from where `cache restore` puts one back."),
    cfg.FloatOpt("lock_wait_seconds", default=5.0, min=0,
                 help="How long clean waits for nova's lock on a base before calling it "
                      "busy and keeping it."),
    cfg.ListOpt("usage_sources", default=["open-files"],
                item_type=types.String(choices=["open-files", "libvirt", "nova-api"]),
                help="Where else to look for users of a base, besides the disks: "
                     "open-files, libvirt, nova-api."),
    cfg.StrOpt("nova_api_cloud",
               help="clouds.yaml cloud for the nova-api source (default: OS_* variables)."),
    cfg.StrOpt("state_path", default=DEFAULT_STATE_PATH,
               help="SQLite database of usage records, pins and the removal journal."),
    cfg.ListOpt("pinned_images", default=[],
                help="Glance image ids whose bases are never removed."),
    cfg.ListOpt("pinned_files", default=[],
                help="Glob patterns of cache file names that are never removed."),
    cfg.StrOpt("verify_algorithm", default="sha256", choices=["sha256", "sha512", "md5"],
               help="Checksum `cache verify` records (md5/sha512 match Glance's checksum "
                    "and os_hash_value; Glance's own algorithm is added when comparing)."),
    cfg.FloatOpt("verify_rate_limit", default=0.0, min=0,
                 help="MB/s (MiB) verification may read, so it never starves running "
                      "instances of disk I/O; 0: unlimited."),
    cfg.BoolOpt("glance_images", default=False,
                help="Name every base by its Glance image and act on deleted/deactivated "
                     "images (needs Glance credentials)."),
    cfg.StrOpt("glance_cloud",
               help="clouds.yaml cloud for Glance (default: nova_api_cloud, else OS_*)."),
    cfg.IntOpt("glance_refresh_seconds", default=600, min=0,
               help="How long Glance's image listing is reused before asking again."),
    cfg.IntOpt("deleted_image_min_age_seconds", default=3600, min=0,
               help="Unused bases of images deleted or deactivated in Glance go after this."),
    cfg.FloatOpt("fetch_rate_limit", default=0.0, min=0,
                 help="MB/s (MiB) `cache fetch` downloads at most; 0: unlimited."),
    cfg.IntOpt("verify_files_per_pass", default=2, min=0,
               help="Base files the service verifies each pass, least recently verified "
                    "first; 0: none."),
]

LIBVIRT_OPTS: list[cfg.Opt] = [
    cfg.StrOpt("virt_type", default="kvm",
               help="nova's hypervisor type; picks the default connection URI."),
    cfg.StrOpt("connection_uri", default="",
               help="nova's libvirt URI; empty: qemu:///system for kvm and qemu."),
]

OPT_GROUPS: tuple[tuple[str, list[cfg.Opt]], ...] = (
    ("DEFAULT", DEFAULT_OPTS),
    ("image_cache", IMAGE_CACHE_OPTS),
    ("libvirt", LIBVIRT_OPTS),
    ("novakeeper", NOVAKEEPER_OPTS),
)


@dataclass(frozen=True)
class GlanceSettings:
    """Image naming (images/catalog.py) and `cache fetch` (cache/fetch.py)."""

    enabled: bool = False
    cloud: str | None = None
    refresh_seconds: int = 600
    force_raw_images: bool = True
    fetch_rate_limit: float = 0.0


@dataclass(frozen=True)
class Settings:
    instances_path: str
    subdirectory_name: str
    manager_interval: int
    host: str
    policy: PolicyConfig
    touch_in_use: bool
    config_files: tuple[str, ...]
    state_path: str = DEFAULT_STATE_PATH
    lock_wait_seconds: float = 5.0
    removal_batch_size: int = 128
    service_mode: str = "plan"
    usage_sources: tuple[str, ...] = ("open-files",)
    libvirt_uri: str = "qemu:///system"
    nova_api_cloud: str | None = None
    pins: tuple[pins.Pin, ...] = ()
    """Pins from the configuration; the state database holds the others."""
    verify_algorithm: str = "sha256"
    verify_rate_limit: float = 0.0
    """MiB/s; 0: unlimited."""
    verify_files_per_pass: int = 2
    reserved_host_disk_mb: int = 0
    disk_allocation_ratio: float = 1.0
    """[DEFAULT] disk_allocation_ratio, or initial_disk_allocation_ratio when unset (as
    nova's resource tracker reports DISK_GB to placement)."""
    glance: GlanceSettings = field(default_factory=lambda: GlanceSettings())

    @property
    def cache_path(self) -> str:
        return os.path.join(self.instances_path, self.subdirectory_name)


def default_config_files() -> list[str]:
    return [path for path in DEFAULT_CONFIG_FILES if os.path.exists(path)]


def _build_conf() -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    for group, opts in OPT_GROUPS:
        if group == "DEFAULT":
            conf.register_opts(opts)
        else:
            conf.register_opts(opts, group=group)
    return conf


def _parse_sections(path: str) -> dict[str, dict[str, list[str]]]:
    """The raw sections of one file, parsed by oslo.config's own parser."""
    sections: dict[str, dict[str, list[str]]] = {}
    cfg.ConfigParser(path, sections).parse()
    return sections


def _where(files: Sequence[str], names: Sequence[tuple[str, str]]) -> tuple[str, str, str]:
    """The file, section and option an operator wrote for one of `names`; the last file
    that sets it wins, as in oslo.config."""
    found = ("", names[0][0], names[0][1])
    for path in files:
        sections = _parse_sections(path)
        for section, option in names:  # within one file the current name beats old ones
            written = next((s for s in sections if _same_group(s, section)
                            and option in sections[s]), None)
            if written is not None:
                found = (path, written, option)
                break
    for section, option in names:  # oslo.config's environment source beats the files
        var = f"OS_{section.upper()}__{option.upper()}"
        if var in os.environ:
            return (f"environment {var}", section, option)
    return found


def _same_group(written: str, group: str) -> bool:
    """oslo.config matches group names case-insensitively, except DEFAULT."""
    def norm(name: str) -> str:
        return name if name == "DEFAULT" else name.lower()
    return norm(written) == norm(group)


def _candidate_names(group: str, opt: cfg.Opt) -> list[tuple[str, str]]:
    names = [(group, opt.dest)]
    for dep in opt.deprecated_opts:
        names.append((dep.group or group, dep.name or opt.dest))
    return names


def _value_error(files: Sequence[str], group: str, opt: cfg.Opt, exc: Exception) -> NovakeeperError:
    path, section, option = _where(files, _candidate_names(group, opt))
    reason = str(exc)
    if " is not valid: " in reason:
        reason = reason.split(" is not valid: ", 1)[1]
    where = f"{path}: " if path else ""
    return NovakeeperError(ExitCode.CONFIG, f"{where}[{section}] {option}: invalid value: {reason}")


def load(
    config_files: Sequence[str] | None = None, instances_path: str | None = None
) -> Settings:
    """Read and validate the configuration. `config_files=None` means the defaults that exist."""
    files = list(default_config_files() if config_files is None else config_files)
    for path in files:
        if not os.path.exists(path):
            raise NovakeeperError(ExitCode.CONFIG, f"{path}: config file not found")
        if os.path.isdir(path):
            raise NovakeeperError(ExitCode.CONFIG, f"{path}: is a directory, not a config file")
        if not os.access(path, os.R_OK):
            raise NovakeeperError(ExitCode.CONFIG, f"{path}: permission denied")
    conf = _build_conf()
    args: list[str] = []
    for path in files:
        args += ["--config-file", path]
    try:
        conf(args=args, project="novakeeper", default_config_files=[], use_env=True)
    except cfg.ConfigFileParseError as exc:
        raise NovakeeperError(ExitCode.CONFIG, _parse_error(exc)) from None
    except cfg.Error as exc:
        raise NovakeeperError(ExitCode.CONFIG, str(exc).splitlines()[0]) from None

    _reject_unknown(files)
    values: dict[str, dict[str, Any]] = {}
    for group, opts in OPT_GROUPS:
        node = conf if group == "DEFAULT" else conf[group]
        for opt in opts:
            try:
                values.setdefault(group, {})[opt.dest] = node[opt.dest]
            except (cfg.ConfigFileValueError, ValueError) as exc:
                raise _value_error(files, group, opt, exc) from None
            except (cfg.TemplateSubstitutionError, cfg.NoSuchOptError) as exc:
                # NoSuchOptError: a `$name` naming an option we do not register
                path, section, option = _where(files, _candidate_names(group, opt))
                detail = (exc.msg if isinstance(exc, cfg.TemplateSubstitutionError)
                          else f"cannot substitute: {exc}")
                where = f"{path}: " if path else ""
                raise NovakeeperError(
                    ExitCode.CONFIG, f"{where}[{section}] {option}: {detail}"
                ) from None

    subdir = values["image_cache"]["subdirectory_name"]
    if not subdir or "/" in subdir or subdir in (".", ".."):
        path, section, option = _where(files, _candidate_names(
            "image_cache", IMAGE_CACHE_OPTS[1]))
        raise NovakeeperError(
            ExitCode.CONFIG,
            f"{path}: [{section}] {option}: must be a folder name inside instances_path, "
            f"got {subdir!r}",
        )
    ipath = instances_path if instances_path is not None else values["DEFAULT"]["instances_path"]
    if not ipath:
        raise NovakeeperError(ExitCode.CONFIG, "[DEFAULT] instances_path is empty")
    ic = values["image_cache"]
    nk = values["novakeeper"]
    budget = _budget(files, nk)
    config_pins = _pins(files, nk)
    state_path = nk["state_path"]
    if not state_path:
        _invalid(files, "state_path", "must be a file path")
    return Settings(
        instances_path=os.path.abspath(ipath),
        subdirectory_name=subdir,
        manager_interval=ic["manager_interval"],
        host=values["DEFAULT"]["host"],
        policy=PolicyConfig(
            remove_unused_base_images=ic["remove_unused_base_images"],
            remove_unused_original_minimum_age_seconds=ic[
                "remove_unused_original_minimum_age_seconds"],
            remove_unused_resized_minimum_age_seconds=ic[
                "remove_unused_resized_minimum_age_seconds"],
            stale_partial_seconds=nk["stale_partial_seconds"],
            spawn_hold_seconds=nk["spawn_hold_seconds"],
            budget=budget,
            trash_grace_seconds=nk["trash_grace_seconds"],
            deleted_image_min_age_seconds=nk["deleted_image_min_age_seconds"],
        ),
        touch_in_use=nk["touch_in_use"],
        config_files=tuple(files),
        state_path=os.path.abspath(state_path),
        lock_wait_seconds=nk["lock_wait_seconds"],
        removal_batch_size=nk["removal_batch_size"],
        service_mode=nk["service_mode"],
        usage_sources=tuple(dict.fromkeys(nk["usage_sources"])),
        libvirt_uri=_libvirt_uri(values["libvirt"]),
        nova_api_cloud=nk["nova_api_cloud"] or None,
        pins=tuple(config_pins),
        verify_algorithm=nk["verify_algorithm"],
        verify_rate_limit=float(nk["verify_rate_limit"]),
        verify_files_per_pass=nk["verify_files_per_pass"],
        reserved_host_disk_mb=values["DEFAULT"]["reserved_host_disk_mb"],
        disk_allocation_ratio=_disk_allocation_ratio(values["DEFAULT"]),
        glance=GlanceSettings(nk["glance_images"],
                              nk["glance_cloud"] or nk["nova_api_cloud"] or None,
                              nk["glance_refresh_seconds"],
                              values["DEFAULT"]["force_raw_images"],
                              float(nk["fetch_rate_limit"])),
    )


def _disk_allocation_ratio(default: dict[str, Any]) -> float:
    ratio = default["disk_allocation_ratio"]
    return float(ratio if ratio is not None else default["initial_disk_allocation_ratio"])


def _libvirt_uri(lv: dict[str, Any]) -> str:
    """nova's rule: connection_uri if set, else the URI of virt_type's driver."""
    if lv["connection_uri"]:
        return str(lv["connection_uri"])
    return {"lxc": "lxc:///", "parallels": "parallels:///system"}.get(
        lv["virt_type"], "qemu:///system")


def _invalid(files: Sequence[str], option: str, reason: str) -> NoReturn:
    opt = next(o for o in NOVAKEEPER_OPTS if o.dest == option)
    path, section, name = _where(files, _candidate_names("novakeeper", opt))
    where = f"{path}: " if path else ""
    raise NovakeeperError(ExitCode.CONFIG, f"{where}[{section}] {name}: invalid value: {reason}")


def _budget(files: Sequence[str], nk: dict[str, Any]) -> BudgetConfig:
    """Parse the budget options, each with a one-line error naming file and option."""
    def parsed(option: str, parse: Callable[[str], Any]) -> Any:
        text = nk[option]
        if text is None or not str(text).strip():
            return None
        try:
            return parse(str(text))
        except ValueError as exc:
            _invalid(files, option, str(exc))

    max_size = parsed("max_cache_size", parse_size)
    if max_size == 0:
        _invalid(files, "max_cache_size", "0 would evict every unused base; unset it instead")
    high = parsed("high_watermark", parse_percent)
    low = parsed("low_watermark", parse_percent)
    if high is not None and low is not None and low > high:
        _invalid(files, "low_watermark",
                 f"{low:g}% is above high_watermark {high:g}%; eviction stops below low")
    free_text = nk["min_free_space"]
    free_bytes = free_pct = None
    if free_text is not None and str(free_text).strip().endswith("%"):
        free_pct = parsed("min_free_space", parse_percent)
    else:
        free_bytes = parsed("min_free_space", parse_size)
    return BudgetConfig(max_cache_size=max_size, high_watermark=high, low_watermark=low,
                        min_free_space=free_bytes, min_free_percent=free_pct,
                        eviction_min_age_seconds=nk["eviction_min_age_seconds"])


def _pins(files: Sequence[str], nk: dict[str, Any]) -> list[pins.Pin]:
    for image in nk["pinned_images"]:
        why = pins.check_image_id(image)
        if why:
            _invalid(files, "pinned_images", why)
    for pattern in nk["pinned_files"]:
        why = pins.check_pattern(pattern)
        if why:
            _invalid(files, "pinned_files", why)
    return pins.from_config(nk["pinned_images"], nk["pinned_files"])


def _parse_error(exc: cfg.ConfigFileParseError) -> str:
    msg = str(exc.msg)
    # oslo says "at /path:LINE, reason"; make it "/path: line LINE: reason"
    prefix = f"at {exc.config_file}:"
    if msg.startswith(prefix):
        rest = msg[len(prefix):]
        line, _, reason = rest.partition(",")
        section = _section_at(exc.config_file, line.strip())
        where = f" in [{section}]" if section else ""
        return f"{exc.config_file}: line {line.strip()}{where}: {reason.strip()}"
    return f"{exc.config_file}: {msg}"


def _section_at(path: str, line: str) -> str | None:
    """The section a (malformed) line belongs to: the last header above it."""
    try:
        number = int(line)
        with open(path, encoding="utf-8", errors="replace") as f:
            head = [next(f, "") for _ in range(number)]
    except (OSError, ValueError):
        return None
    for text in reversed(head[:-1]):
        stripped = text.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            return stripped[1:-1].strip()
    return None


def _reject_unknown(files: Sequence[str]) -> None:
    """Our own group is ours: a typo there would silently change nothing, so refuse it."""
    known = {opt.dest for opt in NOVAKEEPER_OPTS}
    for path in files:
        sections = _parse_sections(path)
        for option in (o for s in sections if _same_group(s, "novakeeper") for o in sections[s]):
            if option not in known:
                raise NovakeeperError(
                    ExitCode.CONFIG,
                    f"{path}: [novakeeper] {option}: unknown option "
                    f"(known: {', '.join(sorted(known))})",
                )
