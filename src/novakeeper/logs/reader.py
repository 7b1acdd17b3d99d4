"""The bytes of one log file, streamed: plain files read straight into the caller's buffer,
gzip files (logrotate's `.gz`, several members allowed) decompressed on the fly with zlib.

Nothing here holds a whole file. A gzip file that ends early or is corrupt yields what
could be decompressed and then says where it stopped (`problem`), so a half-copied
rotated log still gets searched.
"""

from __future__ import annotations

import io
import os
import zlib
from typing import Protocol

GZIP_READ = 1 << 20  # compressed bytes fed to zlib at a time


class Source(Protocol):
    problem: str | None

    def readinto(self, view: memoryview) -> int: ...

    def close(self) -> None: ...


class PlainSource:
    """Bytes [start, end) of a plain file (end None: to the end of the file)."""

    def __init__(self, path: str, start: int = 0, end: int | None = None) -> None:
        self.problem: str | None = None
        self._f = io.FileIO(path, "r")
        try:
            fd = self._f.fileno()
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, start, 0, os.POSIX_FADV_SEQUENTIAL)
            self._f.seek(start)
        except OSError:
            self._f.close()
            raise
        self._left = None if end is None else max(0, end - start)

    def readinto(self, view: memoryview) -> int:
        if self._left is not None:
            if self._left <= 0:
                return 0
            view = view[:self._left]
        try:
            n = self._f.readinto(view) or 0
        except OSError as exc:
            self.problem = f"read error: {exc.strerror or exc}"
            return 0
        if self._left is not None:
            self._left -= n
        return n

    def close(self) -> None:
        self._f.close()


class GzipSource:
    """The decompressed bytes of a gzip file."""

    def __init__(self, path: str) -> None:
        self.problem: str | None = None
        self._f = io.FileIO(path, "r")
        self._d = zlib.decompressobj(wbits=31)
        self._done = False
        self._members = 1
        self.compressed_read = 0  # bytes of the file fed to zlib so far
        self.produced = 0  # decompressed bytes handed out so far

    def _stop(self, problem: str | None) -> int:
        self.problem = problem
        self._done = True
        return 0

    def readinto(self, view: memoryview) -> int:
        while not self._done:
            if self._d.eof:
                data = self._d.unused_data or self._read()
                if not data.strip(b"\0"):  # end of file, or zero padding after the last member
                    return self._stop(None)
                self._d = zlib.decompressobj(wbits=31)
                self._members += 1
            elif self._d.unconsumed_tail:
                data = self._d.unconsumed_tail
            else:
                data = self._read()
                if not data:
                    return self._stop(
                        f"truncated gzip file: its data ends at byte {self.compressed_read:,} "
                        f"inside member {self._members}; stopped after {self.produced:,} "
                        "decompressed bytes")
            try:
                out = self._d.decompress(data, len(view))
            except zlib.error as exc:
                return self._stop(
                    f"corrupt gzip data near byte {self.compressed_read:,} ({exc}); stopped "
                    f"after {self.produced:,} decompressed bytes")
            if out:
                n = len(out)
                view[:n] = out
                self.produced += n
                return n
        return 0

    def _read(self) -> bytes:
        try:
            data = self._f.read(GZIP_READ) or b""
        except OSError as exc:
            self._stop(f"read error: {exc.strerror or exc}")
            return b""
        self.compressed_read += len(data)
        return data

    def close(self) -> None:
        self._f.close()


def open_source(path: str, compressed: bool, start: int = 0,
                end: int | None = None) -> Source:
    """Raises OSError (PermissionError, FileNotFoundError...) when the file cannot be
    opened: the caller lists it as skipped."""
    if compressed:
        return GzipSource(path)
    return PlainSource(path, start, end)
