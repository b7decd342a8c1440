"""An ``.npz`` written in place as a job's chunks arrive, for ``inferhub submit --follow --out``.

``numpy.savez`` writes each array whole, one after the other, and a zip member cannot be
appended to once the next one has begun. Once the first chunk says every output's dtype and
row shape (the job says its rows), the whole file is laid out: one stored (uncompressed) member
per output, ``NAME.npy``, its ``.npy`` header for the full shape, and room for its rows. Each
chunk's rows are then written where they belong, so the results are on disk as they come and
never all in memory. ``close`` fills in each member's CRC-32 and writes the zip's directory
(zip64, as arrays of gigabytes need); ``numpy.load`` and ``zipfile`` read the file as any other.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ZIP64 = 45  # the version a zip64 member needs
FULL = 0xFFFFFFFF  # a 32-bit field whose value is in the zip64 extra field
BLOCK = 1 << 20


@dataclass
class _Member:
    name: str
    dtype: np.dtype[np.generic]
    row_bytes: int
    header_at: int  # where its local file header starts
    npy_at: int  # where its data starts: the .npy header, then the rows
    rows_at: int
    size: int  # of its data
    crc: int = 0


class NpzChunks:
    """Rows of named arrays written into an ``.npz`` as they come; ``rows`` in all."""

    def __init__(self, path: Path, rows: int) -> None:
        self.path = path
        self.rows = rows
        self.written = 0  # rows written so far, for the caller to check the end
        self._members: list[_Member] = []
        self._file: io.BufferedRandom | None = None
        self._stamp = _dos_time(time.localtime())

    def write(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Rows ``start`` onwards of every output."""
        if self._file is None:
            self._lay_out(arrays)
        assert self._file is not None
        for member in self._members:
            data = np.ascontiguousarray(arrays[member.name], dtype=member.dtype)
            self._file.seek(member.rows_at + start * member.row_bytes)
            self._file.write(data.data.cast("B"))
        self.written += len(next(iter(arrays.values())))

    def close(self) -> None:
        """Complete the file: each member's CRC-32, then the zip's directory."""
        if self._file is None:
            raise ValueError("no rows were written")
        file = self._file
        for member in self._members:
            file.seek(member.npy_at)
            crc, left = 0, member.size
            while left:
                block = file.read(min(BLOCK, left))
                crc, left = zlib.crc32(block, crc), left - len(block)
            member.crc = crc
            file.seek(member.header_at + 14)
            file.write(struct.pack("<I", crc))
        file.seek(0, io.SEEK_END)
        directory_at = file.tell()
        for member in self._members:
            file.write(self._central(member))
        directory_size = file.tell() - directory_at
        self._end(directory_at, directory_size)
        file.close()
        self._file = None

    def abort(self) -> None:
        """Remove the unfinished file (a file of that name is left alone until the first rows
        come)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self.path.unlink(missing_ok=True)

    def _lay_out(self, arrays: dict[str, np.ndarray]) -> None:
        self._file = self.path.open("w+b")
        at = 0
        for name, chunk in arrays.items():
            if chunk.dtype.hasobject:
                self.abort()
                raise ValueError(f"output {name!r} is BYTES, which .npz holds only pickled")
            dtype = chunk.dtype.newbyteorder("<") if chunk.dtype.byteorder == ">" else chunk.dtype
            shape = (self.rows, *chunk.shape[1:])
            header = io.BytesIO()
            np.lib.format.write_array_header_2_0(
                header,
                {
                    "descr": np.lib.format.dtype_to_descr(dtype),
                    "fortran_order": False,
                    "shape": shape,
                },
            )
            row_bytes = int(np.prod(chunk.shape[1:], dtype=np.int64)) * dtype.itemsize
            file_name = f"{name}.npy".encode()
            size = len(header.getvalue()) + row_bytes * self.rows
            local = self._local(file_name, size)
            npy_at = at + len(local)
            member = _Member(name, dtype, row_bytes, at, npy_at, npy_at + header.tell(), size)
            self._file.seek(at)
            self._file.write(local + header.getvalue())
            self._members.append(member)
            at += len(local) + size
        self._file.truncate(at)  # the rows' room, filled as they come

    def _local(self, file_name: bytes, size: int) -> bytes:
        extra = struct.pack("<HHQQ", 1, 16, size, size)
        head = struct.pack(
            "<IHHHHHIIIHH",
            0x04034B50,
            ZIP64,
            0,
            0,
            *self._stamp,
            0,
            FULL,
            FULL,
            len(file_name),
            len(extra),
        )
        return head + file_name + extra

    def _central(self, member: _Member) -> bytes:
        file_name = f"{member.name}.npy".encode()
        extra = struct.pack("<HHQQQ", 1, 24, member.size, member.size, member.header_at)
        head = struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            ZIP64,
            ZIP64,
            0,
            0,
            *self._stamp,
            member.crc,
            FULL,
            FULL,
            len(file_name),
            len(extra),
            0,
            0,
            0,
            0o600 << 16,
            FULL,
        )
        return head + file_name + extra

    def _end(self, directory_at: int, directory_size: int) -> None:
        assert self._file is not None
        count = len(self._members)
        record_at = self._file.tell()
        self._file.write(
            struct.pack(
                "<IQHHIIQQQQ",
                0x06064B50,
                44,
                ZIP64,
                ZIP64,
                0,
                0,
                count,
                count,
                directory_size,
                directory_at,
            )
        )
        self._file.write(struct.pack("<IIQI", 0x07064B50, 0, record_at, 1))
        self._file.write(
            struct.pack(
                "<IHHHHIIH",
                0x06054B50,
                0,
                0,
                min(count, 0xFFFF),
                min(count, 0xFFFF),
                min(directory_size, FULL),
                FULL,
                0,
            )
        )


def _dos_time(t: time.struct_time) -> tuple[int, int]:
    """A zip's (time, date) fields."""
    year = max(t.tm_year, 1980)
    return (
        t.tm_hour << 11 | t.tm_min << 5 | t.tm_sec // 2,
        (year - 1980) << 9 | t.tm_mon << 5 | t.tm_mday,
    )
