"""Small helpers for the doctor tests: a node written in a tmp dir, and one check run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from novakeeper.doctor import runner
from novakeeper.doctor.facts import Facts
from novakeeper.doctor.model import Finding, Status


def node(tmp: Path, conf: str = "", name: str = "nova.conf") -> tuple[Path, Path]:
    """instances/_base and locks under tmp, and a config file naming that instances_path
    first, then `conf` (more options, more sections)."""
    ipath = tmp / "instances"
    (ipath / "_base").mkdir(parents=True, exist_ok=True)
    (ipath / "locks").mkdir(exist_ok=True)
    path = tmp / name
    text = conf if conf.lstrip().startswith("[DEFAULT]") else f"[DEFAULT]\n{conf}"
    path.write_text(text.replace("[DEFAULT]\n", f"[DEFAULT]\ninstances_path = {ipath}\n", 1))
    return path, ipath


def facts(*files: Path, **kw: Any) -> Facts:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")
           or k.startswith("OS_NOVAKEEPER__")}
    kw.setdefault("environ", env)
    return Facts(config_files=[str(f) for f in files], **kw)


def check(check_id: str, f: Facts) -> list[Finding]:
    (chosen,) = runner.select([check_id])
    return runner.run([chosen], f)


def statuses(found: list[Finding]) -> list[Status]:
    return [x.status for x in found]


def one(found: list[Finding], status: Status) -> Finding:
    hits = [x for x in found if x.status is status]
    assert len(hits) == 1, found
    return hits[0]
