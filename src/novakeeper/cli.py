"""Commands and options only; the work is done in the pipeline modules.

The pipeline modules are imported by the commands that use them, not here: every command
pays for what this module imports at its start, and `trace` and `diagnose`, which are timed
against grep, need neither oslo.config nor the cache pipeline (about 0.15 s of imports).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import click

from novakeeper import __version__, logsetup
from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.output import console, json_out
from novakeeper.units import human_bytes, parse_duration

if TYPE_CHECKING:
    from rich.console import Console

    from novakeeper import settings
    from novakeeper.cache.executor import Report
    from novakeeper.passes import Pass
    from novakeeper.state.db import StateDB

ORPHAN_AGE = 24 * 3600.0
"""A lock file without its base is reported once it is a day old (none is in use then)."""


@dataclass
class Context:
    config_files: tuple[str, ...] | None = None
    instances_path: str | None = None
    verbose: int = 0
    log_format: str = "text"

    def settings(self) -> settings.Settings:
        from novakeeper import settings as settings_mod

        return settings_mod.load(self.config_files, self.instances_path)

    def log(self, floor: int = logging.WARNING) -> None:
        level = {0: floor, 1: logging.INFO}.get(self.verbose, logging.DEBUG)
        logsetup.setup(min(level, floor), self.log_format)


def _remember(field: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """Store a global option in the shared Context, wherever on the line it was given."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value in (None, (), 0):
            return value
        obj = ctx.ensure_object(Context)
        if field == "config_files":
            obj.config_files = (obj.config_files or ()) + tuple(value)
        elif field == "verbose":
            obj.verbose += value
        else:
            setattr(obj, field, value)
        obj.log()
        return value

    return callback


def global_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The global options, accepted before the command (`novakeeper --instances-path X
    cache plan`) and after it (`novakeeper cache plan --instances-path X`)."""
    options = [
        click.option("--config-file", multiple=True, metavar="PATH", expose_value=False,
                     callback=_remember("config_files"),
                     help="nova.conf-style file; repeatable, later files win. Default: "
                          "/etc/nova/nova.conf then /etc/novakeeper/novakeeper.conf, "
                          "those present."),
        click.option("--instances-path", metavar="PATH", expose_value=False,
                     callback=_remember("instances_path"),
                     help="Override [DEFAULT] instances_path."),
        click.option("-v", "--verbose", count=True, expose_value=False,
                     callback=_remember("verbose"), help="-v: INFO log lines, -vv: DEBUG."),
        click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
                     expose_value=False, callback=_remember("log_format"),
                     help="text (default): nova's line format; json: one object a line."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@global_options
@click.version_option(__version__, prog_name="novakeeper")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Keep a nova compute node's image cache ($instances_path/_base) small and safe."""
    ctx.ensure_object(Context).log()


@cli.group()
def cache() -> None:
    """Inspect and clean the image cache."""


IGNORE_UNREADABLE = click.option(
    "--ignore-unreadable", is_flag=True,
    help="Let unreadable, corrupt or broken disks hold nothing (they stay listed). The "
         "bases they use may then be removed: only if you know those disks are dead.")


def plan_pass(*args: Any, **kwargs: Any) -> Pass:
    """`passes.plan_pass`, imported when a command needs it; a name of this module,
    which the tests replace to make a command fail."""
    from novakeeper.passes import plan_pass as run

    return run(*args, **kwargs)


@cache.command()
@global_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(ctx: Context, as_json: bool) -> None:
    """Summary: files by kind and verdict, bytes, budget and headroom, disks, problems."""
    from novakeeper.cache import render
    from novakeeper.cache.locks import nova_lock_dir, orphaned_locks
    from novakeeper.cache.storage import read_registry

    conf = ctx.settings()
    with plan_pass(conf) as result:
        now = result.plan.now
        orphans = orphaned_locks(nova_lock_dir(conf.instances_path),
                                 {b.name for b in result.inventory.bases}, now, ORPHAN_AGE)
        data = render.status_data(result.inventory, result.plan,
                                  read_registry(conf.instances_path, now), orphans)
    if as_json:
        json_out(data)
    else:
        render.status_text(data, console())


