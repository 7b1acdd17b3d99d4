"""The cache service: a pass every manager_interval seconds, until told to stop.

Signals only set flags (a removal in progress always finishes): SIGTERM/SIGINT stop after
the current removal, SIGHUP reloads the configuration (a bad one is logged and the old one
kept). The loop waits on an Event, never sleeps blind, so a signal is acted on at once. A
pass that fails is logged with its reason and tried again at the next interval: nothing a
node can throw at a pass (a bad disk, a full log, a locked database) stops the service.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from novakeeper.cache.inventory import Scanner
from novakeeper.cache.locks import run_lock
from novakeeper.cache.plan import Plan, Verdict
from novakeeper.errors import ExitCode, NovakeeperError
from novakeeper.integrity.verify import verify_some
from novakeeper.passes import Pass, executor_for, plan_pass
from novakeeper.service.metrics import Metrics, PassInfo
from novakeeper.service.notify import Notifier
from novakeeper.settings import Settings
from novakeeper.units import human_bytes

LOG = logging.getLogger("novakeeper.cache")

DEFAULT_INTERVAL = 2400
"""What manager_interval = 0 means (the issue's reading; nova itself would run every 60 s)."""


def interval_of(settings: Settings) -> float | None:
    """Seconds between passes; None when passes are disabled (-1)."""
    value = settings.manager_interval
    if value < 0:
        return None
    return float(value or DEFAULT_INTERVAL)


@dataclass
class Outputs:
    metrics_file: str | None = None
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"


@dataclass
class Service:
    load: Callable[[], Settings]
    outputs: Outputs = field(default_factory=Outputs)
    notifier: Notifier = field(default_factory=Notifier)

    def __post_init__(self) -> None:
        self.metrics = Metrics()
        self.wake = threading.Event()
        self.stop_requested = False
        self.reload_requested = False
        self.previous: dict[str, Verdict] = {}
        self.passes = 0
        self.scanner: Scanner | None = None
        """Kept across passes: an unchanged node is rescanned from its fingerprints."""

    # -- signals --------------------------------------------------------------------

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_requested = True
        self.wake.set()

    def _on_hup(self, signum: int, _frame: FrameType | None) -> None:
        self.reload_requested = True
        self.wake.set()

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def should_stop(self) -> bool:
        """Asked by the executor between removals; also feeds the watchdog."""
        self.notifier.watchdog()
        return self.stop_requested

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        logging.raiseExceptions = False  # a full or closed log must not stop the service
        settings = self.load()  # a bad configuration at start is an error: exit non-zero
        self.install_signals()
        if self.outputs.metrics_port is not None:
            try:
                self.metrics.serve(self.outputs.metrics_port, self.outputs.metrics_address)
            except OSError as exc:  # port taken, address not ours: say so, in one line
                raise NovakeeperError(
                    ExitCode.USAGE, f"--metrics-port: cannot listen on "
                    f"{self.outputs.metrics_address}:{self.outputs.metrics_port}: "
                    f"{exc.strerror or exc}") from None
        self._announce(settings)
        self.notifier.ready(self._status(settings, "started"))
        next_pass = time.monotonic()
        while not self.stop_requested:
            if self.reload_requested:
                self.reload_requested = False
                settings = self._reload(settings)
                next_pass = time.monotonic()  # a new configuration deserves a pass now
            interval = interval_of(settings)
            now = time.monotonic()
            if interval is not None and now >= next_pass:
                self._pass(settings)
                next_pass = time.monotonic() + interval
                continue
            self.notifier.watchdog()
            timeout = None if interval is None else max(0.0, next_pass - now)
            if self.notifier.watchdog_seconds:
                half = self.notifier.watchdog_seconds / 2
                timeout = half if timeout is None else min(timeout, half)
            self.wake.wait(timeout)
            self.wake.clear()
        self.notifier.stopping()
        LOG.info("Stopping: signal received; no removal was interrupted")
        return ExitCode.OK

    def _announce(self, settings: Settings) -> None:
        interval = interval_of(settings)
        if interval is None:
            LOG.warning("[image_cache] manager_interval is -1: passes are disabled; the "
                        "service idles (SIGHUP reloads the configuration)")
        elif settings.manager_interval == 0:
            LOG.info("[image_cache] manager_interval is 0: using the default %d s",
                     DEFAULT_INTERVAL)
        if settings.service_mode == "clean":
            LOG.warning("service_mode = clean: each pass REMOVES what its plan allows, "
                        "every %s", f"{interval:g} s" if interval else "(disabled)")
        else:
            LOG.info("service_mode = plan: passes plan, record and export metrics but "
                     "remove nothing; set [novakeeper] service_mode = clean to remove")
        self.metrics.interval.set(interval or 0)
        self.metrics.deleting.set(1 if settings.service_mode == "clean" else 0)

    def _status(self, settings: Settings, what: str) -> str:
        return f"{what}; mode {settings.service_mode}; {self.passes} passes"

    def _reload(self, old: Settings) -> Settings:
        self.notifier.reloading()
        try:
            new = self.load()
        except NovakeeperError as exc:
            LOG.error("Configuration reload failed, keeping the previous configuration: %s",
                      exc.message)
            self.notifier.ready(self._status(old, "reload failed"))
            return old
        except Exception as exc:  # the old configuration still works: keep serving
            LOG.error("Configuration reload failed, keeping the previous configuration: "
                      "%s: %s", type(exc).__name__, exc)
            self.notifier.ready(self._status(old, "reload failed"))
            return old
        LOG.info("Configuration reloaded from %s", ", ".join(new.config_files) or "defaults")
        self._announce(new)
        self.notifier.ready(self._status(new, "reloaded"))
        return new

    def _pass(self, settings: Settings) -> None:
        started_wall, started = time.time(), time.monotonic()
        error = None
        try:
            self._one_pass(settings)
        except NovakeeperError as exc:
            error = exc.message
        except Exception as exc:  # a bug in one pass must not stop the next
            error = f"{type(exc).__name__}: {exc}"
        took = time.monotonic() - started
        self.passes += 1
        self.metrics.observe_pass(PassInfo(started_wall, took, error is None, error))
        if error is None:
            LOG.info("Pass %d done in %.2f s", self.passes, took)
        else:
            LOG.error("Pass %d failed after %.2f s: %s; next try in %s", self.passes, took,
                      error, f"{interval_of(settings) or 0:g} s")
        self._write_metrics()
        self.notifier.status(self._status(settings, "idle" if error is None else
                                          f"last pass failed: {error}"))

    def _write_metrics(self) -> None:
        if self.outputs.metrics_file is None:
            return
        try:
            self.metrics.write_textfile(self.outputs.metrics_file)
        except OSError as exc:
            LOG.error("Cannot write metrics file %s: %s", self.outputs.metrics_file,
                      exc.strerror)

    def _one_pass(self, settings: Settings) -> Plan | None:
        cleaning = settings.service_mode == "clean"
        self.notifier.status(self._status(settings, "scanning"))
        with contextlib.ExitStack() as stack:
            if cleaning:  # a plan only records; removing needs the run lock
                try:
                    stack.enter_context(run_lock(settings.instances_path,
                                                 settings.cache_path))
                except NovakeeperError as exc:
                    if exc.code is not ExitCode.BUSY:
                        raise
                    LOG.info("Pass skipped: %s", exc.message)  # a cron clean does the work
                    return None
            result = stack.enter_context(plan_pass(settings, write_state=cleaning,
                                                   scanner=self.scanner))
            self.scanner = result.scanner
            self._log_changes(result.plan)
            self.metrics.observe_plan(result.inventory, result.plan)
            self._observe_disk(result, settings)
            observe_fetches(self.metrics, result)
            if cleaning:
                executor = executor_for(result, settings)
                executor.should_stop = self.should_stop
                report = executor.run()
                reasons = {d.name: str(d.verdict) for d in result.plan.removals}
                self.metrics.observe_report(report, reasons)
                LOG.info("Removed %d files (%d to the trash), freed %s; skipped %d, failed "
                         "%d", len(report.removed), len(report.trashed),
                         human_bytes(report.freed), len(report.skipped), len(report.failed))
            if not self.stop_requested:
                self._verify_some(settings, result)
            return result.plan

    def _observe_disk(self, result: Pass, settings: Settings) -> None:
        """The disk report's figures from this pass's own scan (one lstat per non-disk
        file on top); a file system that cannot be read leaves them as they were."""
        from novakeeper.disk.report import from_pass

        try:
            self.metrics.observe_disk(from_pass(result, settings))
        except (NovakeeperError, OSError) as exc:
            LOG.warning("Disk report figures not updated: %s", exc)

    def _verify_some(self, settings: Settings, result: Pass) -> None:
        """A few files' checksums per pass ([novakeeper] verify_files_per_pass), least
        recently verified first: bit rot in files nobody changed is found in time. Its
        failure is logged; it never fails the pass."""
        if settings.verify_files_per_pass <= 0 or result.state is None \
                or not result.state.writable:
            return
        self.notifier.status(self._status(settings, "verifying"))
        try:
            report = verify_some(settings, result, should_stop=self.should_stop)
        except (NovakeeperError, OSError) as exc:
            LOG.error("Verification failed: %s", getattr(exc, "message", exc))
            return
        self.metrics.quarantined.inc(len(report.quarantined))
        if report.files_read:
            LOG.info("Verified %d files (%s read), %d mismatches", report.files_read,
                     human_bytes(report.bytes_read), len(report.mismatches))

    def _log_changes(self, plan: Plan) -> None:
        """One line per decision that changed since the last pass (and every removal) at
        INFO; files whose verdict stays the same only at DEBUG."""
        current = {d.name: d.verdict for d in plan.decisions}
        for d in plan.decisions:
            changed = self.previous.get(d.name) is not d.verdict
            level = logging.INFO if changed or d.removes else logging.DEBUG
            if d.verdict is Verdict.HELD or d.verdict is Verdict.UNKNOWN:
                level = logging.WARNING if changed else logging.DEBUG
            if d.corrupt and d.verdict is Verdict.IN_USE:  # loud, every pass
                LOG.error("In-use base file is CORRUPT: %s (%s); instances at risk: %s",
                          d.path, d.corrupt, " ".join(d.users) or "unknown")
                continue
            LOG.log(level, "%s %s: %s (%s)", d.verdict, d.kind, d.path, d.reason,
                    extra={"data": {"event": "decision", "file": d.path,
                                    "kind": str(d.kind), "verdict": str(d.verdict),
                                    "reason": d.reason, "frees": d.frees}})
        for gone in set(self.previous) - set(current):
            LOG.info("Gone from the cache: %s", gone)
        if plan.budget is not None and plan.budget.shortfall:
            LOG.warning("Cache budget: %s", plan.budget.words())
        self.previous = current


def observe_fetches(metrics: Metrics, result: Pass) -> None:
    """The `cache fetch` totals the state database holds, into the exporter."""
    if result.state is None:
        return
    from novakeeper.cache.fetch import totals

    try:
        t = totals(result.state)
    except sqlite3.Error as exc:
        LOG.warning("State database: %s; fetch totals not exported", exc)
        return
    metrics.observe_fetches(t.count, t.bytes, t.failures)
