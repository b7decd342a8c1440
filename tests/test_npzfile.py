"""The .npz that ``inferhub submit --follow --out`` fills chunk by chunk (cli/npzfile.py): rows
on disk as each chunk is written, and a file that numpy and zipfile read whole at the end."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from cli.npzfile import NpzChunks


def outputs(rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {
        "label": rng.integers(0, 10, rows),
        "probabilities": rng.random((rows, 10), dtype=np.float32),
        "big_endian": rng.random((rows, 3)).astype(">f8"),
    }


def test_rows_are_on_disk_as_each_chunk_is_written(tmp_path: Path) -> None:
    whole = outputs(1000)
    out = tmp_path / "outputs.npz"
    file = NpzChunks(out, 1000)
    for start in range(0, 1000, 256):
        file.write(start, {name: a[start : start + 256] for name, a in whole.items()})
        on_disk = out.read_bytes()
        for array in whole.values():
            done = array[: start + 256].astype(array.dtype.newbyteorder("<"))
            assert done.tobytes() in on_disk  # already written, before the file is complete
    assert file.written == 1000
    file.close()
    assert zipfile.ZipFile(out).testzip() is None  # every member's CRC-32 checks
    with np.load(out) as archive:
        assert archive.files == list(whole)
        for name, array in whole.items():
            assert np.array_equal(archive[name], array)
            assert archive[name].dtype == array.dtype.newbyteorder("<")


def test_chunks_may_come_in_any_order(tmp_path: Path) -> None:
    whole = outputs(10)
    file = NpzChunks(tmp_path / "o.npz", 10)
    for start in (6, 0, 3):
        file.write(
            start, {name: a[start : start + (4 if start == 6 else 3)] for name, a in whole.items()}
        )
    file.close()
    with np.load(tmp_path / "o.npz") as archive:
        assert np.array_equal(archive["probabilities"], whole["probabilities"])


def test_abort_removes_the_unfinished_file_but_not_one_it_never_began(tmp_path: Path) -> None:
    out = tmp_path / "outputs.npz"
    out.write_bytes(b"the user's")
    NpzChunks(out, 10).abort()
    assert out.read_bytes() == b"the user's"
    file = NpzChunks(out, 10)
    file.write(0, {"y": np.zeros((5, 2), np.float32)})
    file.abort()
    assert not out.exists()


def test_bytes_outputs_have_no_npz_form(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="BYTES"):
        NpzChunks(tmp_path / "o.npz", 2).write(0, {"t": np.array([b"a", b"b"], dtype=object)})
    assert not (tmp_path / "o.npz").exists()
