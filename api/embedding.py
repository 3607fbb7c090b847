"""Serving ``POST /v1/jobs/{id}/embed``: trained encoders kept in memory, and input checks.

An encoder is rebuilt from the job's safetensors export alone
(``core.export.load_safetensors``), exactly what a user downloading the file
would do, so the service and a download give the same embeddings. Loading
costs a database read and a model build, so the last few encoders stay in an
LRU cache keyed by (job id, file sha256): a job's export never changes once it
has succeeded, and the hash makes a stale entry impossible anyway.
"""

from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from api.errors import ApiError
from core.export import load_safetensors

EMBED_BATCH = 1024


class EncoderCache:
    """The ``capacity`` most recently used encoders; thread-safe (handlers run in a thread pool)."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], nn.Module] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self,
        job_id: str,
        sha256: str,
        read_bytes: Callable[[], Iterable[bytes]],
        directory: str | None,
    ) -> nn.Module:
        """The cached encoder, or one loaded from ``read_bytes()`` (the safetensors file's chunks)."""
        key = (job_id, sha256)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        # Load outside the lock: two first requests may both load; the second simply replaces the first.
        encoder = _load(read_bytes(), directory)
        with self._lock:
            self._entries[key] = encoder
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return encoder


def _load(chunks: Iterable[bytes], directory: str | None) -> nn.Module:
    """safetensors loads from a path, so the bytes pass through a private temporary file."""
    with tempfile.TemporaryDirectory(prefix="embedmix-model-", dir=directory) as folder:
        path = Path(folder) / "model.safetensors"
        with path.open("wb") as file:
            for chunk in chunks:
                file.write(chunk)
        return load_safetensors(path)


def to_batch(inputs: Sequence[Any], input_shape: Sequence[int], max_inputs: int) -> torch.Tensor:
    """Check ``inputs`` is a batch of samples of the model's input shape; return it as float32.

    Every refusal is a 422 naming ``inputs`` and saying what shape was expected,
    because a shape mistake is the usual one (a flattened image, a missing batch axis).
    """
    expected = [int(d) for d in input_shape]
    if not inputs:
        raise _bad_inputs("give at least one input")
    try:
        batch = np.asarray(inputs, dtype=np.float32)
    except (ValueError, TypeError):
        raise _bad_inputs(
            f"each input must be a number array of shape {expected} (ragged or non-numeric values found)"
        ) from None
    if list(batch.shape) == expected:
        raise _bad_inputs(
            f"inputs is a single sample of shape {expected}; send a list of samples: [sample, ...]"
        )
    if list(batch.shape[1:]) != expected:
        got = list(batch.shape[1:])
        raise _bad_inputs(
            f"each input must have shape {expected} (the model's input shape); got {got}"
        )
    if len(batch) > max_inputs:
        raise _bad_inputs(f"at most {max_inputs} inputs per request, got {len(batch)}")
    if not np.isfinite(batch).all():
        raise _bad_inputs("inputs contain NaN or infinite values")
    return torch.from_numpy(batch)


def to_texts(inputs: Sequence[Any], max_inputs: int) -> list[str]:
    """Check ``inputs`` is a list of non-empty strings, what a text model embeds."""
    if not inputs:
        raise _bad_inputs("give at least one input")
    if not all(isinstance(text, str) for text in inputs):
        raise _bad_inputs("this is a text model: each input must be a string")
    if not all(text.strip() for text in inputs):
        raise _bad_inputs("inputs contain an empty string")
    if len(inputs) > max_inputs:
        raise _bad_inputs(f"at most {max_inputs} inputs per request, got {len(inputs)}")
    return list(inputs)


@torch.inference_mode()
def embed(encoder: nn.Module, batch: torch.Tensor | list[str]) -> list[list[float]]:
    """Unit-length embeddings of raw inputs (samples, or strings for a text model), in bounded batches."""
    parts = [encoder(batch[i : i + EMBED_BATCH]) for i in range(0, len(batch), EMBED_BATCH)]
    return torch.cat(parts).float().tolist()


def _bad_inputs(message: str) -> ApiError:
    return ApiError(422, "invalid_inputs", message, param="inputs")
