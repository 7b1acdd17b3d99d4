"""The `trace` and `diagnose` commands. cli.py adds them to the command group and gives
them the global options; output goes through novakeeper.output, as the cache commands'
does, so this module never imports cli.py. The modules that do the work are imported when
a command runs: cli.py imports this module for every command."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import click

from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.logs.sources import LogFile, discover, parse_offset, parse_tz_rule
from novakeeper.logs.window import window as make_window
from novakeeper.output import console, json_out
from novakeeper.units import parse_duration

_UUID = re.compile(r"(?:req-)?[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-"
                   r"[0-9A-Fa-f]{12}")
_LOGS_HELP = ("LOGS: files, folders (searched recursively for *.log* files) or globs; "
              "default: /var/log/{nova,neutron,glance,cinder,placement,keystone}/*.log*, "
              "rotated .1 and .gz files included.")


def _warn(message: str) -> None:
    click.echo(f"novakeeper: warning: {message}", err=True)


def _files(logs: Sequence[str], tz_rules: Sequence[str], default_tz: str) -> list[LogFile]:
    """The readable log files; the others are listed on stderr and skipped."""
    rules = [parse_tz_rule(r) for r in tz_rules]
    disc = discover(logs, rules, parse_offset(default_tz))
    for note in disc.notes:
        _warn(note)
    for s in disc.skipped:
        _warn(f"skipped {s.path}: {s.reason}")
    if disc.files:
        return disc.files
    if disc.skipped:
        denied = all(s.reason == "permission denied" for s in disc.skipped)
        raise NovakeeperError(ExitCode.PERMISSION if denied else ExitCode.PATH,
                              f"none of the {len(disc.skipped)} log files found could be "
                              f"read ({disc.skipped[0].path}: {disc.skipped[0].reason})")
    raise NovakeeperError(ExitCode.PATH,
                          f"no log files found in {' '.join(disc.looked_in)}")


def _problems(files: Sequence[LogFile], problems: dict[int, str]) -> None:
    for index, problem in sorted(problems.items()):
        _warn(f"{files[index].path}: {problem}")


def _time_options(f: Any) -> Any:
    options = [
        click.option("--since", metavar="TIME",
                     help="Only records at or after TIME: '2026-11-20 10:00' (in the --tz "
                          "zone), ISO 8601 with an offset, or a duration ago: 90m, 2h, 7d."),
        click.option("--until", metavar="TIME", help="Only records at or before TIME."),
        click.option("--tz-offset", "tz_rules", multiple=True, metavar="PATTERN=+HH:MM",
                     help="Files whose path, a folder of it or its name match the glob "
                          "PATTERN log naive times in this offset, e.g. "
                          "'compute2/*=+01:00'. Repeatable; the first match wins."),
        click.option("--tz", "default_tz", default="UTC", show_default=True,
                     metavar="OFFSET",
                     help="Offset of naive timestamps in the other files, and of naive "
                          "--since/--until."),
        click.option("--jobs", type=click.IntRange(1, 64), default=None, metavar="N",
                     help="Worker processes for big log sets (default: one per CPU)."),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.command(epilog=_LOGS_HELP)
@click.argument("target", metavar="ID")
@click.argument("logs", nargs=-1, metavar="[LOGS]...")
@click.option("--depth", type=click.IntRange(0, 10), default=2, show_default=True,
              help="Hops of request ids to follow from the records that name ID (0: only "
                   "those records).")
@click.option("--hop-window", default="6h", show_default=True, metavar="DURATION",
              help="Look for the records of the request ids only within this time of the "
                   "records found so far (ID itself is searched everywhere): a request is "
                   "handled within hours, and this reads a small part of big log sets. A "
                   "request logged only further away is missed. 0: whole files.")
@click.option("--silence-minutes", type=click.IntRange(1, 100000), default=10,
              show_default=True,
              help="A component that logged nothing for longer before the failure is "
                   "reported as possibly hung.")
@click.option("--max-records", type=click.IntRange(0), default=2000, show_default=True,
              help="Records shown in the text timeline (0: all); the summary counts all.")
@_time_options
def trace(target: str, logs: tuple[str, ...], depth: int, hop_window: str,
          silence_minutes: int, max_records: int, since: str | None, until: str | None,
          tz_rules: tuple[str, ...], default_tz: str, jobs: int | None,
          as_json: bool) -> None:
    """Follow ID (an instance, volume, image or port uuid, or a req- id; uuids in any case,
    anything else exactly as written) through the services' logs: every record naming it,
    then every record of the request ids on those records, as one timeline; then the
    components involved, the first error, and whether the request never reached the API,
    stopped there (message queue?) or met a silent component (hung?)."""
    from novakeeper.logs import trace as trace_mod

    target = target.strip()
    if _UUID.fullmatch(target):
        target = target.lower()  # OpenStack writes uuids in lower case
    if len(target) < 4 or "\n" in target:
        raise NovakeeperError(ExitCode.USAGE, f"ID {target!r} is too short to trace: give "
                                              "a uuid or a req- id")
    try:
        reach = timedelta(seconds=parse_duration(hop_window))
    except ValueError as exc:
        raise NovakeeperError(ExitCode.USAGE, f"--hop-window: {exc}") from None
    win = make_window(since, until, parse_offset(default_tz))
    files = _files(logs, tz_rules, default_tz)
    result = trace_mod.trace(target, files, depth, win, jobs,
                             timedelta(minutes=silence_minutes), hop_window=reach or None)
    _problems(files, result.problems)
    from novakeeper.logs import render

    if as_json:
        json_out(render.trace_data(result))
    else:
        render.trace_text(result, console(), max_records)


def _cache_path(ctx: click.Context) -> tuple[str | None, str | None]:
    """The image cache folder from nova.conf, or why it is not known; a configuration
    that cannot be loaded only costs the disk figures."""
    obj = ctx.find_root().obj
    settings = getattr(obj, "settings", None)
    if settings is None:
        return None, "no configuration loaded"
    try:
        return str(settings().cache_path), None
    except NovakeeperError as exc:
        return None, f"configuration not loaded: {exc.message}"
    except Exception as exc:  # any failure only loses the figures
        return None, f"configuration not loaded: {exc}"


@click.command(epilog=_LOGS_HELP)
@click.argument("logs", nargs=-1, metavar="[LOGS]...")
@click.option("--signatures", "signature_files", multiple=True, metavar="FILE",
              type=click.Path(dir_okay=False),
              help="A TOML file of your own signatures, same format as the shipped "
                   "signatures.toml: new ids add, shipped ids are replaced, "
                   "`enabled = false` turns one off. Repeatable.")
@click.option("--examples", type=click.IntRange(0, 100), default=3, show_default=True,
              help="Matching records shown per problem.")
@click.option("--list-signatures", is_flag=True,
              help="List the knowledge base (shipped and --signatures) and exit.")
@_time_options
@click.pass_context
def diagnose(ctx: click.Context, logs: tuple[str, ...], signature_files: tuple[str, ...],
             examples: int, list_signatures: bool, since: str | None, until: str | None,
             tz_rules: tuple[str, ...], default_tz: str, jobs: int | None,
             as_json: bool) -> None:
    """Scan the logs for known failures and print, for each one found, the problem, its
    likely cause and the fix, with the matching lines and their counts per file."""
    from novakeeper.logs import diagnose as diagnose_mod
    from novakeeper.logs import render

    sigs = diagnose_mod.load(signature_files)
    if list_signatures:
        if as_json:
            json_out([s.to_dict() for s in sigs])
        else:
            render.signatures_text(sigs, console())
        return
    win = make_window(since, until, parse_offset(default_tz))
    files = _files(logs, tz_rules, default_tz)
    result = diagnose_mod.diagnose(files, sigs, win, jobs, examples)
    _problems(files, result.problems)
    if any(h.signature.show == "cache-disk" for h in result.hits):
        path, why = _cache_path(ctx)
        result.disk = diagnose_mod.disk_facts(path, why)
    if as_json:
        json_out(render.diagnose_data(result))
    else:
        render.diagnose_text(result, console())
