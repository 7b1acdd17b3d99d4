"""Glance's word on a base: the image's own checksum, compared with the bytes in the cache.

The cache names an original base sha1(image id); that hash cannot be turned back into the
id, and Glance can only be asked by id. So Glance is asked only about the images whose
ids novakeeper knows: pinned images, the images of the servers the Nova API places on this
host (the `nova-api` usage source's query), and ids given with `cache verify --image-id`.
Every pair learned is kept in the state database (`image_ids`), so an image is looked up
once. Bases of other images are checked against their own first read only.

Even with the id, Glance's checksum describes the bytes uploaded, and the base holds them
only when nova stored the image as it came: a raw image (and an ISO, which nova keeps
raw), or a qcow2 image with `force_raw_images = False`. Nova converts every other image to
raw in the cache (force_raw_images defaults to True), and then there is nothing to compare:
the base is then checked against its own first read only, and the report says why. The
same goes for resized copies (`<hash>_<size>`), swap and ephemeral files, which Glance
never had.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from novakeeper.cache.layout import image_hash
from novakeeper.images import qcow2
from novakeeper.integrity.checksum import ALGORITHMS
from novakeeper.usage.novaapi import DEFAULT_TIMEOUT, image_id_of, one_line, protects

if TYPE_CHECKING:  # openstacksdk takes a second or more to import: only when configured.
    from openstack.connection import Connection


class GlanceError(Exception):
    """Glance (or Keystone, or the Nova API) could not answer; the message is one line."""


@dataclass(frozen=True, slots=True)
class GlanceImage:
    id: str
    status: str | None
    disk_format: str | None
    container_format: str | None
    size: int | None
    checksum: str | None
    """md5 hex, Glance's legacy `checksum`."""
    hash_algo: str | None
    """os_hash_algo (sha512 unless [DEFAULT] hashing_algorithm says otherwise)."""
    hash_value: str | None
    name: str | None = None
    visibility: str | None = None
    """public, private, shared, community."""
    virtual_size: int | None = None
    """Bytes of the disk the image holds (a raw base's size), when Glance measured it."""

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "name": self.name, "status": self.status,
                "visibility": self.visibility, "disk_format": self.disk_format,
                "container_format": self.container_format, "size": self.size,
                "virtual_size": self.virtual_size, "checksum": self.checksum,
                "os_hash_algo": self.hash_algo, "os_hash_value": self.hash_value}


@dataclass(frozen=True, slots=True)
class Reference:
    """What Glance says the base's bytes hash to."""

    image_id: str
    algo: str
    value: str
    size: int | None


# Glance disk formats whose bytes nova stores unchanged in a base of the detected format.
_STORED_AS = {"raw": "raw", "iso": "raw", "qcow2": "qcow2"}


def head_format(head: bytes) -> str:
    """'qcow2' or 'raw', as nova's fetch sees it (anything without a qcow2 header is
    compared as raw: the format check below only lets raw and qcow2 images through)."""
    return "qcow2" if qcow2.is_qcow2(head) else "raw"


def reference(image: GlanceImage, base_format: str) -> Reference | str:
    """The digest to compare a base with, or why there is none (in words)."""
    if (image.status or "").lower() != "active":
        return f"image {image.id} is {image.status or 'in no state'} in Glance"
    if (image.container_format or "bare").lower() != "bare":
        return (f"image {image.id} has container format {image.container_format}: nova "
                "stores its contents, not Glance's bytes")
    stored = _STORED_AS.get((image.disk_format or "").lower())
    if stored != base_format:
        return (f"image {image.id} is {image.disk_format} in Glance and the base is "
                f"{base_format}: nova converted it (force_raw_images); nothing to compare")
    algo = (image.hash_algo or "").lower()
    if algo in ALGORITHMS and image.hash_value:
        return Reference(image.id, algo, image.hash_value.lower(), image.size)
    if image.checksum:
        return Reference(image.id, "md5", image.checksum.lower(), image.size)
    return f"image {image.id} has no checksum in Glance"