def _show_plan(result: Pass, as_json: bool) -> None:
    from novakeeper.cache import render

    if as_json:
        json_out(result.plan.to_dict())
    else:
        render.plan_table(result.plan, console())
    render.log_plan(result.plan)


@cache.command()
@global_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--cross-check", is_flag=True,
              help="Also run qemu-img info --backing-chain on every disk and report "
                   "disagreements (slow: one subprocess per disk).")
@IGNORE_UNREADABLE
@click.pass_obj
def plan(ctx: Context, as_json: bool, cross_check: bool, ignore_unreadable: bool) -> None:
    """The dry run: what clean would do to each file, and why."""
    with plan_pass(ctx.settings(), check=cross_check,
                   accept_unreadable=ignore_unreadable) as result:
        _show_plan(result, as_json)
    if result.disagreements:
        raise NovakeeperError(ExitCode.CROSS_CHECK,
                              f"qemu-img disagrees with novakeeper on {result.disagreements} "
                              "disks; their bases are held")


def _report_text(report: Report, out: Console) -> None:
    for o in report.skipped:
        out.print(f"skipped {o.path}: {o.reason}", markup=False)
    for o in report.failed:
        out.print(f"FAILED  {o.path}: {o.reason}", markup=False)
    trash = ""
    if report.trashed or report.purged:
        trash = (f"moved {len(report.trashed)} to the trash (freed when their grace period "
                 f"ends), purged {len(report.purged)} from it; ")
    out.print(
        f"removed {len(report.removed)} files, {trash}freed {human_bytes(report.freed)}; "
        f"skipped {len(report.skipped)}, failed {len(report.failed)}; "
        f"marked {report.touched} in-use bases", highlight=False)


def _report_json(result: Pass, report: Report) -> dict[str, Any]:
    return {
        "plan": result.plan.to_dict(),
        "result": {
            "removed": len(report.removed),
            "trashed": len(report.trashed),
            "purged": len(report.purged),
            "freed": report.freed,
            "skipped": len(report.skipped),
            "failed": len(report.failed),
            "touched": report.touched,
            "outcomes": [
                {"name": o.name, "path": o.path, "action": str(o.action), "reason": o.reason,
                 "freed": o.freed}
                for o in report.outcomes
            ],
        },
    }


@cache.command()
@global_options
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Only show the plan (the same as `cache plan`).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--cross-check", is_flag=True, help="As for `cache plan`.")
@IGNORE_UNREADABLE
@click.pass_obj
def clean(ctx: Context, yes: bool, dry_run: bool, as_json: bool, cross_check: bool,
          ignore_unreadable: bool) -> None:
    """Carry out exactly what `plan` shows: remove the removable files."""
    if dry_run:
        click.get_current_context().invoke(plan, as_json=as_json, cross_check=cross_check,
                                           ignore_unreadable=ignore_unreadable)
        return
    from novakeeper.cache.locks import run_lock

    ctx.log(floor=logging.INFO)
    conf = ctx.settings()
    with run_lock(conf.instances_path, conf.cache_path), plan_pass(
            conf, check=cross_check, write_state=True,
            accept_unreadable=ignore_unreadable) as result:
        _clean(result, conf, yes, as_json)


