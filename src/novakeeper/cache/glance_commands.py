"""`cache fetch` and `cache release`: the commands that talk about images by their Glance id.

cli.py only adds them to the `cache` group; the work is in cache/fetch.py and
state/releases.py.
"""

from __future__ import annotations

import sys
import time
from contextlib import closing
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import click

from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.output import console, json_out

if TYPE_CHECKING:
    from novakeeper.cache.fetch import Fetched
    from novakeeper.settings import Settings


INTERRUPTED = 130
"""Exit code of a fetch stopped by Ctrl-C or SIGTERM (128 + SIGINT, as the shell's)."""


class _Bar:
    """A rich progress bar on stderr, for a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 DownloadColumn(binary_units=True), TransferSpeedColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True),
                                 transient=True)
        self.task: Any = None

    def start(self, image_id: str, total: int | None) -> None:
        self.progress.start()
        self.task = self.progress.add_task(image_id[:36], total=total)

    def advance(self, n: int) -> None:
        self.progress.update(self.task, advance=n)

    def stop(self) -> None:
        self.progress.stop()


def aggregate_hosts(path: str) -> list[str]:
    """Host names, one a line (`openstack aggregate show -f value -c hosts` output, split,
    works too); blank lines and # comments ignored."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise NovakeeperError(ExitCode.USAGE, f"--aggregate-hosts-from-file {path}: "
                              f"{exc.strerror}") from None
    hosts = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        hosts += [h.strip(" ,[]'\"") for h in line.replace(",", " ").split()]
    return [h for h in hosts if h]


def _fetch_all(conf: Settings, image_ids: tuple[str, ...], pin: bool, note: str,
               rate_limit: float | None, lock_wait: float, progress: bool
               ) -> tuple[list[Fetched], list[tuple[str, NovakeeperError]]]:
    from novakeeper.cache import fetch as fetch_mod
    from novakeeper.cache.inventory import check_dir
    from novakeeper.cache.locks import NovaLocks, nova_lock_dir
    from novakeeper.integrity.checksum import RateLimiter
    from novakeeper.integrity.glance import Glance
    from novakeeper.state import pins
    from novakeeper.state.db import open_state

    check_dir(conf.instances_path, "instances path")
    check_dir(conf.cache_path, "cache folder")
    rate = RateLimiter.mib_per_second(
        conf.glance.fetch_rate_limit if rate_limit is None else rate_limit)
    locks = NovaLocks(nova_lock_dir(conf.instances_path), lock_wait)
    glance = Glance(conf.glance.cloud)
    done: list[Fetched] = []
    failed: list[tuple[str, NovakeeperError]] = []
    state = open_state(conf.state_path, write=pin)
    with closing(state):
        try:
            for image_id in image_ids:
                now = time.time()
                try:
                    got = fetch_mod.fetch(image_id, conf.cache_path, glance, locks,
                                          conf.glance.force_raw_images,
                                          conf.policy.budget, rate,
                                          _Bar() if progress else None)
                except NovakeeperError as exc:
                    fetch_mod.record(state, image_id, "", "failed", 0, exc.message, now)
                    failed.append((image_id, exc))
                    continue
                except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the partial files are gone
                    fetch_mod.record(state, image_id, "", "failed", 0, "interrupted", now)
                    click.echo(f"novakeeper: error: interrupted while fetching {image_id}: "
                               "nothing of it left in the cache", err=True)
                    sys.exit(INTERRUPTED)
                if pin:
                    pins.add(state, "image", got.image_id, note or "cache fetch --pin", now)
                    got = replace(got, pinned=True)
                fetch_mod.record(state, got.image_id, got.name, got.action, got.bytes,
                                 got.line(), now, got.image)
                done.append(got)
        finally:
            glance.close()
    return done, failed


