"""The classification extension: an output asked with ``parameters.classification = k``
answers, per row, its k highest scores as Triton writes them, ``"score:index:label"`` BYTES
(``"score:index"`` for a model without labels), highest first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contract.errors import InvalidInput


def top(array: np.ndarray, k: int, labels: Sequence[str], name: str) -> np.ndarray:
    """[rows, k] BYTES of the k best classes of each row of ``array`` ([rows, classes])."""
    if array.dtype.kind not in "fiu" or array.ndim != 2:
        raise InvalidInput(
            f"output '{name}' ({array.dtype}, shape {list(array.shape)}) holds no class scores "
            "to classify: ask classification of a [rows, classes] output",
            "classification",
        )
    scores = array
    k = min(k, scores.shape[1])
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out = np.empty(best.shape, dtype=object)
    for row, indexes in enumerate(best):
        for j, index in enumerate(indexes.tolist()):
            text = f"{float(scores[row, index]):f}:{index}"
            if index < len(labels):
                text += f":{labels[index]}"
            out[row, j] = text.encode()
    return out