class Glance:
    """openstacksdk, imported and connected on first use, with credentials the way every
    OpenStack tool takes them (clouds.yaml named by `cloud`, or OS_* variables). Every
    failure is raised as GlanceError with one line; nothing else escapes."""

    def __init__(self, cloud: str | None = None,
                 connect: Callable[[], Connection] | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.cloud = cloud
        self.timeout = timeout
        self._connect = connect or self._default_connect
        self._conn: Connection | None = None
        self.requests = 0

    def _default_connect(self) -> Connection:
        import openstack  # lazily: see the TYPE_CHECKING import

        return openstack.connect(cloud=self.cloud, api_timeout=self.timeout)

    def _connection(self) -> Connection:
        if self._conn is None:
            try:
                self._conn = self._connect()
            except Exception as exc:
                raise GlanceError(f"cannot connect: {one_line(exc)}") from None
        return self._conn

    def image(self, image_id: str) -> GlanceImage | None:
        """`GET /v2/images/{id}`; None when Glance has no such image (any more)."""
        conn = self._connection()
        from openstack import exceptions

        self.requests += 1
        try:
            img: Any = conn.image.get_image(image_id)
        except exceptions.NotFoundException:
            return None
        except Exception as exc:
            raise GlanceError(one_line(exc)) from None
        return glance_image(img)

    def images(self) -> list[GlanceImage]:
        """Every image these credentials can see, whatever its status: `GET /v2/images`
        followed page by page (openstacksdk follows Glance's `next` links), once with
        `visibility=all&member_status=all` (community and not-yet-accepted shared images
        are left out of the default listing) and once more for hidden images
        (`os_hidden=true`, also left out by default)."""
        conn = self._connection()
        found: dict[str, GlanceImage] = {}
        try:
            for hidden in (False, True):
                self.requests += 1
                for img in conn.image.images(visibility="all", member_status="all",
                                             is_hidden=hidden):
                    image = glance_image(img)
                    found[image.id] = image
        except Exception as exc:
            raise GlanceError(f"listing images: {one_line(exc)}") from None
        return list(found.values())

    def sees_all(self) -> bool:
        """Whether these credentials carry the admin role, for which Glance lists every
        image of every project: only then does "not listed" mean "not in Glance"."""
        conn = self._connection()
        try:
            auth: Any = conn.session.auth
            access = auth.get_access(conn.session)
            return "admin" in {str(r).lower() for r in (access.role_names or ())}
        except Exception:  # no roles to read (a token without a catalog): assume not
            return False

    def download(self, image_id: str, chunk_size: int) -> Iterator[bytes]:
        """The image's bytes as Glance streams them (`GET /v2/images/{id}/file`), in chunks;
        openstacksdk's own md5 comparison is not used: the caller verifies
        os_hash_value and checksum itself, over every byte written."""
        conn = self._connection()
        self.requests += 1
        try:
            resp: Any = conn.image.download_image(image_id, stream=True,
                                                  chunk_size=chunk_size)
        except Exception as exc:
            raise GlanceError(f"downloading {image_id}: {one_line(exc)}") from None
        try:
            for chunk in resp.iter_content(chunk_size=chunk_size):
                if chunk:
                    yield chunk
        except GeneratorExit:
            raise
        except Exception as exc:
            raise GlanceError(f"downloading {image_id}: {one_line(exc)}") from None
        finally:
            with contextlib.suppress(Exception):
                resp.close()

    def server_images(self, hosts: Sequence[str]) -> dict[str, str]:
        """cache hash -> image id for the servers nova places on `hosts` (admin only: the
        same query as the nova-api usage source)."""
        conn = self._connection()
        found: dict[str, str] = {}
        try:
            for host in dict.fromkeys(h for h in hosts if h):
                self.requests += 1
                for server in conn.compute.servers(details=True, all_projects=True,
                                                   compute_host=host):
                    if not protects(server.vm_state, server.task_state):
                        continue
                    image_id = image_id_of(server.image)
                    if image_id is not None:
                        found[image_hash(image_id)] = image_id
        except Exception as exc:
            raise GlanceError(f"listing servers: {one_line(exc)}") from None
        return found

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # the answers are already in hand
                self._conn.close()
            self._conn = None


def glance_image(img: Any) -> GlanceImage:
    """openstacksdk's Image as our record."""
    size = getattr(img, "size", None)
    virtual = getattr(img, "virtual_size", None)
    return GlanceImage(str(img.id), _str(img.status), _str(img.disk_format),
                       _str(img.container_format), int(size) if size is not None else None,
                       _str(img.checksum), _str(img.hash_algo), _str(img.hash_value),
                       _str(getattr(img, "name", None)), _str(getattr(img, "visibility", None)),
                       int(virtual) if virtual is not None else None)


def _str(value: object) -> str | None:
    return None if value is None or value == "" else str(value)
