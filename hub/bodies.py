"""The binary bodies ``POST /v1/jobs`` takes beside JSON, for bulk inputs that JSON would
multiply by ten:

- the V2 binary tensor form (``Inference-Header-Content-Length``: a JSON header naming each
  input's datatype, shape and ``binary_data_size``, then the raw bytes), as ``/v2`` reads it;
- ``application/x-npy``: one array, numpy's own format, for the model's input (``?input=``
  when it has several);
- ``application/x-npz``: one array per input, named as the inputs (``numpy.savez``, plain or
  compressed).

The model and the job's options come from the query (``?model=&version=&priority=&outputs=``,
priority on ``/v1``'s scale); a V2 header may name its ``outputs`` and ``parameters`` too. Sizes are checked against
the body limit as the body declares them, before anything is decoded: a compressed ``.npz``
cannot inflate past it. Object arrays are refused (they would need pickle).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contract.errors import InvalidInput, MalformedRequest, TooLarge
from hub.v2 import codec

HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}

NPY = "application/x-npy"
NPZ = "application/x-npz"


@dataclass
class BinaryJob:
    arrays: dict[str, np.ndarray]  # an .npy's one array is named "" until the model names it
    outputs: list[str] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""


def is_binary(content_type: str | None, header_length: str | None) -> bool:
    return header_length is not None or _media(content_type) in (NPY, NPZ)


def parse(
    content_type: str | None, header_length: str | None, body: bytes, max_bytes: int
) -> BinaryJob:
    """The arrays and options of a binary body; a 400 or 413 that says what is wrong."""
    fingerprint = hashlib.sha256(body).hexdigest()[:32]
    if header_length is not None:
        parsed = codec.parse_request(body, header_length)
        outputs = [o.name for o in parsed.outputs] if parsed.outputs else None
        return BinaryJob(parsed.arrays, outputs, parsed.parameters, fingerprint)
    if _media(content_type) == NPY:
        return BinaryJob(
            {"": _npy(io.BytesIO(body), len(body), "the body")}, fingerprint=fingerprint
        )
    return BinaryJob(_npz(body, max_bytes), fingerprint=fingerprint)


def name_inputs(
    job: BinaryJob, signature: dict[str, Any], model: str, input_name: str | None
) -> dict[str, np.ndarray]:
    """The arrays under the model's input names: an .npy's one array goes to ``input_name``,
    or to the model's only input."""
    if "" not in job.arrays:
        return job.arrays
    if input_name is None:
        if len(signature) != 1:
            raise InvalidInput(
                f"model '{model}' has {len(signature)} inputs ({', '.join(signature)}): "
                "name the one this .npy is with ?input=, or send an .npz of them all"
            )
        (input_name,) = signature
    return {input_name: job.arrays[""]}


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _npy(stream: Any, available: int, where: str) -> np.ndarray:
    try:
        version = np.lib.format.read_magic(stream)
        if version not in HEADER_READERS:
            raise ValueError(f"format version {version} is not 1.0 or 2.0")
        shape, fortran, dtype = HEADER_READERS[version](stream)
    except ValueError as exc:
        raise MalformedRequest(f"{where} is not an .npy array: {exc}", "malformed_npy") from None
    if dtype.hasobject:
        raise InvalidInput(
            f"{where} holds Python objects, which .npy stores pickled: send BYTES in JSON or "
            "the V2 binary form",
            "malformed_npy",
        )
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    data = stream.read(size) if size <= available else b""
    if len(data) != size:
        raise MalformedRequest(
            f"{where} declares {shape} {dtype} ({size:,} bytes) but holds fewer", "malformed_npy"
        )
    if stream.read(1):
        raise MalformedRequest(f"{where} holds bytes past its array", "malformed_npy")
    array = np.frombuffer(data, dtype=dtype)
    array = array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
    return array.astype(dtype.newbyteorder("<"), copy=False)


def _npz(body: bytes, max_bytes: int) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
    except zipfile.BadZipFile as exc:
        raise MalformedRequest(f"the body is not an .npz archive: {exc}", "malformed_npz") from None
    with archive:
        members = archive.infolist()
        declared = sum(m.file_size for m in members)
        if declared > max_bytes:
            raise TooLarge(
                f"the .npz holds {declared:,} bytes once inflated, over INFERHUB_MAX_BODY_BYTES "
                f"({max_bytes:,})",
                "body_too_large",
            )
        arrays: dict[str, np.ndarray] = {}
        for member in members:
            if not member.filename.endswith(".npy"):
                raise MalformedRequest(
                    f"the .npz member {member.filename!r} is not an .npy array", "malformed_npz"
                )
            try:
                with archive.open(member) as stream:
                    arrays[member.filename.removesuffix(".npy")] = _npy(
                        stream, member.file_size, f"the .npz member {member.filename!r}"
                    )
            except (zipfile.BadZipFile, OSError) as exc:  # a bad CRC, a cut archive
                raise MalformedRequest(
                    f"the .npz archive is damaged: {exc}", "malformed_npz"
                ) from None
    if not arrays:
        raise MalformedRequest("the .npz archive holds no array", "malformed_npz")
    return arrays
