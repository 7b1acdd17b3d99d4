"""Coverage-guided fuzzing of the native qcow2 reader with atheris (libFuzzer).

    python tests/adversarial/fuzz_qcow2_atheris.py -atheris_runs=100000 [CORPUS_DIR ...]

Without a corpus folder, one is made from real images written by qemu-img (v2, v3, with a
backing file, with the backing format extension, with an external data file, extended L2,
zstd compression, LUKS encryption). Each input is parsed in memory (qcow2.parse), then
written to a file and probed (probe.probe) and followed (chain.follow). Anything but the
documented HeaderError / ProbeError, or an answer that breaks an invariant (see
check_header), is a crash that libFuzzer reports with the input that caused it.

Not collected by pytest (no test_ prefix); tests/adversarial/test_fuzz_qcow2.py runs it
for a bounded number of runs when atheris is installed, and shares the helpers below.
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

from novakeeper.images import chain, probe, qcow2

QEMU_IMG = shutil.which("qemu-img") or "qemu-img"
MAX_CLUSTER = 1 << qcow2.MAX_CLUSTER_BITS


def _create(folder: str, name: str, *args: str | bytes) -> None:
    subprocess.run([QEMU_IMG, "create", "-q", "-f", "qcow2", *args,
                    os.path.join(folder, name), "1M"],
                   check=True, capture_output=True, timeout=60, cwd=folder)


def make_seeds(folder: str) -> dict[str, bytes]:
    """Real qcow2 images made by qemu-img in `folder`; name -> the whole file."""
    base = os.path.join(folder, "base.raw")
    with open(base, "wb") as f:
        f.truncate(1 << 20)
    long_name = "../" + "x/../" * 150 + "base.raw"  # 753 bytes, resolves to ../base.raw
    variants: dict[str, list[str | bytes]] = {
        "v2": ["-o", "compat=0.10"],
        "v2-backing": ["-o", "compat=0.10", "-b", base, "-F", "raw"],
        "v3": [],
        "v3-backing": ["-b", base, "-F", "raw"],
        "v3-relative-backing": ["-u", "-b", "../_base/base.raw", "-F", "raw"],
        "v3-long-backing": ["-u", "-b", long_name, "-F", "raw"],
        "v3-bytes-backing": [b"-u", b"-b", b"base-\xff\xfe\n .raw", b"-F", b"raw"],
        "v3-qcow2-backing": ["-b", "v3.qcow2", "-F", "qcow2"],
        "data-file": ["-o", f"data_file={os.path.join(folder, 'data.raw')}"],
        "data-file-raw": ["-o", f"data_file={os.path.join(folder, 'data2.raw')},"
                          "data_file_raw=on"],
        "extended-l2": ["-o", "extended_l2=on", "-b", base, "-F", "raw"],
        "zstd": ["-o", "compression_type=zstd"],
        "lazy-refcounts": ["-o", "lazy_refcounts=on", "-b", base, "-F", "raw"],
        "cluster-512": ["-o", "cluster_size=512", "-b", base, "-F", "raw"],
        "cluster-2M": ["-o", "cluster_size=2M"],
        "luks": ["--object", "secret,id=sec0,data=secret", "-o",
                 "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"],
    }
    seeds = {}
    for name, args in variants.items():
        file = name + ".qcow2"
        try:
            _create(folder, file, *args)
        except subprocess.CalledProcessError as exc:  # an older qemu-img: fewer seeds
            print(f"seed {name} not made: {exc.stderr!r}", file=sys.stderr)
            continue
        with open(os.path.join(folder, file), "rb") as f:
            seeds[name] = f.read()
    return seeds


def checked_reader(data: bytes) -> tuple[Callable[[int, int], bytes], list[tuple[int, int]]]:
    """read_at over `data` that records every request."""
    asked: list[tuple[int, int]] = []

    def read_at(offset: int, length: int) -> bytes:
        asked.append((offset, length))
        return data[offset:offset + length]

    return read_at, asked


def check_name(value: str | None, what: str) -> None:
    """A name from a header: None, or a plain non-empty str with no NUL that turns back
    into the very bytes on disk (surrogateescape), at most 1023 bytes for a backing name."""
    if value is None:
        return
    assert type(value) is str, f"{what}: {type(value)}"
    assert value and "\0" not in value, f"{what}: {value!r}"
    raw = os.fsencode(value)
    assert os.fsdecode(raw) == value, f"{what}: {value!r} does not round-trip"


def check_header(data: bytes) -> qcow2.Qcow2Header | None:
    """Parse `data` as qcow2 in memory; only HeaderError may come out, and an answer must
    keep every invariant. Returns the header, or None when it was refused."""
    read_at, asked = checked_reader(data)
    try:
        header = qcow2.parse(data[:probe.HEAD_SIZE], read_at)
    except qcow2.HeaderError as exc:
        assert str(exc), "a HeaderError says why"
        header = None
    for offset, length in asked:  # never beyond the header's first cluster
        assert offset >= 0 and length >= 0 and offset + length <= MAX_CLUSTER, asked
    if header is None:
        return None
    check_name(header.backing_file, "backing file")
    check_name(header.data_file, "data file")
    if header.backing_file is not None:
        assert len(os.fsencode(header.backing_file)) <= qcow2.MAX_BACKING_NAME
    if header.backing_format is not None:
        assert type(header.backing_format) is str and "\0" not in header.backing_format
    assert header.version in (2, 3)
    assert qcow2.MIN_CLUSTER_BITS <= header.cluster_bits <= qcow2.MAX_CLUSTER_BITS
    if header.incompatible_features & qcow2.INCOMPAT_DATA_FILE:
        assert header.data_file is not None
    return header


def check_file(path: str) -> probe.ImageInfo | None:
    """Probe and follow the file at `path`: only ProbeError may come out of the probe,
    nothing out of follow, and the chain must end within its bounds."""
    try:
        info = probe.probe(path)
    except probe.ProbeError as exc:
        assert isinstance(exc.kind, probe.ProbeErrorKind) and exc.detail
        return None
    check_name(info.backing_file, "backing file")
    check_name(info.data_file, "data file")
    probed: list[str] = []

    def recording(p: str) -> probe.ImageInfo:
        probed.append(p)
        return probe.probe(p)

    result = chain.follow(info, chain.CachedProber(recording))
    assert len(result.links) <= chain.MAX_CHAIN_DEPTH
    assert len(probed) <= chain.MAX_CHAIN_DEPTH + 1, probed
    for link in result.links:
        assert type(link.path) is str and os.path.lexists(link.path), link.path
    if result.complete:
        last = result.links[-1] if result.links else info
        assert last.backing_file is None or last.format is not probe.ImageFormat.QCOW2
    else:
        assert result.broken is not None and type(result.broken_at) is str
    return info


def main() -> None:
    import atheris

    # coverage of novakeeper's reader only (instrumenting everything loaded takes long):
    # import it again under instrumentation and point the helpers above at it
    import novakeeper.images as package

    names = ("qcow2", "probe", "chain")
    for name in names:
        sys.modules.pop(f"{package.__name__}.{name}", None)
        delattr(package, name)
    with atheris.instrument_imports(include=[package.__name__]):
        fresh = {name: importlib.import_module(f"{package.__name__}.{name}")
                 for name in names}
    globals().update(fresh)

    work = tempfile.mkdtemp(prefix="fuzz-qcow2-")
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    args = list(sys.argv)
    if not [a for a in args[1:] if not a.startswith("-")]:  # no corpus given: make one
        seeds, corpus = os.path.join(work, "seeds"), os.path.join(work, "corpus")
        os.mkdir(seeds)
        os.mkdir(corpus)
        for name, data in make_seeds(seeds).items():
            with open(os.path.join(corpus, name), "wb") as f:
                f.write(data[:8192])  # the header, its extensions and names
        args.append(corpus)
    # each input is written to a file: on tmpfs when there is one (ext4 takes 0.6 ms to
    # truncate and rewrite a file, tmpfs a few microseconds)
    scratch = tempfile.mkdtemp(prefix="fuzz-qcow2-", dir="/dev/shm" if os.access(
        "/dev/shm", os.W_OK) else None)
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    target = os.path.join(scratch, "disk")

    def one_input(data: bytes) -> None:
        check_header(data)
        with open(target, "wb") as f:
            f.write(data)
        check_file(target)

    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
