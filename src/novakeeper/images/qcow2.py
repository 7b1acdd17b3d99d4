"""The qcow2 header, read natively: nova runs `qemu-img info` once per disk, we read 4 KiB.

Only what decides which files a disk depends on is parsed: version, virtual size,
backing file name and format, external data file and the feature bits that change
how an image must be read. Every inconsistency raises `HeaderError` with a short
reason; the caller turns it into a problem, never a crash.

Layout (big-endian, see qemu's docs/interop/qcow2.txt):
magic "QFI\\xfb" @0, version u32 @4, backing_file_offset u64 @8, backing_file_size u32 @16,
cluster_bits u32 @20, size u64 @24; v3 adds incompatible_features u64 @72,
compatible u64 @80, autoclear u64 @88, refcount_order u32 @96, header_length u32 @100.
Header extensions follow the header: type u32, length u32, data padded to 8 bytes.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass

MAGIC = b"QFI\xfb"
V2_HEADER_LENGTH = 72
V3_HEADER_LENGTH = 104
MAX_BACKING_NAME = 1023  # qemu refuses longer names ("Backing file name too long")
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
KNOWN_INCOMPAT = (
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2
)

_V2 = struct.Struct(">4sIQIIQ")  # magic, version, backing off, backing size, cluster_bits, size
_V3 = struct.Struct(">QQQII")  # incompatible, compatible, autoclear, refcount_order, hdr length
_EXT = struct.Struct(">II")
_NAMED_EXTENSIONS = frozenset({EXT_BACKING_FORMAT, EXT_DATA_FILE})

# os.fsdecode's codec, looked up once: a scan decodes two names per disk
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()

ReadAt = Callable[[int, int], bytes]
"""read_at(offset, length) -> bytes; may return fewer bytes at end of file."""


class HeaderError(ValueError):
    """The header is not a valid qcow2 header; the message says why in a few words."""


@dataclass(frozen=True, slots=True)
class Qcow2Header:
    version: int
    virtual_size: int
    cluster_bits: int
    backing_file: str | None
    """Exactly as stored (decoded with surrogateescape); relative names are not resolved."""
    backing_format: str | None
    data_file: str | None
    incompatible_features: int

    @property
    def unknown_incompatible(self) -> int:
        """Feature bits we do not understand: qemu itself refuses such images."""
        return self.incompatible_features & ~KNOWN_INCOMPAT


def is_qcow2(head: bytes) -> bool:
    return head[:4] == MAGIC


def _read_exact(head: bytes, read_at: ReadAt, offset: int, length: int, what: str) -> bytes:
    """Take bytes from the already-read head when possible, else read them."""
    if offset + length <= len(head):
        return head[offset : offset + length]
    data = read_at(offset, length)
    if len(data) < length:
        raise HeaderError(f"truncated: {what} at byte {offset} ends past end of file")
    return data


def _decode_name(raw: bytes, what: str) -> str:
    if b"\0" in raw:
        raise HeaderError(f"corrupt: {what} contains a NUL byte")
    if not raw:
        raise HeaderError(f"corrupt: empty {what}")
    return raw.decode(_FS_ENCODING, _FS_ERRORS)  # os.fsdecode, without its checks


Fields = tuple[int, int, int, str | None, str | None, str | None, int]
"""Qcow2Header's fields, in its order."""


def parse(head: bytes, read_at: ReadAt) -> Qcow2Header:
    """Parse a qcow2 header from the first bytes of a file.

    `head` is what was read from offset 0 (4 KiB is enough for every image qemu or nova
    writes); `read_at` fetches anything that lies beyond it.
    """
    return Qcow2Header(*parse_fields(head, read_at))


def parse_fields(head: bytes, read_at: ReadAt) -> Fields:
    """`parse`, as a plain tuple: what a scan reads for every disk, without building a
    Qcow2Header it would take apart again at once."""
    if len(head) < _V2.size:
        raise HeaderError(f"truncated: qcow2 header is {len(head)} bytes, needs {V2_HEADER_LENGTH}")
    magic, version, backing_off, backing_size, cluster_bits, size = _V2.unpack_from(head, 0)
    if magic != MAGIC:
        raise HeaderError("not a qcow2 image")
    if version not in (2, 3):
        raise HeaderError(f"unsupported qcow2 version {version}")
    if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
        raise HeaderError(f"corrupt: cluster_bits {cluster_bits} out of range 9..21")
    cluster_size = 1 << cluster_bits
    if len(head) < V2_HEADER_LENGTH:
        raise HeaderError(f"truncated: qcow2 header is {len(head)} bytes, needs {V2_HEADER_LENGTH}")

    incompatible = 0
    header_length = V2_HEADER_LENGTH
    if version == 3:
        if len(head) < V3_HEADER_LENGTH:
            raise HeaderError(
                f"truncated: qcow2 v3 header is {len(head)} bytes, needs {V3_HEADER_LENGTH}"
            )
        incompatible, _compat, _autoclear, _refcount_order, header_length = _V3.unpack_from(
            head, V2_HEADER_LENGTH
        )
        if header_length < V3_HEADER_LENGTH or header_length % 8:
            raise HeaderError(f"corrupt: header_length {header_length}")
        if header_length > cluster_size:
            raise HeaderError(f"corrupt: header_length {header_length} exceeds cluster size")

    backing_file: str | None = None
    if backing_off:
        if backing_size > MAX_BACKING_NAME:
            raise HeaderError(f"corrupt: backing file name of {backing_size} bytes (max 1023)")
        if backing_off > cluster_size or backing_off + backing_size > cluster_size:
            raise HeaderError(f"corrupt: backing file name at offset {backing_off} outside header")
        if backing_off < header_length:
            raise HeaderError(f"corrupt: backing file name at offset {backing_off} inside header")
        raw = _read_exact(head, read_at, backing_off, backing_size, "backing file name")
        backing_file = _decode_name(raw, "backing file name")

    backing_format, data_file = _read_extensions(
        head, read_at, header_length, backing_off or cluster_size
    )
    if incompatible & INCOMPAT_DATA_FILE and data_file is None:
        raise HeaderError("corrupt: external data file bit set but no data file name")
    return (version, size, cluster_bits, backing_file, backing_format, data_file,
            incompatible)


def _read_extensions(
    head: bytes, read_at: ReadAt, start: int, end: int
) -> tuple[str | None, str | None]:
    """Walk header extensions from `start` until the end marker or `end`."""
    backing_format: str | None = None
    data_file: str | None = None
    offset = start
    # What lies in the head already read is taken from it directly (as _read_exact would,
    # without a call per extension): all of it, for every image qemu-img writes.
    head_len = len(head)
    while offset + _EXT.size <= end:
        if offset + _EXT.size <= head_len:
            ext_type, ext_len = _EXT.unpack_from(head, offset)
        else:
            ext_type, ext_len = _EXT.unpack(
                _read_exact(head, read_at, offset, _EXT.size, "extension"))
        offset += _EXT.size
        if ext_type == EXT_END:
            break
        if offset + ext_len > end:
            raise HeaderError(f"corrupt: header extension {ext_type:#x} overruns the header")
        if ext_type in _NAMED_EXTENSIONS:
            data = (head[offset : offset + ext_len] if offset + ext_len <= head_len
                    else _read_exact(head, read_at, offset, ext_len, "extension"))
            if ext_type == EXT_BACKING_FORMAT:
                backing_format = _decode_name(data, "backing format").strip()
            else:
                data_file = _decode_name(data, "data file name")
        offset += (ext_len + 7) & ~7
    return backing_format, data_file
