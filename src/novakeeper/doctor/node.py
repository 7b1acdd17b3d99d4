"""Node checks: the file systems under the instances path and the cache, owners and modes,
leftovers (stale locks, old .part files), the console ports through the host firewall, and
the locale the services run with. Read only: every fix is printed, never carried out."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import stat
from collections.abc import Iterator, Sequence

from novakeeper.cache.budget import FsUsage
from novakeeper.doctor import firewall
from novakeeper.doctor.facts import Facts, Unavailable
from novakeeper.doctor.model import Check, Finding
from novakeeper.settings import Settings
from novakeeper.units import human_bytes

DAY = 24 * 3600.0
FREE_WARN_PERCENT = 10.0
FREE_FAIL_PERCENT = 5.0
INODES_WARN_PERCENT = 10.0
INODES_FAIL_PERCENT = 2.0
SHOWN = 5
"""Paths named in one finding; the rest are counted."""
VNC_FIRST_PORT = 5900
CONSOLE_PORTS_CHECKED = 100
"""Ports checked through the firewall from libvirt's first display port: one per guest
console on this host."""
SERVICE = re.compile(r"(nova|glance|neutron|cinder|placement|keystone)-[a-z-]+")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _some(paths: Sequence[str]) -> str:
    shown = " ".join(shlex.quote(p) for p in paths[:SHOWN])
    return shown + (f" (and {len(paths) - SHOWN} more)" if len(paths) > SHOWN else "")


def check_paths(facts: Facts) -> Iterator[Finding]:
    settings = facts.settings()
    ipath, cache = settings.instances_path, settings.cache_path
    if not os.path.isdir(ipath):
        what = "is not a folder" if os.path.exists(ipath) else "does not exist"
        yield PATHS.fail(f"instances_path {ipath} {what}",
                         f"[DEFAULT] instances_path = <the folder nova uses>, or `install -d "
                         f"-o nova -g nova {shlex.quote(ipath)}`", path=ipath)
        return
    if not os.path.isdir(cache):
        yield PATHS.ok(f"{ipath} is there; no cache folder {cache} yet (nova makes it at the "
                       "first boot from an image)", path=ipath)
        return
    yield PATHS.ok(f"{ipath} and its cache {cache} are there", path=ipath, cache=cache)


def check_space(facts: Facts) -> Iterator[Finding]:
    settings = facts.settings()
    budget = settings.policy.budget
    seen: set[int] = set()
    for path in (settings.cache_path, settings.instances_path):
        if not os.path.isdir(path) or os.stat(path).st_dev in seen:
            continue
        seen.add(os.stat(path).st_dev)
        sp = FsUsage.of(path)
        data = {"path": path, "size": sp.size, "avail": sp.avail, "inodes": sp.inodes,
                "inodes_free": sp.inodes_free}
        words = (f"{path}: {human_bytes(sp.avail)} free of {human_bytes(sp.size)} "
                 f"({sp.free_percent:.1f}%)")
        need = budget.min_free_space
        if budget.min_free_percent is not None:
            need = int(sp.size * budget.min_free_percent / 100)
        fix = ("free space: `novakeeper cache plan` shows what the cache can give back, "
               f"`du -xsh {shlex.quote(path)}/*` what else is there")
        if need is not None and sp.avail < need:
            yield SPACE.fail(f"{words}: under [novakeeper] min_free_space "
                             f"({human_bytes(need)})", fix, **data, need=need)
        elif budget.high_watermark is not None and (
                100 - sp.free_percent) > budget.high_watermark:
            yield SPACE.warn(f"{words}: above [novakeeper] high_watermark "
                             f"{budget.high_watermark:g}% used", fix, **data)
        elif need is None and sp.free_percent < FREE_FAIL_PERCENT:
            yield SPACE.fail(f"{words}: under {FREE_FAIL_PERCENT:g}% free", fix, **data)
        elif need is None and sp.free_percent < FREE_WARN_PERCENT:
            yield SPACE.warn(f"{words}: under {FREE_WARN_PERCENT:g}% free", fix, **data)
        elif sp.inodes and sp.inodes_free_percent < INODES_FAIL_PERCENT:
            yield SPACE.fail(f"{path}: {sp.inodes_free} inodes free of {sp.inodes} "
                             f"({sp.inodes_free_percent:.1f}%)",
                             f"find {shlex.quote(path)} -xdev -type f | cut -d/ -f1-5 | "
                             "sort | uniq -c | sort -n | tail  (where the files are)", **data)
        elif sp.inodes and sp.inodes_free_percent < INODES_WARN_PERCENT:
            yield SPACE.warn(f"{path}: {sp.inodes_free} inodes free of {sp.inodes} "
                             f"({sp.inodes_free_percent:.1f}%)",
                             f"find {shlex.quote(path)} -xdev -type f | cut -d/ -f1-5 | "
                             "sort | uniq -c | sort -n | tail  (where the files are)", **data)
        else:
            yield SPACE.ok(f"{words}, {sp.inodes_free_percent:.0f}% of inodes free", **data)
    if not seen:
        yield SPACE.skip(f"no instances path at {settings.instances_path}")


def check_cache_on_root(facts: Facts) -> Iterator[Finding]:
    settings = facts.settings()
    path = settings.cache_path if os.path.isdir(settings.cache_path) else (
        settings.instances_path)
    if not os.path.isdir(path):
        yield ON_ROOT.skip(f"no instances path at {settings.instances_path}")
        return
    if os.stat(path).st_dev == os.stat(facts.root).st_dev:
        yield ON_ROOT.warn(
            f"{path} is on the root file system ({facts.root}): a cache that fills it stops "
            "logging, package updates and the services themselves",
            f"give {settings.instances_path} its own file system (a logical volume or "
            "disk mounted there), or set [novakeeper] min_free_space so the cache leaves "
            "room", path=path)
        return
    yield ON_ROOT.ok(f"{path} is not on the root file system", path=path)


def _writable_by(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IWUSR and st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IWGRP and st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IWOTH and st.st_mode & stat.S_IXOTH)


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"


def _state_folder(settings: Settings) -> Finding | None:
    """A FAIL when novakeeper (this user) cannot write its state folder, or make it."""
    state_dir = os.path.dirname(settings.state_path)
    existing = state_dir
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if os.access(existing, os.W_OK | os.X_OK):
        return None
    try:
        me = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        me = str(os.getuid())
    return PERMISSIONS.fail(
        f"novakeeper's state folder {state_dir}: this user ({me}) cannot write in "
        f"{existing}; clean cannot keep its journal",
        f"install -d -m 0750 {shlex.quote(state_dir)}  (as the user novakeeper runs as)",
        path=state_dir)


def check_permissions(facts: Facts) -> Iterator[Finding]:
    settings = facts.settings()
    state = _state_folder(settings)
    if state is not None:
        yield state
    try:
        user = pwd.getpwnam(facts.nova_user)
    except KeyError:
        yield PERMISSIONS.skip(f"no user {facts.nova_user!r} on this host (give nova's "
                               "user with --nova-user)")
        return
    gids = set(os.getgrouplist(user.pw_name, user.pw_gid))
    name = user.pw_name
    try:
        group = grp.getgrgid(user.pw_gid).gr_name
    except KeyError:
        group = str(user.pw_gid)
    found = state is not None
    lock_dir = os.path.join(settings.instances_path, "locks")
    for label, path in (("instances_path", settings.instances_path),
                        ("the cache", settings.cache_path), ("nova's lock folder", lock_dir)):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            yield PERMISSIONS.skip(f"cannot stat {path}: {exc.strerror}")
            continue
        mode = stat.S_IMODE(st.st_mode)
        where = f"{label} {path} ({_owner(st)}, mode {mode:04o})"
        if not _writable_by(st, user.pw_uid, gids):
            found = True
            yield PERMISSIONS.fail(
                f"{where}: {name} cannot create files in it; nova fails to download "
                "bases or make instance disks",
                f"chown {name}:{group} {shlex.quote(path)} && chmod 0755 {shlex.quote(path)}",
                path=path, mode=f"{mode:04o}", owner=_owner(st))
        elif mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            found = True
            yield PERMISSIONS.warn(
                f"{where}: anyone on the host can write in it (and replace a base every "
                "guest boots from)", f"chmod o-w {shlex.quote(path)}",
                path=path, mode=f"{mode:04o}", owner=_owner(st))
    if not found:
        yield PERMISSIONS.ok(f"{name} can write in {settings.instances_path}, its cache and "
                             f"locks; novakeeper can write "
                             f"{os.path.dirname(settings.state_path)}")


def check_stale_locks(facts: Facts) -> Iterator[Finding]:
    from novakeeper.cache.locks import nova_lock_dir, orphaned_locks

    settings = facts.settings()
    lock_dir = nova_lock_dir(settings.instances_path)
    if not os.path.isdir(lock_dir):
        yield STALE_LOCKS.ok(f"no lock folder {lock_dir}")
        return
    try:
        names = set(os.listdir(settings.cache_path))
    except FileNotFoundError:
        names = set()
    except OSError as exc:
        raise Unavailable(f"cannot list {settings.cache_path}: {exc.strerror}") from None
    stale = orphaned_locks(lock_dir, names, facts.now, DAY)
    if not stale:
        yield STALE_LOCKS.ok(f"no lock file in {lock_dir} outlives its base by a day")
        return
    paths = [s.path for s in stale]
    yield STALE_LOCKS.warn(
        f"{_n(len(stale), 'lock file')} in {lock_dir} name bases no longer in the cache, untouched "
        f"for over a day: {_some([s.name for s in stale])}",
        f"rm -f -- {_some(paths)}  (nothing holds a lock for a file that is gone)",
        paths=paths)


def check_partial_files(facts: Facts) -> Iterator[Finding]:
    settings = facts.settings()
    try:
        entries = list(os.scandir(settings.cache_path))
    except FileNotFoundError:
        yield PARTIAL.ok(f"no cache folder {settings.cache_path}")
        return
    except OSError as exc:
        raise Unavailable(f"cannot list {settings.cache_path}: {exc.strerror}") from None
    old: list[tuple[str, int]] = []
    for entry in entries:
        if not entry.name.endswith((".part", ".converted")):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and facts.now - st.st_mtime > DAY:
            old.append((entry.path, st.st_blocks * 512))
    if not old:
        yield PARTIAL.ok("no .part or .converted file older than a day")
        return
    old.sort()
    size = sum(b for _, b in old)
    yield PARTIAL.warn(
        f"{_n(len(old), 'unfinished download')} older than a day in {settings.cache_path} "
        f"({human_bytes(size)}): {_some([os.path.basename(p) for p, _ in old])}",
        "novakeeper cache clean  (removes .part/.converted files untouched for [novakeeper] "
        f"stale_partial_seconds), or rm -f -- {_some([p for p, _ in old])}",
        paths=[p for p, _ in old], bytes=size)


def check_console_ports(facts: Facts) -> Iterator[Finding]:
    conf = facts.conf()
    consoles = [name for name, group in (("VNC", "vnc"), ("SPICE", "spice"))
                if conf.get(group, "enabled")]
    if not consoles:
        yield CONSOLE.ok("no VNC or SPICE console enabled in nova.conf")
        return
    rules = firewall.read(facts.firewall_commands)
    low, high = display_ports(facts.qemu_conf)
    ports = range(low, min(high, low + CONSOLE_PORTS_CHECKED - 1) + 1)
    verdicts = {p: rules.verdict(p) for p in ports}
    blocked = [p for p, v in verdicts.items() if not v.open]
    what = " and ".join(consoles)
    if blocked:
        stop = verdicts[blocked[0]]
        span = (f"{blocked[0]}" if len(blocked) == 1 else
                f"{len(blocked)} of ports {ports.start}-{ports.stop - 1}, from {blocked[0]}")
        yield CONSOLE.fail(
            f"{what} consoles: {rules.source} blocks tcp {span} ({stop.why}); the console "
            "proxy cannot reach the guests (noVNC: 'Failed to connect to server')",
            f"{rules.accept_command(ports.start, ports.stop - 1)}  (better: only from the "
            "console proxy hosts, with -s)", blocked=blocked, source=rules.source)
        return
    yield CONSOLE.ok(f"{what} consoles: {rules.source} lets tcp {ports.start}-"
                     f"{ports.stop - 1} in ({verdicts[ports.start].why})",
                     source=rules.source)


_QEMU_PORT = re.compile(r"^\s*remote_display_port_(min|max)\s*=\s*(\d+)\s*$", re.M)


def display_ports(qemu_conf: str) -> tuple[int, int]:
    """libvirt's VNC/SPICE port range (remote_display_port_min/max in qemu.conf;
    5900-65535 when unset or unreadable)."""
    found = {"min": VNC_FIRST_PORT, "max": 65535}
    try:
        with open(qemu_conf, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return found["min"], found["max"]
    for key, value in _QEMU_PORT.findall(text):
        found[key] = int(value)
    return found["min"], max(found["min"], found["max"])


def _locale_problem(env: dict[str, str]) -> str | None:
    """Why text in this environment cannot hold non-ASCII names, or None."""
    for var in ("LC_ALL", "LC_CTYPE", "LANG"):
        value = env.get(var)
        if value:
            break
    else:
        return "no LC_ALL, LC_CTYPE or LANG: the C locale, ASCII only"
    if value in ("C", "POSIX"):
        return f"{var}={value}: ASCII only"
    codeset = value.partition(".")[2].partition("@")[0].lower().replace("-", "")
    if codeset != "utf8":
        return f"{var}={value}: not a UTF-8 locale"
    return None


def _services(proc: str = "/proc") -> Iterator[tuple[int, str, dict[str, str] | None]]:
    """OpenStack service processes: (pid, name, environment or None if unreadable)."""
    try:
        pids = [int(p) for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return
    for pid in sorted(pids):
        try:
            with open(f"{proc}/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        names = [os.path.basename(a.decode(errors="replace")) for a in argv[:2] if a]
        name = next((n for n in names if SERVICE.fullmatch(n)), None)
        if name is None:
            continue
        try:
            with open(f"{proc}/{pid}/environ", "rb") as f:
                raw = f.read().split(b"\0")
        except OSError:
            yield pid, name, None
            continue
        env = dict(kv.decode(errors="replace").partition("=")[::2] for kv in raw if b"=" in kv)
        yield pid, name, env


def check_locale(facts: Facts) -> Iterator[Finding]:
    fix = ("run with a UTF-8 locale: `Environment=LANG=C.UTF-8` in a systemd drop-in "
           "(`systemctl edit SERVICE`), and no `LC_ALL=C` in the files it sources")
    found = False
    own = _locale_problem(facts.environ)
    if own:
        found = True
        yield LOCALE.warn(f"this shell: {own}; tools run from it (qemu-img, novakeeper, "
                          "openstack) fail on images with non-ASCII names",
                          "export LANG=C.UTF-8  (and unset LC_ALL, or set it the same)",
                          who="doctor")
    unreadable = []
    for pid, name, env in _services():
        if env is None:
            unreadable.append(f"{name}[{pid}]")
            continue
        why = _locale_problem(env)
        if why:
            found = True
            yield LOCALE.warn(f"{name} (pid {pid}): {why}; it fails on non-ASCII image, "
                              "instance or user names ('ascii' codec can't encode)", fix,
                              who=name, pid=pid)
    if unreadable:
        yield LOCALE.skip(f"cannot read the environment of {', '.join(unreadable)} (run "
                          "doctor as root)")
    elif not found:
        yield LOCALE.ok("this shell and the OpenStack services running here use UTF-8")



PATHS = Check("node.paths", "instances path", "that [DEFAULT] instances_path is a folder "
              "(and whether its cache exists yet)", "the option or the `install -d` to run",
              check_paths)
SPACE = Check("node.space", "free space and inodes", "statvfs of the file systems under "
              "the instances path and the cache: free bytes against [novakeeper] "
              "min_free_space / high_watermark (else 10% WARN, 5% FAIL), free inodes (10% "
              "WARN, 2% FAIL)", "what to look at to free space", check_space)
ON_ROOT = Check("node.cache-on-root", "cache on /", "whether the cache (or instances "
                "path) is on the root file system", "its own file system, or min_free_space",
                check_cache_on_root)
PERMISSIONS = Check("node.permissions", "owners and modes", "that nova's user (--nova-user, "
                    "default nova) can write the instances path, _base and locks/, that they "
                    "are not world-writable, and that novakeeper can write its state folder",
                    "the chown/chmod to run", check_permissions)
STALE_LOCKS = Check("node.stale-locks", "stale lock files", "nova-<base> lock files in "
                    "locks/ whose base is gone, untouched for a day", "the rm to run",
                    check_stale_locks)
PARTIAL = Check("node.partial-files", "old .part files", ".part/.converted downloads in the "
                "cache untouched for a day", "`novakeeper cache clean` (or the rm)",
                check_partial_files)
CONSOLE = Check("node.console-ports", "console ports", "with [vnc] or [spice] enabled: "
                "whether the host firewall (iptables-save, else nft -j list ruleset, when "
                "readable) lets in the first 100 of libvirt's display ports (qemu.conf "
                "remote_display_port_min, 5900)", "the iptables/nft rule to add",
                check_console_ports)
LOCALE = Check("node.locale", "locale", "LC_ALL/LC_CTYPE/LANG of this shell and of the "
               "running nova/glance/neutron/cinder/placement services (/proc/PID/environ): "
               "a C or non-UTF-8 locale breaks on non-ASCII names", "a UTF-8 locale "
               "(systemd drop-in)", check_locale)

CHECKS: tuple[Check, ...] = (PATHS, SPACE, ON_ROOT, PERMISSIONS, STALE_LOCKS, PARTIAL, CONSOLE,
                             LOCALE)
