"""qcow2.parse against real headers written by qemu-img, then patched byte by byte."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_qcow2, make_raw, qemu_img
from novakeeper.images import qcow2

GiB = 1 << 30


def parse_bytes(data: bytes, head_size: int = 4096) -> qcow2.Qcow2Header:
    """Parse as probe does: a head of `head_size` bytes, anything further through read_at."""

    def read_at(offset: int, length: int) -> bytes:
        return data[offset : offset + length]

    return qcow2.parse(data[:head_size], read_at)


def parse_file(path: Path) -> qcow2.Qcow2Header:
    return parse_bytes(path.read_bytes())


def u32(data: bytes, offset: int) -> int:
    return int(struct.unpack_from(">I", data, offset)[0])


def u64(data: bytes, offset: int) -> int:
    return int(struct.unpack_from(">Q", data, offset)[0])


def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return make_raw(tmp_path / "base.raw", 1 << 20)


# --- valid images --------------------------------------------------------------------------


def test_v3_without_backing(tmp_path: Path) -> None:
    h = parse_file(make_qcow2(tmp_path / "disk"))
    assert h.version == 3
    assert h.virtual_size == GiB
    assert h.cluster_bits == 16
    assert h.backing_file is None
    assert h.backing_format is None
    assert h.data_file is None
    assert h.incompatible_features == 0
    assert h.unknown_incompatible == 0


def test_v2_without_backing(tmp_path: Path) -> None:
    h = parse_file(make_qcow2(tmp_path / "disk", extra_args=("-o", "compat=0.10")))
    assert h.version == 2
    assert h.virtual_size == GiB
    assert h.backing_file is None
    assert h.incompatible_features == 0


@pytest.mark.parametrize("compat", ["0.10", "1.1"])
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_backing_file_and_format_extension(tmp_path: Path, compat: str, fmt: str) -> None:
    if fmt == "raw":
        make_raw(tmp_path / "base", 1 << 20)
    else:
        make_qcow2(tmp_path / "base", size="1M")
    path = make_qcow2(
        tmp_path / "disk", backing="base", backing_fmt=fmt, size="2M",
        extra_args=("-o", f"compat={compat}"),
    )
    h = parse_file(path)
    assert h.version == (2 if compat == "0.10" else 3)
    assert h.backing_file == "base"
    assert h.backing_format == fmt
    assert h.virtual_size == 2 << 20


def test_backing_name_is_kept_as_stored(tmp_path: Path) -> None:
    make_raw(tmp_path / "_base" / "b1", 1 << 20)
    path = make_qcow2(tmp_path / "inst" / "disk", backing="../_base/b1", size="1M")
    assert parse_file(path).backing_file == "../_base/b1"
    absolute = str(tmp_path / "_base" / "b1")
    path = make_qcow2(tmp_path / "inst" / "disk2", backing=absolute, size="1M")
    assert parse_file(path).backing_file == absolute


def test_non_utf8_backing_name_roundtrips(tmp_path: Path) -> None:
    name = b"b\xe9se"
    data = make_qcow2(tmp_path / "disk", size="1M").read_bytes()
    off = 0x200
    data = patched(data, 8, ">Q", off)
    data = patched(data, 16, ">I", len(name))
    data = data[:off] + name + data[off + len(name) :]
    h = parse_bytes(data)
    assert h.backing_file is not None
    assert h.backing_file.encode("utf-8", "surrogateescape") == name


@pytest.mark.parametrize(("cluster_size", "bits"), [(512, 9), (2 << 20, 21)])
def test_cluster_size_limits(tmp_path: Path, base: Path, cluster_size: int, bits: int) -> None:
    path = make_qcow2(
        tmp_path / "disk", backing=base.name, size="1M",
        extra_args=("-o", f"cluster_size={cluster_size}"),
    )
    h = parse_file(path)
    assert h.cluster_bits == bits
    assert h.backing_file == base.name
    assert h.backing_format == "raw"


def test_external_data_file(tmp_path: Path) -> None:
    path = make_qcow2(
        tmp_path / "disk", size="1M", extra_args=("-o", "data_file=disk.data,data_file_raw=on")
    )
    assert (tmp_path / "disk.data").exists()
    h = parse_file(path)
    assert h.data_file == "disk.data"
    assert h.incompatible_features & qcow2.INCOMPAT_DATA_FILE
    assert h.unknown_incompatible == 0


def test_data_file_bit_without_name_is_corrupt(tmp_path: Path) -> None:
    data = make_qcow2(tmp_path / "disk", size="1M").read_bytes()
    data = patched(data, 72, ">Q", qcow2.INCOMPAT_DATA_FILE)
    with pytest.raises(qcow2.HeaderError, match="data file"):
        parse_bytes(data)


def test_known_incompatible_bits_are_not_unknown(tmp_path: Path) -> None:
    data = make_qcow2(tmp_path / "disk", size="1M").read_bytes()
    data = patched(data, 72, ">Q", qcow2.INCOMPAT_DIRTY | qcow2.INCOMPAT_EXTL2)
    h = parse_bytes(data)
    assert h.incompatible_features == qcow2.INCOMPAT_DIRTY | qcow2.INCOMPAT_EXTL2
    assert h.unknown_incompatible == 0


@pytest.mark.parametrize("bit", [5, 20, 63])
def test_unknown_incompatible_bits(tmp_path: Path, bit: int) -> None:
    path = make_qcow2(tmp_path / "disk", size="1M")
    data = patched(path.read_bytes(), 72, ">Q", (1 << bit) | qcow2.INCOMPAT_DIRTY)
    h = parse_bytes(data)
    assert h.unknown_incompatible == 1 << bit
    # qemu itself refuses such an image: reading it natively must not pretend otherwise.
    path.write_bytes(data)
    with pytest.raises(AssertionError, match=r"(?i)unsupported|feature"):
        qemu_img("info", "--force-share", str(path))


def test_backing_name_beyond_first_4096_bytes(tmp_path: Path, base: Path) -> None:
    path = make_qcow2(tmp_path / "disk", backing=base.name, size="1M")
    data = path.read_bytes()
    assert u32(data, 20) == 16  # the whole first 64 KiB are header cluster
    off, name = 8192, b"moved-base.raw"
    make_raw(tmp_path / name.decode(), 1 << 20)
    data = patched(data, 8, ">Q", off)
    data = patched(data, 16, ">I", len(name))
    data = data[:off] + name + data[off + len(name) :]
    path.write_bytes(data)

    calls: list[tuple[int, int]] = []

    def read_at(offset: int, length: int) -> bytes:
        calls.append((offset, length))
        return data[offset : offset + length]

    h = qcow2.parse(data[:4096], read_at)
    assert h.backing_file == "moved-base.raw"
    assert h.backing_format == "raw"  # the extension before it is still read
    assert (off, len(name)) in calls
    # qemu agrees that this is a valid image with that backing file.
    info = json.loads(qemu_img("info", "--force-share", "--output=json", str(path)))
    assert info["backing-filename"] == "moved-base.raw"


def test_extensions_stop_at_backing_name_without_end_marker(tmp_path: Path) -> None:
    """qemu walks extensions up to the backing name; an end marker is not required."""
    name = b"base-image-file"  # read as an extension it would be a huge length
    make_raw(tmp_path / name.decode(), 1 << 20)
    data = make_qcow2(tmp_path / "disk", backing=name.decode(), size="1M").read_bytes()
    name_off = u64(data, 8)
    end_marker = name_off - 8
    assert data[end_marker:name_off] == b"\0" * 8
    data = patched(data, 8, ">Q", end_marker)
    data = patched(data, 16, ">I", len(name))
    data = data[:end_marker] + name + data[end_marker + len(name) :]
    h = parse_bytes(data)
    assert (h.backing_file, h.backing_format) == ("base-image-file", "raw")
    (tmp_path / "disk").write_bytes(data)
    info = json.loads(qemu_img("info", "--force-share", "--output=json", str(tmp_path / "disk")))
    assert info["backing-filename"] == "base-image-file"
    assert info["backing-filename-format"] == "raw"


def test_read_at_not_used_when_head_suffices(tmp_path: Path, base: Path) -> None:
    data = make_qcow2(tmp_path / "disk", backing=base.name, size="1M").read_bytes()

    def read_at(offset: int, length: int) -> bytes:
        raise AssertionError(f"unexpected read at {offset}")

    assert qcow2.parse(data[:4096], read_at).backing_file == base.name


def test_is_qcow2(tmp_path: Path) -> None:
    assert qcow2.is_qcow2(make_qcow2(tmp_path / "disk", size="1M").read_bytes()[:4])
    assert not qcow2.is_qcow2(b"QFI")
    assert not qcow2.is_qcow2(b"QED\0")
    assert not qcow2.is_qcow2(b"")


# --- damaged headers -----------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 4, 8, 20, 31, 32, 48, 71, 72, 90, 103, 104, 111])
def test_truncated_v3_header(tmp_path: Path, length: int) -> None:
    data = make_qcow2(tmp_path / "disk", size="1M").read_bytes()
    with pytest.raises(qcow2.HeaderError, match=r"^truncated"):
        parse_bytes(data[:length])


@pytest.mark.parametrize("length", [40, 71, 72, 79])
def test_truncated_v2_header(tmp_path: Path, length: int) -> None:
    data = make_qcow2(tmp_path / "disk", size="1M", extra_args=("-o", "compat=0.10")).read_bytes()
    with pytest.raises(qcow2.HeaderError, match=r"^truncated"):
        parse_bytes(data[:length])


def test_truncated_inside_extensions_and_backing_name(tmp_path: Path, base: Path) -> None:
    data = make_qcow2(tmp_path / "disk", backing=base.name, size="1M").read_bytes()
    name_off = u64(data, 8)
    header_length = u32(data, 100)
    assert name_off > header_length + 8
    for length in (header_length + 4, header_length + 12, name_off + 1, name_off + 3):
        with pytest.raises(qcow2.HeaderError, match=r"^truncated"):
            parse_bytes(data[:length], head_size=length)
    # One byte more than the name and it parses again.
    end = name_off + len(base.name)
    assert parse_bytes(data[:end], head_size=end).backing_file == base.name


def test_absurd_backing_file_size(tmp_path: Path, base: Path) -> None:
    data = make_qcow2(tmp_path / "disk", backing=base.name, size="1M").read_bytes()
    with pytest.raises(qcow2.HeaderError, match=r"^corrupt: .*5000 bytes"):
        parse_bytes(patched(data, 16, ">I", 5000))
    # 1023 is the largest name qemu accepts: the limit itself is not an error of size.
    with pytest.raises(qcow2.HeaderError) as exc:
        parse_bytes(patched(data, 16, ">I", 1023))
    assert "max 1023" not in str(exc.value)


@pytest.mark.parametrize(
    "offset",
    [
        (1 << 16) + 8,  # past the first cluster
        (1 << 16) - 4,  # starts inside, ends outside
        1 << 40,
    ],
)
def test_backing_offset_outside_cluster(tmp_path: Path, base: Path, offset: int) -> None:
    data = make_qcow2(tmp_path / "disk", backing=base.name, size="1M").read_bytes()
    with pytest.raises(qcow2.HeaderError, match="outside header"):
        parse_bytes(patched(data, 8, ">Q", offset))


@pytest.mark.parametrize("offset", [8, 50, 100])
def test_backing_offset_inside_header(tmp_path: Path, base: Path, offset: int) -> None:
    data = make_qcow2(tmp_path / "disk", backing=base.name, size="1M").read_bytes()
    with pytest.raises(qcow2.HeaderError, match="inside header"):
        parse_bytes(patched(data, 8, ">Q", offset))


def test_nul_in_backing_name(tmp_path: Path, base: Path) -> None:
    data = make_qcow2(tmp_path / "disk", backing=base.name, size="1M").read_bytes()
    off = u64(data, 8)
    assert data[off : off + len(base.name)] == base.name.encode()
    with pytest.raises(qcow2.HeaderError, match="NUL"):
        parse_bytes(patched(data, off + 2, ">B", 0))


def test_empty_backing_name(tmp_path: Path, base: Path) -> None:
    data = make_qcow2(tmp_path / "disk", backing=base.name, size="1M").read_bytes()
    with pytest.raises(qcow2.HeaderError, match="empty"):
        parse_bytes(patched(data, 16, ">I", 0))


@pytest.mark.parametrize("version", [0, 1, 4, 0xFFFFFFFF])
def test_unsupported_version(tmp_path: Path, version: int) -> None:
    data = make_qcow2(tmp_path / "disk", size="1M").read_bytes()
    with pytest.raises(qcow2.HeaderError, match=f"unsupported qcow2 version {version}$"):
        parse_bytes(patched(data, 4, ">I", version))


def test_bad_magic(tmp_path: Path) -> None:
    data = make_qcow2(tmp_path / "disk", size="1M").read_bytes()
    with pytest.raises(qcow2.HeaderError, match="not a qcow2"):
        parse_bytes(b"QFI\xfa" + data[4:])


@pytest.mark.parametrize("bits", [0, 8, 22, 64])
def test_cluster_bits_out_of_range(tmp_path: Path, bits: int) -> None:
    data = make_qcow2(tmp_path / "disk", size="1M").read_bytes()
    with pytest.raises(qcow2.HeaderError, match="cluster_bits"):
        parse_bytes(patched(data, 20, ">I", bits))


@pytest.mark.parametrize("length", [0, 72, 100, 106, 1 << 20])
def test_bad_header_length(tmp_path: Path, length: int) -> None:
    data = make_qcow2(tmp_path / "disk", size="1M").read_bytes()
    with pytest.raises(qcow2.HeaderError, match="header_length"):
        parse_bytes(patched(data, 100, ">I", length))


def test_header_length_larger_than_small_cluster(tmp_path: Path) -> None:
    data = make_qcow2(
        tmp_path / "disk", size="1M", extra_args=("-o", "cluster_size=512")
    ).read_bytes()
    with pytest.raises(qcow2.HeaderError, match="exceeds cluster size"):
        parse_bytes(patched(data, 100, ">I", 520))


def test_extension_overrunning_the_header(tmp_path: Path, base: Path) -> None:
    data = make_qcow2(tmp_path / "disk", backing=base.name, size="1M").read_bytes()
    ext = u32(data, 100)  # first extension right after the header
    assert u32(data, ext) == qcow2.EXT_BACKING_FORMAT
    with pytest.raises(qcow2.HeaderError, match="overruns"):
        parse_bytes(patched(data, ext + 4, ">I", 0xFFFFFF))


# --- property: nothing but a header or HeaderError ----------------------------------------


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    d = tmp_path_factory.mktemp("seeds")
    make_raw(d / "base", 1 << 20)
    made = [
        make_qcow2(d / "v3", size="1M"),
        make_qcow2(d / "v2", size="1M", extra_args=("-o", "compat=0.10")),
        make_qcow2(d / "v3b", backing="base", size="1M"),
        make_qcow2(d / "v2b", backing="base", size="1M", extra_args=("-o", "compat=0.10")),
        make_qcow2(d / "small", backing="base", size="1M",
                   extra_args=("-o", "cluster_size=512")),
        make_qcow2(d / "df", size="1M", extra_args=("-o", "data_file=df.data,data_file_raw=on")),
    ]
    out = [p.read_bytes()[:16384] for p in made]
    far = bytearray(out[2])
    struct.pack_into(">Q", far, 8, 8192)
    far[8192 : 8192 + 4] = b"base"
    out.append(bytes(far))
    return out


FIELDS = [4, 8, 12, 16, 20, 24, 32, 72, 80, 88, 96, 100, 104, 108, 112, 116, 120, 124]
INTERESTING = [
    0, 1, 2, 3, 4, 7, 8, 9, 16, 21, 22, 72, 104, 105, 112, 120, 512, 1023, 1024, 4096,
    8192, 65535, 65536, 65537, 1 << 21, (1 << 31), (1 << 32) - 1, 1 << 32, 1 << 63,
    (1 << 64) - 1,
]
_offset = st.one_of(st.sampled_from(FIELDS), st.integers(0, 600))
_value = st.one_of(st.sampled_from(INTERESTING), st.integers(0, (1 << 64) - 1))
_mutation = st.one_of(
    st.tuples(st.just("B"), st.integers(0, 600), st.integers(0, 255)),
    st.tuples(st.just("I"), _offset, _value),
    st.tuples(st.just("Q"), _offset, _value),
    st.tuples(st.just("cut"), st.integers(0, 9000), st.just(0)),
)
MUTATIONS = st.lists(_mutation, min_size=1, max_size=6)
RANDOM_BYTES = st.one_of(
    st.binary(max_size=400),
    st.builds(
        lambda v, rest: qcow2.MAGIC + struct.pack(">I", v) + rest,
        st.sampled_from([2, 3]),
        st.binary(max_size=400),
    ),
)


def mutate(seed: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(seed)
    for kind, offset, value in mutations:
        if kind == "cut":
            del buf[offset:]
            continue
        size = struct.calcsize(">" + kind)
        if offset + size <= len(buf):
            struct.pack_into(">" + kind, buf, offset, value & ((1 << (8 * size)) - 1))
    return bytes(buf)


def check_parse(data: bytes) -> None:
    try:
        h = parse_bytes(data)
    except qcow2.HeaderError:
        return
    assert isinstance(h, qcow2.Qcow2Header)
    assert h.version in (2, 3)
    assert qcow2.MIN_CLUSTER_BITS <= h.cluster_bits <= qcow2.MAX_CLUSTER_BITS
    if h.backing_file is not None:
        raw = h.backing_file.encode("utf-8", "surrogateescape")
        assert raw and b"\0" not in raw and len(raw) <= qcow2.MAX_BACKING_NAME


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=RANDOM_BYTES)
def test_parse_random_bytes(data: bytes) -> None:
    check_parse(data)


@settings(max_examples=600, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, 6), mutations=MUTATIONS)
def test_parse_mutated_real_headers(
    seeds: list[bytes], index: int, mutations: list[tuple[str, int, int]]
) -> None:
    check_parse(mutate(seeds[index], mutations))


def test_seeds_parse_unmutated(seeds: list[bytes]) -> None:
    """The property above starts from valid headers: check that they are."""
    names = [parse_bytes(s).backing_file for s in seeds]
    assert names == [None, None, "base", "base", "base", None, "base"]
