"""Probe one file: what format it is and which file it names as its backing file.

One open and one 4 KiB read per file, no subprocess. Raw is what qemu calls a file with no
recognised header. Formats that can have a backing file but that we do not parse (QED,
VMDK, VHDX) are reported as such so the caller can treat them as a doubt.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from enum import StrEnum

from novakeeper.images import qcow2

HEAD_SIZE = 4096


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
    if os.path.isabs(backing_file):
        return backing_file
    return os.path.join(os.path.dirname(image_path), backing_file)


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
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise _error(path, exc) from None
    try:
        st = os.fstat(fd)
        device = stat.S_ISBLK(st.st_mode)
        if not (device or stat.S_ISREG(st.st_mode)):
            raise ProbeError(path, ProbeErrorKind.NOT_A_FILE, "not a regular file")
        try:
            head = os.pread(fd, HEAD_SIZE, 0)
        except OSError as exc:
            raise _error(path, exc) from None
        fmt = _format_of(head)
        if device and fmt is ImageFormat.RAW:
            # a raw volume (LVM, a passed-through disk) ends a chain; a qcow2 written
            # onto a device is read like any other, its backing file counts
            return ImageInfo(path, ImageFormat.DEVICE, 0, None, None, None, 0,
                             st.st_dev, st.st_ino, 0, 0, st.st_mtime,
                             (st.st_mtime_ns, st.st_ctime_ns))
        backing = backing_format = data_file = None
        virtual_size = st.st_size
        unknown = 0
        if fmt is ImageFormat.QCOW2:

            def read_at(offset: int, length: int) -> bytes:
                return os.pread(fd, length, offset)

            try:
                header = qcow2.parse(head, read_at)
            except qcow2.HeaderError as exc:
                msg = str(exc)
                kind = ProbeErrorKind.TRUNCATED if msg.startswith("truncated") else (
                    ProbeErrorKind.CORRUPT
                )
                raise ProbeError(path, kind, f"qcow2 header {msg}") from None
            except OSError as exc:
                raise _error(path, exc) from None
            backing = header.backing_file
            backing_format = header.backing_format
            data_file = header.data_file
            virtual_size = header.virtual_size
            unknown = header.unknown_incompatible
        return ImageInfo(
            path=path,
            format=fmt,
            virtual_size=virtual_size,
            backing_file=backing,
            backing_format=backing_format,
            data_file=data_file,
            unknown_features=unknown,
            dev=st.st_dev,
            ino=st.st_ino,
            size=st.st_size,
            allocated=st.st_blocks * 512,
            mtime=st.st_mtime,
            changed=(st.st_mtime_ns, st.st_ctime_ns),
        )
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