def _clean(result: Pass, conf: settings.Settings, yes: bool, as_json: bool) -> None:
    from novakeeper.cache import render
    from novakeeper.cache.plan import Verdict
    from novakeeper.passes import executor_for

    if as_json:
        render.log_plan(result.plan)  # the plan goes out once, with the result, below
    else:
        _show_plan(result, as_json)
    removals = result.plan.removals
    if removals and not yes and sys.stdin.isatty():
        question = (f"Remove {len(removals)} files, freeing "
                    f"{human_bytes(result.plan.frees)}?")
        if not click.confirm(question, default=False, err=True):
            raise NovakeeperError(ExitCode.ABORTED, "nothing removed: not confirmed")
    report = executor_for(result, conf).run()
    if as_json:
        json_out(_report_json(result, report))
    else:
        _report_text(report, console())
    if report.failed:
        raise NovakeeperError(ExitCode.FAILED_REMOVALS,
                              f"{len(report.failed)} files could not be removed")
    held = sum(1 for d in result.plan.decisions if d.verdict is Verdict.HELD)
    if result.disagreements:
        raise NovakeeperError(ExitCode.CROSS_CHECK,
                              f"qemu-img disagrees on {result.disagreements} disks")
    if result.plan.shortfall:
        assert result.plan.budget is not None
        raise NovakeeperError(ExitCode.SHORTFALL, "cannot meet the cache budget: "
                              + result.plan.budget.shortfall_words())
    # with --ignore-unreadable a broken disk still shows, but holds nothing: no failure
    faults = [p for p in result.plan.problems
              if not p.transient and (p.holds_kinds or p.holds_names)]
    if faults:
        raise NovakeeperError(
            ExitCode.PROBLEMS,
            f"{len(faults)} problems met while scanning; {held} files held "
            "until they are fixed (see `novakeeper cache plan`)")


def _state(ctx: Context, write: bool) -> tuple[settings.Settings, StateDB]:
    from novakeeper.state.db import open_state

    conf = ctx.settings()
    return conf, open_state(conf.state_path, write=write)


@cache.command()
@global_options
@click.argument("image_id")
@click.option("--note", default="", help="Why it is pinned (shown by `cache pins`).")
@click.option("--file", "is_pattern", is_flag=True,
              help="IMAGE_ID is a glob pattern of cache file names instead.")
@click.pass_obj
def pin(ctx: Context, image_id: str, note: str, is_pattern: bool) -> None:
    """Never remove an image's cached bases (or files matching a pattern)."""
    from novakeeper.state import pins

    why = pins.check_pattern(image_id) if is_pattern else pins.check_image_id(image_id)
    if why:
        raise NovakeeperError(ExitCode.USAGE, why)
    kind = "file" if is_pattern else "image"
    _, db = _state(ctx, write=True)
    with closing(db):
        added = pins.add(db, kind, image_id.strip(), note, time.time())
    what = (f"pattern {image_id!r}" if is_pattern
            else f"image {image_id} (cache name {pins.hash_for(image_id)})")
    click.echo(f"pinned {what}" if added else f"{what} was already pinned")


@cache.command()
@global_options
@click.argument("image_id")
@click.option("--file", "is_pattern", is_flag=True, help="IMAGE_ID is a file pattern.")
@click.pass_obj
def unpin(ctx: Context, image_id: str, is_pattern: bool) -> None:
    """Remove a pin made with `cache pin` (pins in nova.conf stay until edited there)."""
    from novakeeper.state import pins

    kind = "file" if is_pattern else "image"
    conf, db = _state(ctx, write=True)
    with closing(db):
        removed = pins.remove(db, kind, image_id.strip())
    if removed:
        click.echo(f"unpinned {image_id}")
        return
    in_config = any(p.kind == kind and (p.value == image_id or p.hash == pins.hash_for(
        image_id)) for p in conf.pins)
    where = " (it is pinned in the configuration: edit [novakeeper] there)" if in_config else ""
    raise NovakeeperError(ExitCode.USAGE, f"{image_id} is not pinned with `cache pin`{where}")


@cache.command("pins")
@global_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_pins(ctx: Context, as_json: bool) -> None:
    """Every pin, from the configuration and from `cache pin`, with the files it keeps."""
    from novakeeper.cache import render
    from novakeeper.state import pins

    conf, db = _state(ctx, write=False)
    with closing(db):
        all_pins = list(conf.pins) + pins.load(db)
    try:
        names = sorted(os.listdir(conf.cache_path))
    except OSError:
        names = []
    rows = [{**p.to_dict(), "files": pins.Pins((p,)).keeps(names)} for p in all_pins]
    if as_json:
        json_out({"pins": rows})
    else:
        render.pins_table(rows, console())


