"""Shared storage: which compute hosts use this instances path.

Nova's compute service registers itself in `$instances_path/compute_nodes` (a JSON object
host -> time.time() of its last registration, written under the external lock
`nova-storage-registry-lock` at every image cache pass), and counts a host as a user of
the storage only if it registered within 24 hours (nova/virt/storage_users.py).

novakeeper does not need the registry to protect bases: every instance folder on the share
is scanned, whichever host runs it, so a host that stopped reporting still protects the
bases its disks use for as long as its disks exist. The registry tells the operator that
the storage is shared (and so that every host's nova manager must be configured alike,
or disabled) and which hosts went quiet.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

REGISTRY_NAME = "compute_nodes"
STALE_AFTER_SECONDS = 24 * 3600.0
"""nova's TWENTY_FOUR_HOURS: a host silent for longer is no longer counted by nova."""


@dataclass(frozen=True, slots=True)
class StorageUser:
    host: str
    last_seen: float
    stale: bool

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "last_seen": self.last_seen, "stale": self.stale}


@dataclass(frozen=True)
class Registry:
    path: str
    users: tuple[StorageUser, ...] = ()
    error: str | None = None

    @property
    def active(self) -> tuple[StorageUser, ...]:
        return tuple(u for u in self.users if not u.stale)

    @property
    def shared(self) -> bool:
        return len(self.active) > 1

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "users": [u.to_dict() for u in self.users],
                "shared": self.shared, "error": self.error}


def read_registry(instances_path: str, now: float) -> Registry:
    """Read compute_nodes. A missing file is normal (a host whose nova never ran its cache
    manager); an unreadable or undecodable one is reported, never fatal."""
    path = os.path.join(instances_path, REGISTRY_NAME)
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 20)
    except FileNotFoundError:
        return Registry(path)
    except OSError as exc:
        return Registry(path, error=f"cannot read {path}: {exc.strerror}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        # nova rewrites it in place ('w' then write): a read can catch it half written
        return Registry(path, error=f"cannot decode JSON from {path}")
    if not isinstance(data, dict):
        return Registry(path, error=f"{path} is not a JSON object")
    users = []
    for host, seen in data.items():
        if isinstance(host, str) and isinstance(seen, int | float) and seen == seen:
            users.append(StorageUser(host, float(seen), now - seen >= STALE_AFTER_SECONDS))
    users.sort(key=lambda u: (u.stale, u.host))
    return Registry(path, tuple(users))
