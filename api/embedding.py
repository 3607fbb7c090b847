"""Serving ``POST /v1/jobs/{id}/embed``: trained encoders kept in memory, and input checks.

An encoder is loaded from one of the job's exports alone (its ONNX file in
onnxruntime, ``core.onnx_encoder.load_onnx``, or the safetensors file,
``core.export.load_safetensors``: ``api.models`` picks), exactly what a user
downloading the file would do, so the service and a download give the same
embeddings. Loading costs a database read and a model build, so the last few
encoders stay in an LRU cache keyed by (job id, file sha256): a job's export
never changes once it has succeeded, and the hash makes a stale entry impossible anyway.
"""

from __future__ import annotations

import base64
import binascii
import math
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embedmix.api.errors import ApiError
from embedmix.core.onnx_encoder import OnnxEncoder

# Inputs per model call. Smaller batches keep a layer's activations in cache: 1,024 MiniLM texts take
# 1.30 s in one onnxruntime call and 1.12 s in calls of 256 (torch: 2.58 and 2.03 s), on 2 cores.
EMBED_BATCH = 256


# What the embed routes run: an encoder rebuilt from safetensors, or an ONNX export in onnxruntime.
ServedEncoder = nn.Module | OnnxEncoder


class EncoderCache:
    """The ``capacity`` most recently used encoders; thread-safe (handlers run in a thread pool)."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], ServedEncoder] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self,
        job_id: str,
        sha256: str,
        read_bytes: Callable[[], Iterable[bytes]],
        directory: str | None,
        load: Callable[[str], ServedEncoder],
    ) -> ServedEncoder:
        """The cached encoder, or ``load`` of the file whose chunks ``read_bytes()`` gives."""
        key = (job_id, sha256)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        # Load outside the lock: two first requests may both load; the second simply replaces the first.
        encoder = _load(read_bytes(), directory, load)
        with self._lock:
            self._entries[key] = encoder
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return encoder


def _load(chunks: Iterable[bytes], directory: str | None, load: Callable[[str], ServedEncoder]) -> ServedEncoder:
    """The loaders read from a path, so the bytes pass through a private temporary file."""
    with tempfile.TemporaryDirectory(prefix="embedmix-model-", dir=directory) as folder:
        path = Path(folder) / "model"
        with path.open("wb") as file:
            for chunk in chunks:
                file.write(chunk)
        return load(str(path))


def model_batch(
    card_input: dict[str, Any], inputs: Sequence[Any] | None, inputs_base64: str | None, max_inputs: int
) -> torch.Tensor | list[str]:
    """The request's inputs as the model takes them: strings for a text model, a float32 batch otherwise.

    A request gives exactly one of ``inputs`` (JSON) and ``inputs_base64`` (the
    batch's float32 bytes, array models only).
    """
    text = card_input.get("type") == "text"
    shape = card_input.get("shape", [])
    if (inputs is None) == (inputs_base64 is None):
        raise _bad_inputs("give inputs (a JSON list) or inputs_base64 (array models), not both"
                          if inputs is not None else "give inputs, or inputs_base64 for an array model")
    if inputs_base64 is not None:
        if text:
            raise ApiError(422, "invalid_inputs", "this is a text model: send its strings as inputs",
                           param="inputs_base64")
        return from_base64(inputs_base64, shape, max_inputs)
    assert inputs is not None
    return to_texts(inputs, max_inputs) if text else to_batch(inputs, shape, max_inputs)


def to_batch(inputs: Sequence[Any], input_shape: Sequence[int], max_inputs: int) -> torch.Tensor:
    """Check ``inputs`` is a batch of samples of the model's input shape; return it as float32.

    Every refusal is a 422 naming ``inputs`` and saying what shape was expected,
    because a shape mistake is the usual one (a flattened image, a missing batch axis);
    a value float32 cannot hold names the input it is in (``inputs.<index>``).
    """
    expected = [int(d) for d in input_shape]
    if not inputs:
        raise _bad_inputs("give at least one input")
    try:
        with np.errstate(over="ignore"):  # a value past float32's range becomes inf, refused below
            batch = np.asarray(inputs, dtype=np.float32)
    except OverflowError:  # a JSON integer past even float64's range (400 digits, say)
        raise _out_of_range(next(i for i, sample in enumerate(inputs) if _overflows(sample))) from None
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
    return _counted_and_finite(batch, max_inputs, "inputs")


def from_base64(data: str, input_shape: Sequence[int], max_inputs: int) -> torch.Tensor:
    """``inputs_base64``: the batch as float32 little-endian bytes, row-major, n x the input shape.

    What a client holding an array sends (``base64.b64encode(x.astype('<f4').tobytes())``):
    a quarter of the bytes of the same floats written as JSON text, and neither end
    formats or parses a number. n is the bytes' length over one sample's.
    """
    expected = [int(d) for d in input_shape]
    sample_bytes = 4 * math.prod(expected)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):  # ValueError: a character outside ASCII
        raise ApiError(422, "invalid_inputs", "inputs_base64 is not valid base64", param="inputs_base64") from None
    if not raw or len(raw) % sample_bytes:
        raise ApiError(
            422, "invalid_inputs",
            f"inputs_base64 holds {len(raw)} bytes, not a whole number of samples of shape {expected} "
            f"({sample_bytes} bytes of float32 each)",
            param="inputs_base64",
        )
    batch = np.frombuffer(bytearray(raw), dtype="<f4").reshape(-1, *expected)
    return _counted_and_finite(batch.astype(np.float32, copy=False), max_inputs, "inputs_base64")


def _counted_and_finite(batch: np.ndarray, max_inputs: int, param: str) -> torch.Tensor:
    """The batch as a tensor once it is within the input limit and every value is finite."""
    if len(batch) > max_inputs:
        raise ApiError(422, "invalid_inputs", f"at most {max_inputs} inputs per request, got {len(batch)}",
                       param=param)
    finite = np.isfinite(batch.reshape(len(batch), -1)).all(axis=1)
    if not finite.all():
        raise _out_of_range(int(np.flatnonzero(~finite)[0]), param)
    return torch.from_numpy(batch)


def _overflows(sample: Any) -> bool:
    """Whether the sample holds an integer too large for any float (only asked once a batch did)."""
    try:
        np.asarray(sample, dtype=np.float32)
    except OverflowError:
        return True
    return False


def _out_of_range(index: int, param: str = "inputs") -> ApiError:
    limit = float(np.finfo(np.float32).max)
    return ApiError(
        422,
        "invalid_inputs",
        f"input {index} holds NaN, an infinity or a number beyond the float32 range (±{limit:.3g})",
        param=f"{param}.{index}",
    )


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


# How far from length 1 an embedding may be: float32 normalisation is good to about 1e-6.
UNIT_TOLERANCE = 1e-3


@torch.inference_mode()
def embed(encoder: ServedEncoder, batch: torch.Tensor | list[str]) -> torch.Tensor:
    """Unit-length float32 embeddings (n, d) of raw inputs (samples, or strings for a text model),
    in bounded batches.

    An input can be finite and still too large for the model's float32 arithmetic
    (1e30 overflows the embedding's norm, which normalises it to zeros): such an
    embedding is not of unit length, and is refused naming its input rather than returned.
    """
    parts = [encoder(batch[i : i + EMBED_BATCH]) for i in range(0, len(batch), EMBED_BATCH)]
    embeddings = torch.cat(parts).float()
    off = ~((embeddings.norm(dim=1) - 1).abs() <= UNIT_TOLERANCE)  # NaN norms count as off
    if off.any():
        index = int(off.nonzero()[0])
        raise ApiError(
            422,
            "invalid_inputs",
            f"input {index} is too large for the model's float32 arithmetic (its embedding overflowed); "
            "send inputs on the scale of the training data",
            param=f"inputs.{index}",
        )
    return embeddings


def to_base64(embeddings: torch.Tensor) -> str:
    """The (n, d) embeddings as one base64 string of float32 little-endian bytes, row-major."""
    return base64.b64encode(embeddings.numpy().astype("<f4", copy=False).tobytes()).decode("ascii")


def input_units(encoder: ServedEncoder, batch: torch.Tensor | list[str]) -> int:
    """What a request consumed: tokens for a text model (as its tokeniser cuts them), samples otherwise."""
    tokenizer = getattr(encoder, "tokenizer", None)
    if tokenizer is None or not isinstance(batch, list):
        return len(batch)
    return sum(len(encoding.ids) for encoding in tokenizer.encode_batch(batch))


def _bad_inputs(message: str) -> ApiError:
    return ApiError(422, "invalid_inputs", message, param="inputs")
