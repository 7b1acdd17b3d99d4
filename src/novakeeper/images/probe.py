"""Probe one file: what format it is and which file it names as its backing file.

One open and one 4 KiB read per file, no subprocess. Raw is what qemu calls a file with no
recognised header. Formats that can have a backing file but that we do not parse (QED,
VMDK, VHDX) are reported as such so the caller can treat them as a doubt.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from enum import StrEnum
from stat import S_ISBLK, S_ISREG

from novakeeper.images import qcow2

HEAD_SIZE = 4096
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class ImageFormat(StrEnum):
    QCOW2 = "qcow2"
    RAW = "raw"
    QED = "qed"
    VMDK = "vmdk"
    VHDX = "vhdx"
    DEVICE = "device"  # a block device: no header of ours to read, end of any chain


# Formats whose header can name a backing file but which we do not parse.
OPAQUE_FORMATS = frozenset({ImageFormat.QED, ImageFormat.VMDK, ImageFormat.VHDX})

_MAGICS: tuple[tuple[bytes, ImageFormat], ...] = (
    (b"QED\0", ImageFormat.QED),
    (b"KDMV", ImageFormat.VMDK),
    (b"# Disk DescriptorFile", ImageFormat.VMDK),
    (b"vhdxfile", ImageFormat.VHDX),
)


class ProbeErrorKind(StrEnum):
    MISSING = "missing"
    UNREADABLE = "unreadable"
    TRUNCATED = "truncated"
    CORRUPT = "corrupt"
    NOT_A_FILE = "not-a-file"


class ProbeError(Exception):
    """A file whose image header could not be read; carries a one-line reason."""

    def __init__(self, path: str, kind: ProbeErrorKind, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ImageInfo:
    path: str
    format: ImageFormat
    virtual_size: int
    backing_file: str | None
    """As the header stores it; resolve with `resolve_backing`."""
    backing_format: str | None
    data_file: str | None
    unknown_features: int
    dev: int
    ino: int
    size: int
    allocated: int
    mtime: float
    changed: tuple[int, int] = (0, 0)
    """(mtime_ns, ctime_ns) when the header was read: a rewrite in place changes them."""


def resolve_backing(image_path: str, backing_file: str) -> str:
    """Where qemu looks for a backing file: relative names are relative to the folder of
    the image that names them (qemu's path_combine), not to the working directory."""
    if backing_file.startswith("/"):  # os.path.isabs, on the only OS nova's libvirt runs
        return backing_file
    return os.path.join(os.path.dirname(image_path), backing_file)


_QCOW2 = ImageFormat.QCOW2
_RAW = ImageFormat.RAW


def _format_of(head: bytes) -> ImageFormat:
    if qcow2.is_qcow2(head):
        return ImageFormat.QCOW2
    for magic, fmt in _MAGICS:
        if head.startswith(magic):
            return fmt
    return ImageFormat.RAW


def probe(path: str) -> ImageInfo:
    """Read the header of `path` (following symlinks, as qemu does)."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise _error(path, exc) from None
    try:
        st = os.fstat(fd)
        mode = st.st_mode
        device = S_ISBLK(mode)
        if not (device or S_ISREG(mode)):
            raise ProbeError(path, ProbeErrorKind.NOT_A_FILE, "not a regular file")
        try:
            head = os.pread(fd, HEAD_SIZE, 0)
        except OSError as exc:
            raise _error(path, exc) from None
        # a scan probes mostly qcow2 disks: their magic is tested first, inline
        fmt = _QCOW2 if head[:4] == qcow2.MAGIC else _format_of(head)
        if device and fmt is _RAW:
            # a raw volume (LVM, a passed-through disk) ends a chain; a qcow2 written
            # onto a device is read like any other, its backing file counts
            return ImageInfo(path, ImageFormat.DEVICE, 0, None, None, None, 0,
                             st.st_dev, st.st_ino, 0, 0, st.st_mtime,
                             (st.st_mtime_ns, st.st_ctime_ns))
        if fmt is not _QCOW2:
            return ImageInfo(path, fmt, st.st_size, None, None, None, 0, st.st_dev, st.st_ino,
                             st.st_size, st.st_blocks * 512, st.st_mtime,
                             (st.st_mtime_ns, st.st_ctime_ns))

        def read_at(offset: int, length: int) -> bytes:
            return os.pread(fd, length, offset)

        try:
            _, size, _, backing, backing_format, data_file, incompatible = qcow2.parse_fields(
                head, read_at)
        except qcow2.HeaderError as exc:
            msg = str(exc)
            kind = ProbeErrorKind.TRUNCATED if msg.startswith("truncated") else (
                ProbeErrorKind.CORRUPT
            )
            raise ProbeError(path, kind, f"qcow2 header {msg}") from None
        except OSError as exc:
            raise _error(path, exc) from None
        return ImageInfo(path, fmt, size, backing, backing_format, data_file,
                         incompatible & ~qcow2.KNOWN_INCOMPAT,  # Qcow2Header's unknown bits
                         st.st_dev, st.st_ino, st.st_size, st.st_blocks * 512, st.st_mtime,
                         (st.st_mtime_ns, st.st_ctime_ns))
    finally:
        os.close(fd)


def _error(path: str, exc: OSError) -> ProbeError:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return ProbeError(path, ProbeErrorKind.MISSING, "no such file")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return ProbeError(path, ProbeErrorKind.UNREADABLE, "permission denied")
    if exc.errno == errno.ELOOP:
        return ProbeError(path, ProbeErrorKind.UNREADABLE, "too many levels of symbolic links")
    return ProbeError(path, ProbeErrorKind.UNREADABLE, exc.strerror or str(exc))
