"""The `cache verify` command's work and output; cli.py only declares its options."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.integrity.verify import (
    Action,
    FileProgress,
    FileStatus,
    Target,
    VerifyReport,
    verify,
)
from novakeeper.passes import plan_pass
from novakeeper.settings import Settings
from novakeeper.units import human_bytes


class _Bytes(ProgressColumn):
    """'1.2 GiB/20.0 GiB' in novakeeper's binary units."""

    def render(self, task: Task) -> Text:
        total = human_bytes(task.total) if task.total is not None else "?"
        return Text(f"{human_bytes(task.completed)}/{total}")


class _Speed(ProgressColumn):
    """Bytes/s, binary units: the same MiB as --rate-limit."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-" if speed is None else f"{human_bytes(speed)}/s")


@contextmanager
def _progress(targets: list[Target]) -> Iterator[FileProgress | None]:
    """A progress bar on stderr when it is a terminal (stdout may be piped JSON)."""
    total = sum(t.base.size for t in targets if t.read)
    if not sys.stderr.isatty() or total == 0:
        yield None
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), _Bytes(), _Speed(),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    task = bar.add_task("verifying", total=total)
    last: dict[str, int] = {}

    def step(name: str, done: int, size: int) -> None:
        bar.update(task, advance=done - last.get(name, 0), description=name[:20])
        last[name] = done

    with bar:
        yield step


def run(conf: Settings, files: Sequence[str], algorithm: str | None,
        rate_limit: float | None, force: bool, image_ids: Sequence[str]) -> VerifyReport:
    """Plan (to know who uses each base), then verify with a progress bar on a terminal."""
    with plan_pass(conf) as result, ExitStack() as stack:
        bar: list[FileProgress | None] = [None]

        def started(targets: list[Target]) -> None:
            bar[0] = stack.enter_context(_progress(targets))

        def step(name: str, done: int, size: int) -> None:
            if bar[0] is not None:
                bar[0](name, done, size)

        return verify(conf, result, list(files) or None, algorithm=algorithm,
                      rate_limit=rate_limit, force=force, image_ids=image_ids,
                      progress=step, on_targets=started)


def text(report: VerifyReport, out: Console) -> None:
    for r in report.results:
        if r.status is FileStatus.UNCHANGED:
            continue
        digest = f"{r.algorithm} {r.digest[:16]}…" if r.digest else ""
        if r.status is FileStatus.MISMATCH:
            if r.action is Action.QUARANTINED:
                what = f"{r.detail}; quarantined to {r.quarantine_path}"
            elif r.action is Action.KEPT_IN_USE:
                what = f"{r.detail}; IN USE by {', '.join(r.users)}: not moved"
            else:
                what = r.detail
            out.print(f"MISMATCH   {r.path}  {what}", markup=False, highlight=False)
            continue
        words = r.detail or ("matches its record" if r.status is FileStatus.OK else "")
        if r.glance and r.status in (FileStatus.OK, FileStatus.RECORDED):
            words = f"{words}; Glance: {r.glance}" if words else f"Glance: {r.glance}"
        out.print(f"{r.status!s:<10} {r.path}  {digest}  {words}".rstrip(), markup=False,
                  highlight=False)
    for note in report.notes:
        out.print(f"note: {note}", markup=False, highlight=False)
    s = report.summary()
    speed = (f", {human_bytes(report.bytes_read / report.seconds)}/s"
             if report.seconds > 0 and report.bytes_read else "")
    throttled = (f", waited {report.throttled:.1f} s for the rate limit"
                 if report.throttled >= 0.05 else "")
    files = f"{report.files_read} file{'' if report.files_read == 1 else 's'}"
    out.print(f"read {files} ({human_bytes(report.bytes_read)} in "
              f"{report.seconds:.1f} s{speed}{throttled}); {s['unchanged']} unchanged, not "
              f"read; {len(report.mismatches)} corrupt: {s['quarantined']} quarantined, "
              f"{s['corrupt_in_use']} in use; {s['error']} unreadable, {s['busy']} busy, "
              f"{s['changed']} changed while read", markup=False, highlight=False)


def raise_for(report: VerifyReport) -> None:
    """CORRUPT for any mismatch; PERMISSION for a file that could not be read for lack of
    rights; a file busy, gone or changed while read is only reported (the next run reads
    it)."""
    if report.mismatches:
        in_use = report.corrupt_in_use
        at_risk = sorted({u for r in in_use for u in r.users})
        risk = f" (instances at risk: {', '.join(at_risk)})" if at_risk else ""
        raise NovakeeperError(
            ExitCode.CORRUPT, f"{len(report.mismatches)} corrupt base files: "
            f"{len(report.quarantined)} quarantined, {len(in_use)} in use{risk}")
    denied = [r for r in report.errors if "permission denied" in r.detail.lower()]
    if denied:
        raise NovakeeperError(ExitCode.PERMISSION, f"{denied[0].path}: {denied[0].detail}"
                              + (f" (and {len(denied) - 1} more files)" if len(denied) > 1
                                 else ""))
