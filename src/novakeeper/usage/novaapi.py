"""Ask the Nova API which instances live on this host and on the hosts sharing its storage.

The disk scan only sees disks that exist. A server still building on this host has no disk
yet, but nova is about to fetch (or reuse) its image's base file and put a qcow2 disk on
it: only the API knows that. So does a server whose disks sit on the other end of a resize
or a migration. This source asks, as an admin through openstacksdk, for every server whose
`OS-EXT-SRV-ATTR:host` is one of `hosts` (nova's `host` filter on `GET /servers/detail`,
honoured only for admins), plus the servers of unfinished migrations from or to those hosts
(`GET /os-migrations?host=`), and reports each server's image by cache name:
sha1(image id), which also covers the resized copies `<sha1>_<size>`.

What the API does not tell, and what covers it instead:

* A rescued server's rescue image is the image asked for in the rescue call, else
  `image_base_image_ref` from the instance's *system* metadata, else its own image. None of
  these is shown by the API; only the server's own image is. The rescue disk
  (`disk.rescue`) is in the instance folder, and the disk scan and libvirt see its base.
* A policy that lets the caller list all projects but not filter by host makes nova drop
  the `host` filter silently: then every server of the cloud is reported. More is kept,
  never less.
* Servers in a cell that is down are silently left out of a filtered listing
  (`[api] list_records_by_skipping_down_cells`, default true). Set it to false on the
  API nodes so a down cell fails the request, and this source, instead.

Credentials come the way every OpenStack tool takes them: `clouds.yaml` (named by `cloud`,
found through OS_CLIENT_CONFIG_FILE or the usual places) and OS_* variables. Any failure
(no credentials, wrong password, no compute endpoint, refused connection, time-out, 403 for
a non-admin) is returned as an error, never raised: the pass then keeps every file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from novakeeper.cache.inventory import Inventory
from novakeeper.cache.layout import image_hash
from novakeeper.usage.base import Sighting, SourceResult

if TYPE_CHECKING:  # openstacksdk takes a second or more to import: only when configured.
    from openstack.connection import Connection

NAME = "nova-api"
DEFAULT_TIMEOUT = 30.0

SHELVED_OFFLOADED = "shelved_offloaded"
"""vm_state of a server whose disks nova destroyed when it offloaded it. Nova then clears
the server's host (`_shelve_offload_instance`), so it is on no host and protects no base:
unshelving spawns it afresh, on whatever host the scheduler picks, from the snapshot image.
While it unshelves here it has a task_state (unshelving, spawning), nova has set its host
to this one and its `image` to the snapshot being fetched: then it protects that image."""

BUILDING = "building"
"""vm_state of a server being spawned: its image is named (sha1 of image_ref), or it has
none (booted from a volume), so its instance folder needs no blanket spawn hold."""

FINISHED_MIGRATIONS = frozenset(
    {"confirmed", "reverted", "completed", "done", "cancelled", "error", "failed"}
)
"""Migration statuses after which neither end waits on the server's disks any more. Any
other status (queued, preparing, running, migrating, post-migrating, finished = waiting for
the resize to be confirmed, confirming, reverting, or one we do not know) keeps the image."""


def protects(vm_state: str | None, task_state: str | None) -> bool:
    """Whether a server listed on a host may have, or be about to have, a disk on its image.

    Every state does (building, active, stopped, paused, suspended, shelved but not
    offloaded, rescued, resizing, in error: its disk may still be there), except a server
    shelved and offloaded that is not being unshelved (see SHELVED_OFFLOADED).
    """
    return not ((vm_state or "").lower() == SHELVED_OFFLOADED and not task_state)


def image_id_of(image: object) -> str | None:
    """The Glance image id from a server's `image` field.

    Nova returns `{"id": ..., "links": [...]}`, or "" for a server booted from a volume
    (openstacksdk turns that into an empty mapping). Very old APIs gave an href: keep its
    last path segment, as nova's own `get_id_from_href` does.
    """
    value: object = image
    if isinstance(image, Mapping):
        value = image.get("id")
    elif image is not None and not isinstance(image, str):
        value = getattr(image, "id", None)
    if not isinstance(value, str) or not value.strip():
        return None
    return value.rstrip("/").rsplit("/", 1)[-1].strip() or None


def one_line(exc: BaseException) -> str:
    """An exception as one short line for the plan and the log."""
    kind = type(exc).__name__
    text = " ".join(str(exc).split())
    if not text.startswith(kind):  # openstacksdk's messages often start with it already
        text = f"{kind}: {text}" if text else kind
    return text if len(text) <= 300 else text[:297] + "..."


class NovaServers:
    """Usage source "nova-api": the images of the servers nova places on `hosts`.

    `hosts` are nova-compute service host names (nova.conf `[DEFAULT] host`, what
    `openstack compute service list` shows), not hypervisor host names. `connect` replaces
    `openstack.connect(cloud=cloud, api_timeout=timeout)`, for callers that build their own
    connection; `timeout` bounds each HTTP request, Keystone's included.
    """

    name = NAME

    def __init__(
        self,
        hosts: Sequence[str],
        cloud: str | None = None,
        connect: Callable[[], Connection] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.hosts = tuple(dict.fromkeys(h for h in hosts if h))
        self.cloud = cloud
        self.timeout = timeout
        self._connect = connect or self._default_connect

    def _default_connect(self) -> Connection:
        import openstack  # lazily: see the TYPE_CHECKING import

        return openstack.connect(cloud=self.cloud, api_timeout=self.timeout)

    def collect(self, inventory: Inventory) -> SourceResult:
        """Never raises: any failure, expected or not, is an error result, and the pass
        keeps everything. A bug here must not turn into deleting a base in use.

        The inventory is not needed: sightings are by cache name (sha1 of the image id),
        which the pass matches to originals and resized copies alike."""
        if not self.hosts:
            return self._error("no compute host to ask about")
        try:
            conn = self._connect()
        except Exception as exc:
            return self._error(f"cannot connect: {one_line(exc)}")
        found: dict[str, list[Sighting]] = {}
        building: set[str] = set()
        seen = 0
        try:
            listed: set[str] = set()
            for host in self.hosts:
                for server in conn.compute.servers(
                    details=True, all_projects=True, compute_host=host
                ):
                    seen += 1
                    listed.add(str(server.id))
                    self._add(found, server, f"on {host}")
                    if str(server.vm_state or "").lower() == BUILDING:
                        building.add(str(server.id))
            for host in self.hosts:
                for mig in self._open_migrations(conn, host):
                    if str(mig.server_id) in listed:
                        continue
                    server = _get_server(conn, str(mig.server_id))
                    if server is None:  # deleted since: its disks went with it
                        continue
                    seen += 1
                    listed.add(str(server.id))
                    ends = f"{mig.source_compute} -> {mig.dest_compute}"
                    self._add(found, server, f"migration {mig.status} {ends}")
        except Exception as exc:
            return self._error(one_line(exc), seen)
        finally:
            _close(conn)
        return SourceResult(
            self.name, by_name={k: tuple(v) for k, v in found.items()}, seen=seen,
            building=frozenset(building),
        )

    @staticmethod
    def _open_migrations(conn: Connection, host: str) -> Iterable[Any]:
        """Migrations from or to `host` (nova matches source or destination) not yet over."""
        for mig in conn.compute.migrations(host=host):
            if str(mig.status or "").lower() not in FINISHED_MIGRATIONS and mig.server_id:
                yield mig

    def _add(self, found: dict[str, list[Sighting]], server: Any, where: str) -> None:
        if not protects(server.vm_state, server.task_state):
            return
        image_id = image_id_of(server.image)
        if image_id is None:  # booted from a volume: no base file (nor kernel, nor ramdisk)
            return
        status = str(server.status or server.vm_state or "?")
        if server.task_state:
            status = f"{status}/{server.task_state}"
        who = f"instance {server.id} ({status}) {where}"
        found.setdefault(image_hash(image_id), []).append(Sighting(self.name, who))
        # Kernel and ramdisk of an AMI-style image (admins see them, microversion 2.3+):
        # nova fetches them into the cache too and needs them again for a rebuild.
        for role in ("kernel_id", "ramdisk_id"):
            other = getattr(server, role, None)
            if isinstance(other, str) and other.strip() and other.strip() != image_id:
                found.setdefault(image_hash(other.strip()), []).append(
                    Sighting(self.name, f"{who} as its {role.removesuffix('_id')}"))

    def _error(self, why: str, seen: int = 0) -> SourceResult:
        return SourceResult(self.name, error=f"{self.name}: {why}", seen=seen)


def _get_server(conn: Connection, server_id: str) -> Any:
    """`GET /servers/{id}` (admins see every project's), or None once it is deleted."""
    from openstack import exceptions

    try:
        return conn.compute.get_server(server_id)
    except exceptions.NotFoundException:
        return None


def _close(conn: Connection) -> None:
    with contextlib.suppress(Exception):  # the answer is already in hand
        conn.close()
