"""What the checks look at, read once per run and shared: the configuration files (raw,
and as oslo.config reads them), novakeeper's Settings, the cloud's catalog. Whatever cannot
be read is remembered as the reason (Unavailable), so every check needing it is SKIP with
that one line, and the check that owns it reports it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from novakeeper import settings as settings_mod
from novakeeper.errors import NovakeeperError

if TYPE_CHECKING:
    from novakeeper.doctor.cloud import Catalog
    from novakeeper.doctor.conf import NovaConf


class Unavailable(Exception):
    """A fact a check needs cannot be had here; the message says why, in one line."""


def nova_files(files: Sequence[str]) -> list[str]:
    """The files nova reads: all but novakeeper's own (novakeeper.conf, /etc/novakeeper)."""
    return [f for f in files
            if "novakeeper" not in os.path.basename(f)
            and os.path.basename(os.path.dirname(os.path.abspath(f))) != "novakeeper"]


@dataclass
class Facts:
    config_files: Sequence[str] | None = None
    """None: the default files that exist, as for every command."""
    instances_path: str | None = None
    cloud: str | None = None
    probe: bool = False
    timeout: float = 5.0
    nova_user: str = "nova"
    root: str = "/"
    """The root file system's mount point: the cache must not be on it."""
    now: float = field(default_factory=time.time)
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    firewall_commands: Sequence[Sequence[str]] = (("iptables-save",), ("nft", "-j", "list",
                                                                        "ruleset"))
    qemu_conf: str = "/etc/libvirt/qemu.conf"
    """libvirt's display port range (remote_display_port_min/max)."""
    _memo: dict[str, Any] = field(default_factory=dict)

    def files(self) -> list[str]:
        if self.config_files is None:
            return settings_mod.default_config_files()
        return list(self.config_files)

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._memo:
            try:
                self._memo[key] = make()
            except Unavailable as exc:
                self._memo[key] = exc
        value = self._memo[key]
        if isinstance(value, Unavailable):
            raise value
        return value

    def conf(self) -> NovaConf:
        """Every configuration file, as novakeeper reads them."""
        from novakeeper.doctor.conf import NovaConf

        result: NovaConf = self._once("conf", lambda: NovaConf.load(self.files()))
        return result

    def nova_conf(self) -> NovaConf:
        """The files nova itself reads (novakeeper's own left out)."""
        from novakeeper.doctor.conf import NovaConf

        result: NovaConf = self._once("nova_conf",
                                      lambda: NovaConf.load(nova_files(self.files())))
        return result

    def settings(self) -> settings_mod.Settings:
        def load() -> settings_mod.Settings:
            try:
                return settings_mod.load(self.config_files, self.instances_path)
            except NovakeeperError as exc:
                raise Unavailable(f"configuration not usable: {exc.message}") from None

        result: settings_mod.Settings = self._once("settings", load)
        return result

    def catalog(self) -> Catalog:
        from novakeeper.doctor.cloud import read_catalog

        result: Catalog = self._once("catalog", lambda: read_catalog(self))
        return result
