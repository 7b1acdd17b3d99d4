"""The `doctor` command. cli.py adds it to the group and gives it the global options
(--config-file, --instances-path, -v); the checks are imported when it runs."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from novakeeper.doctor.model import Check, Finding, Status, exit_code, worst
from novakeeper.errors import ExitCode
from novakeeper.output import json_out

_EPILOG = (
    "Exit code: 0 when every check is OK or SKIP, 20 when the worst is a WARN, 21 when "
    "a check FAILs (2: bad options). Nothing is changed: every fix is printed, for you to "
    "run. Cloud checks need admin credentials (--cloud, OS_CLOUD or OS_*); without them "
    "they are SKIP.")

_COLOURS = {Status.OK: "green", Status.SKIP: "blue", Status.WARN: "yellow",
            Status.FAIL: "red"}


def _list(checks: Sequence[Check]) -> None:
    width = max(len(c.id) for c in checks)
    for c in checks:
        click.echo(f"{c.id:<{width}}  {c.looks_at}; suggests {c.suggests}")


def _text(findings: Sequence[Finding], checks: Sequence[Check]) -> None:
    tty = sys.stdout.isatty()
    width = max((len(f.check) for f in findings), default=0)
    for f in findings:
        status = f"{f.status.name:<4}"
        if tty:
            status = click.style(status, fg=_COLOURS[f.status], bold=f.status >= Status.WARN)
        click.echo(f"{status}  {f.check:<{width}}  {f.finding}")
        if f.fix and f.status >= Status.WARN:
            click.echo(f"{'':4}  {'':<{width}}  fix: {f.fix}")
    counts = {s: sum(1 for f in findings if f.status is s) for s in Status}
    click.echo(f"doctor: {len(checks)} checks, {len(findings)} findings: "
               + ", ".join(f"{counts[s]} {s.name}" for s in Status)
               + f"; exit {exit_code(findings)}")


@click.command(epilog=_EPILOG)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--list", "list_only", is_flag=True,
              help="List the checks, one line each, and run none.")
@click.option("--only", multiple=True, metavar="ID",
              help="Run only these checks: ids, areas (conf, node, cloud) or globs "
                   "(conf.cache-*); repeatable or comma-separated.")
@click.option("--skip", multiple=True, metavar="ID", help="Leave these checks out (as --only).")
@click.option("--cloud", metavar="NAME",
              help="clouds.yaml cloud for the catalog checks (default: OS_CLOUD, then "
                   "[novakeeper] nova_api_cloud, then OS_* variables).")
@click.option("--probe", is_flag=True, help="Also reach every endpoint URL of the catalog.")
@click.option("--timeout", type=click.FloatRange(0.1, 120), default=5.0, show_default=True,
              metavar="SECONDS", help="Per request, for Keystone and --probe.")
@click.option("--nova-user", default="nova", show_default=True, metavar="USER",
              help="The user nova-compute runs as (owners and modes).")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool, list_only: bool, only: tuple[str, ...],
           skip: tuple[str, ...], cloud: str | None, probe: bool, timeout: float,
           nova_user: str) -> None:
    """Check nova.conf, this node and the cloud's service catalog for known mistakes, each
    OK / WARN / FAIL / SKIP with the fix."""
    from novakeeper.doctor import runner
    from novakeeper.doctor.facts import Facts

    checks = runner.select(only, skip)
    if list_only:
        if as_json:
            json_out({"checks": [{"id": c.id, "title": c.title, "looks_at": c.looks_at,
                                  "suggests": c.suggests} for c in checks]})
        else:
            _list(checks)
        return
    obj = ctx.obj  # cli.Context (global options), without importing cli
    facts = Facts(config_files=getattr(obj, "config_files", None),
                  instances_path=getattr(obj, "instances_path", None),
                  cloud=cloud, probe=probe, timeout=timeout, nova_user=nova_user)
    findings = runner.run(checks, facts)
    code = exit_code(findings)
    if as_json:
        json_out({"findings": [f.to_dict() for f in findings],
                  "checks": [c.id for c in checks],
                  "worst": worst(findings).name, "exit_code": code})
    else:
        _text(findings, checks)
    if code != ExitCode.OK:
        sys.exit(code)  # click's Exit would be swallowed outside standalone mode

