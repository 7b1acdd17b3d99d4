"""`novakeeper fleet report` and `fleet clean`: the cache of many nodes, through Ansible."""

from __future__ import annotations

from typing import Any

import click

from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.output import console, json_out

INVENTORY = click.option("-i", "--inventory", required=True, metavar="INVENTORY",
                         help="Ansible inventory (file or folder), as for ansible-playbook.")
FORKS = click.option("--forks", type=click.IntRange(1, 1000), default=20, show_default=True,
                     help="Nodes Ansible works on at once.")
JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
HTML = click.option("--html", "html_file", metavar="FILE", type=click.Path(dir_okay=False),
                    help="Also write the report as one self-contained HTML file.")


@click.group()
def fleet() -> None:
    """Every node's cache in one report, and cleans across nodes, through Ansible."""


def _show(report: dict[str, Any], as_json: bool, html_file: str | None) -> None:
    from novakeeper.fleet import render

    if html_file:
        try:
            with open(html_file, "w", encoding="utf-8") as f:
                f.write(render.html_page(report))
        except OSError as exc:
            raise NovakeeperError(ExitCode.PATH, f"{html_file}: {exc.strerror}") from None
    if as_json:
        json_out(report)
    else:
        render.table(report, console())


def _exit_for(report: dict[str, Any]) -> None:
    down = report["down"]
    if down:
        raise NovakeeperError(ExitCode.PROBLEMS, f"{len(down)} of {report['totals']['nodes']} "
                              f"nodes did not report: {', '.join(d['host'] for d in down)}")


@fleet.command()
@INVENTORY
@click.option("--limit", metavar="PATTERN", help="Ansible host pattern (as --limit).")
@FORKS
@JSON
@HTML
def report(inventory: str, limit: str | None, forks: int, as_json: bool,
           html_file: str | None) -> None:
    """Each node's cache status (and disk report, where it has one), merged: per node
    figures worst first, fleet totals, and the nodes that did not answer, with why."""
    from novakeeper.fleet import report as report_mod
    from novakeeper.fleet import runner

    run = runner.run_playbook(runner.REPORT_PLAYBOOK, inventory, limit, forks)
    runner.check_reached(run, inventory, limit)
    data = report_mod.merge(run)
    _show(data, as_json, html_file)
    _exit_for(data)


@fleet.command()
@INVENTORY
@click.option("--limit", metavar="PATTERN", required=True,
              help="Ansible host pattern: which nodes to clean ('all' for every one).")
@click.option("--serial", type=click.IntRange(1), default=1, show_default=True,
              help="Nodes cleaned at once (Ansible's serial).")
@click.option("--keep-going", is_flag=True,
              help="Go on after a node fails (default: stop after the batch where one fails).")
@FORKS
@JSON
@HTML
def clean(inventory: str, limit: str, serial: int, keep_going: bool, forks: int,
          as_json: bool, html_file: str | None) -> None:
    """`cache clean --yes` on the nodes, --serial at a time, then the fleet report."""
    from novakeeper.fleet import report as report_mod
    from novakeeper.fleet import runner

    cleaned = runner.run_playbook(
        runner.CLEAN_PLAYBOOK, inventory, limit, forks,
        {"novakeeper_serial": serial,
         "novakeeper_max_fail_percentage": 100 if keep_going else 0})
    runner.check_reached(cleaned, inventory, limit)
    after = runner.run_playbook(runner.REPORT_PLAYBOOK, inventory, limit, forks)
    data = report_mod.merge(after, cleaned)
    _show(data, as_json, html_file)
    failed = [h for h, r in cleaned.hosts.items() if not r.ok]
    not_run = data["totals"]["clean"]["nodes_not_run"]
    if failed:
        stopped = f"; stopped: {not_run} nodes not cleaned" if not_run else ""
        raise NovakeeperError(ExitCode.FAILED_REMOVALS,
                              f"clean failed on {', '.join(sorted(failed))}{stopped}")
    _exit_for(data)


@fleet.command()
@click.argument("image_ids", nargs=-1, required=True, metavar="IMAGE_ID...")
@INVENTORY
@click.option("--limit", metavar="PATTERN", required=True,
              help="Ansible host pattern: which nodes fetch ('all' for every one).")
@click.option("--serial", type=click.IntRange(1), default=None,
              help="Nodes fetching at once (Ansible's serial; default: all of them).")
@click.option("--pin", is_flag=True, help="Also pin the images on each node.")
@click.option("--stop-on-failure", is_flag=True,
              help="Stop after the batch where a node fails (default: every node tries).")
@FORKS
@JSON
def fetch(image_ids: tuple[str, ...], inventory: str, limit: str, serial: int | None,
          pin: bool, stop_on_failure: bool, forks: int, as_json: bool) -> None:
    """`cache fetch IMAGE_ID...` on the nodes: a fleet-wide pre-fetch, each node
    downloading from Glance into its own cache as nova would for a spawn."""
    from novakeeper.fleet import report as report_mod
    from novakeeper.fleet import runner
    from novakeeper.state.pins import check_image_id

    for image_id in image_ids:
        why = check_image_id(image_id)
        if why:
            raise NovakeeperError(ExitCode.USAGE, why)
    extravars: dict[str, Any] = {"novakeeper_images": list(dict.fromkeys(image_ids)),
                                 "novakeeper_pin": pin,
                                 "novakeeper_max_fail_percentage": 0 if stop_on_failure
                                 else 100}
    if serial is not None:
        extravars["novakeeper_serial"] = serial
    run = runner.run_playbook(runner.FETCH_PLAYBOOK, inventory, limit, forks, extravars)
    runner.check_reached(run, inventory, limit)
    data = report_mod.fetches(run)
    if as_json:
        json_out(data)
    else:
        from novakeeper.fleet import render

        render.fetch_table(data, console())
    bad = data["failed"] + data["down"]
    if bad:
        raise NovakeeperError(ExitCode.PROBLEMS, f"{len(bad)} of {data['nodes']} nodes did "
                              f"not fetch: {', '.join(b['host'] for b in bad)}")


__all__ = ["fleet"]