@cache.command()
@global_options
@click.option("--since", metavar="AGE", default=None,
              help="Only entries newer than this (7d, 12h, 30m).")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most N entries.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def history(ctx: Context, since: str | None, limit: int | None, as_json: bool) -> None:
    """The removal journal: what was removed, when, why, and what it freed."""
    from novakeeper.cache import render
    from novakeeper.state import journal as journal_mod

    start = None
    if since is not None:
        try:
            start = time.time() - parse_duration(since)
        except ValueError as exc:
            raise NovakeeperError(ExitCode.USAGE, f"--since: {exc}") from None
    _, db = _state(ctx, write=False)
    with closing(db):
        entries = journal_mod.history(db, start, limit)
    if as_json:
        json_out({"entries": [e.to_dict() for e in entries]})
        return
    render.history_table(entries, console())


@cache.command()
@global_options
@click.option("--metrics-file", metavar="PATH",
              help="Write Prometheus metrics here after every pass (node_exporter textfile "
                   "collector format, replaced atomically).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), metavar="PORT",
              help="Serve Prometheus metrics on http://ADDRESS:PORT/metrics.")
@click.option("--metrics-address", default="127.0.0.1", show_default=True,
              help="Address for --metrics-port.")
@click.pass_obj
def serve(ctx: Context, metrics_file: str | None, metrics_port: int | None,
          metrics_address: str) -> None:
    """Run a pass every [image_cache] manager_interval seconds until stopped (systemd:
    Type=notify). Removes files only with [novakeeper] service_mode = clean."""
    from novakeeper.service.loop import Outputs, Service

    ctx.log(floor=logging.INFO)
    service = Service(ctx.settings, Outputs(metrics_file, metrics_port, metrics_address))
    code = service.run()
    if code:
        raise NovakeeperError(ExitCode(code), "service stopped with an error")


@cache.command()
@global_options
@click.argument("name")
@click.pass_obj
def restore(ctx: Context, name: str) -> None:
    """Put a removed base back from the trash (trash_grace_seconds > 0)."""
    from novakeeper.cache import undo
    from novakeeper.cache.locks import NovaLocks, nova_lock_dir, run_lock
    from novakeeper.state import journal as journal_mod

    conf = ctx.settings()
    name = os.path.basename(name.rstrip("/"))  # a path into the cache or trash is fine
    with run_lock(conf.instances_path, conf.cache_path):
        _, db = _state(ctx, write=True)
        with closing(db):
            entry = undo.restore_one(conf.cache_path, name,
                                          NovaLocks(nova_lock_dir(conf.instances_path),
                                                    conf.lock_wait_seconds))
            journal_mod.Journal(db, {"command": "restore"}).record_restore(entry, time.time())
    click.echo(f"restored {os.path.join(conf.cache_path, name)} "
               f"({human_bytes(entry.allocated)}, trashed "
               f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(entry.trashed_at))}); "
               "unless a disk uses it or it is pinned (`cache pin`), the next clean "
               "removes it again")


@cache.command("verify")
@global_options
@click.argument("files", nargs=-1, metavar="[FILE]...")
@click.option("--algorithm", type=click.Choice(["sha256", "sha512", "md5"]), default=None,
              help="Default: [novakeeper] verify_algorithm (sha256).")
@click.option("--rate-limit", type=click.FloatRange(min=0), default=None, metavar="MB/s",
              help="Read at most this many MiB/s (0: unlimited). Default: [novakeeper] "
                   "verify_rate_limit.")
@click.option("--force", is_flag=True, help="Re-read files unchanged since their last check.")
@click.option("--image-id", "image_ids", multiple=True, metavar="ID",
              help="A Glance image id whose base to compare with Glance; repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def verify(ctx: Context, files: tuple[str, ...], algorithm: str | None,
           rate_limit: float | None, force: bool, image_ids: tuple[str, ...],
           as_json: bool) -> None:
    """Checksum base files; quarantine corrupt unused ones, report corrupt in-use ones."""
    from novakeeper.integrity import command

    report = command.run(ctx.settings(), files, algorithm, rate_limit, force, image_ids)
    if as_json:
        json_out(report.to_dict())
    else:
        command.text(report, console())
    command.raise_for(report)