@click.command("fetch")
@click.argument("image_ids", nargs=-1, required=True, metavar="IMAGE_ID...")
@click.option("--pin", is_flag=True, help="Also pin each image (as `cache pin`).")
@click.option("--note", default="", help="The pin's note (with --pin).")
@click.option("--rate-limit", type=click.FloatRange(min=0), default=None, metavar="MB/s",
              help="Download at most this many MiB/s (0: unlimited). Default: "
                   "[novakeeper] fetch_rate_limit.")
@click.option("--aggregate-hosts-from-file", "hosts_file", metavar="FILE", default=None,
              help="Fetch only if this host ([DEFAULT] host) is listed in FILE (one host a "
                   "line): the same command can then run on every node of a fleet.")
@click.option("--lock-wait", type=click.FloatRange(min=0), default=600.0, show_default=True,
              metavar="SECONDS", help="How long to wait for nova's lock on the base (nova "
                                      "may be fetching the same image).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def fetch(ctx: Any, image_ids: tuple[str, ...], pin: bool, note: str,
          rate_limit: float | None, hosts_file: str | None, lock_wait: float,
          as_json: bool) -> None:
    """Put images into this node's cache exactly as nova does for a spawn (sha1 name,
    nova's lock, .part, verified hash, raw conversion, atomic rename)."""
    from novakeeper.state import pins

    for image_id in image_ids:
        why = pins.check_image_id(image_id)
        if why:
            raise NovakeeperError(ExitCode.USAGE, why)
    conf = ctx.settings()
    if hosts_file is not None:
        hosts = aggregate_hosts(hosts_file)
        if conf.host not in hosts:
            message = (f"host {conf.host} is not in {hosts_file} ({len(hosts)} hosts): "
                       "nothing fetched")
            if as_json:
                json_out({"host": conf.host, "in_aggregate": False, "fetched": [],
                          "failed": []})
            else:
                click.echo(message)
            return
    progress = not as_json and sys.stderr.isatty()
    done, failed = _fetch_all(conf, tuple(dict.fromkeys(image_ids)), pin, note, rate_limit,
                              lock_wait, progress)
    if as_json:
        json_out({"host": conf.host, "fetched": [d.to_dict() for d in done],
                  "failed": [{"image_id": i, "code": int(e.code), "error": e.message}
                             for i, e in failed]})
    else:
        out = console()
        for d in done:
            out.print(d.line() + ("; pinned" if d.pinned else ""), highlight=False,
                      markup=False)
        if len(image_ids) > 1:
            for image_id, exc in failed:
                out.print(f"FAILED  {image_id}: {exc.message}", highlight=False, markup=False)
    if failed:
        first = failed[0][1]
        if len(failed) == 1:
            raise NovakeeperError(first.code, first.message)
        raise NovakeeperError(first.code, f"{len(failed)} of {len(image_ids)} images not "
                              f"fetched; first: {first.message}")


@click.command("release")
@click.argument("image_id")
@click.option("--note", default="", help="Why (shown in the plan's reason).")
@click.option("--undo", is_flag=True, help="Take a release back: the last copy is kept again.")
@click.pass_obj
def release(ctx: Any, image_id: str, note: str, undo: bool) -> None:
    """Let the last copy of an image gone from Glance go (verdict last-copy): the
    instances naming it can then no longer be rescued, rebuilt or block-migrated."""
    from novakeeper.cache.layout import image_hash
    from novakeeper.state import pins, releases
    from novakeeper.state.db import open_state

    why = pins.check_image_id(image_id)
    if why:
        raise NovakeeperError(ExitCode.USAGE, why)
    conf = ctx.settings()
    image_id = image_id.strip()
    with closing(open_state(conf.state_path, write=True)) as db:
        if undo:
            if not releases.remove(db, image_id):
                raise NovakeeperError(ExitCode.USAGE, f"{image_id} is not released")
            click.echo(f"release of {image_id} taken back: its last copy is kept again")
            return
        added = releases.add(db, image_id, note, time.time())
    what = f"image {image_id} (cache name {image_hash(image_id)})"
    click.echo(f"released {what}: once unused for deleted_image_min_age_seconds its bases "
               "may be removed" if added else f"{what} was already released")