@cli.group()
def disk() -> None:
    """What the node's disk holds, what nova reports, and how far it can grow."""


@disk.command("report")
@global_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--html", "html_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="Also write a self-contained HTML page (no external assets).")
@click.option("--sort", type=click.Choice(["over-commit", "allocated", "virtual"]),
              default="over-commit", show_default=True, help="Order of the instance rows.")
@click.option("--top", type=click.IntRange(1), default=None, metavar="N",
              help="Show only the first N instances (the totals count them all).")
@click.option("--flavor-disk", "flavor_gb", type=click.IntRange(1), default=None,
              metavar="GB", help="How many more instances with a root disk of GB GiB fit.")
@click.option("--disk-allocation-ratio", "ratio", type=click.FloatRange(min=0.0),
              default=None, help="Override nova.conf's [DEFAULT] disk_allocation_ratio.")
@click.option("--reserved-host-disk-mb", "reserved_mb", type=click.IntRange(0), default=None,
              help="Override nova.conf's [DEFAULT] reserved_host_disk_mb.")
@click.pass_obj
def disk_report(ctx: Context, as_json: bool, html_file: str | None, sort: str,
                top: int | None, flavor_gb: int | None, ratio: float | None,
                reserved_mb: int | None) -> None:
    """Per instance: disks, virtual and allocated bytes, base, nova's over-commit; node
    totals, disk_available_least, the worst case, the scheduler's view and findings."""
    from novakeeper.disk import render
    from novakeeper.disk.report import disk_report as build

    report = build(ctx.settings(), flavor_gb, ratio, reserved_mb)
    if html_file is not None:
        try:
            with open(html_file, "w", encoding="utf-8") as f:
                f.write(render.to_html(report, sort, top))
        except OSError as exc:
            raise NovakeeperError(ExitCode.PATH,
                                  f"{html_file}: {exc.strerror or exc}") from None
    if as_json:
        from novakeeper.gcpause import cyclic_gc_paused

        with cyclic_gc_paused():  # tens of thousands of small dicts, no cycles
            json_out(report.to_dict(sort, top))
    else:
        render.print_report(report, console(), sort, top)


@cli.command()
@click.option("--path", "root", type=click.Path(file_okay=False), default=None,
              help="Build the sandbox here (default: a new temp folder).")
@click.option("--instances", default=300, show_default=True, type=click.IntRange(10, 100000),
              help="Instances to create.")
@click.option("--keep", is_flag=True, help="Keep the sandbox folder afterwards.")
def demo(root: str | None, instances: int, keep: bool) -> None:
    """Build a throwaway compute node, then plan and clean its cache."""
    from novakeeper import demo as demo_mod

    demo_mod.run(root, instances, keep, console())


from novakeeper.logs.commands import diagnose, trace  # noqa: E402

global_options(trace)  # options added to the command objects in place
global_options(diagnose)
cli.add_command(trace)
cli.add_command(diagnose)

from novakeeper.doctor.commands import doctor  # noqa: E402

global_options(doctor)
cli.add_command(doctor)

from novakeeper.cache.glance_commands import fetch, release  # noqa: E402

global_options(fetch)
global_options(release)
cache.add_command(fetch)
cache.add_command(release)

from novakeeper.fleet.commands import fleet  # noqa: E402

cli.add_command(fleet)


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"novakeeper: error: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    verbose = sum(a.count("v") for a in (argv or sys.argv[1:])
                  if a.startswith("-") and not a.startswith("--") and set(a[1:]) == {"v"})
    try:
        cli.main(args=argv, prog_name="novakeeper", standalone_mode=False)
    except NovakeeperError as exc:
        _fail(exc.code, exc.message)
    except click.exceptions.Abort:
        _fail(ExitCode.ABORTED, "aborted")
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(ExitCode.OK)
    except KeyboardInterrupt:
        _fail(130, "interrupted")
    except Exception as exc:  # a bug: one line, the traceback only when asked for
        if verbose >= 2:
            import traceback

            traceback.print_exc()
        _fail(ExitCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc} "
                                 "(run with -vv for the traceback)")
    sys.exit(ExitCode.OK)
