"""A job's exported fp32 ONNX file run by onnxruntime, behind the interface the embed routes call.

The service serves a text model this way: the file a user downloads, in the
runtime made for inference, which on the 2-core AVX-512 machine of BENCHMARKS.md
embeds 1,024 texts with MiniLM in 1.2 s where torch eager takes 2.4 s
(``api.models._served_file`` says which export each kind of model is served from).
``OnnxEncoder(batch)`` returns unit embeddings as a float32 tensor, like an
``Encoder``; a text model takes strings and tokenises them with the tokenizer.json
zipped beside its graph (truncated at its max_length, padded to the longest text),
exactly as the download's README tells a user to.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ARRAY_INPUT = "input"
TEXT_INPUTS = ("input_ids", "attention_mask")


class OnnxEncoder:
    """Raw inputs (a float32 batch, or strings for a text model) to the graph's unit embeddings."""

    def __init__(self, model: bytes, tokenizer_json: str | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # A spinning intra-op pool keeps every core busy after each call, taking them from the event loop
        # and the other requests of the API process.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        names = tuple(i.name for i in self.session.get_inputs())
        expected = TEXT_INPUTS if tokenizer_json is not None else (ARRAY_INPUT,)
        if names != expected:
            raise ValueError(f"the ONNX graph takes {list(names)}, not {list(expected)}")
        self.tokenizer: Any = None
        if tokenizer_json is not None:
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_str(tokenizer_json)
            self.tokenizer.no_padding()  # padded here, so that len(encoding.ids) counts a text's own tokens

    def __call__(self, batch: torch.Tensor | Sequence[str]) -> torch.Tensor:
        if self.tokenizer is None:
            assert isinstance(batch, torch.Tensor)
            feed = {ARRAY_INPUT: batch.numpy()}
        else:
            feed = dict(zip(TEXT_INPUTS, self._tokens(list(batch)), strict=True))
        return torch.from_numpy(self.session.run(None, feed)[0])

    def _tokens(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """int64 ids and mask (batch, longest text), padding id 0 and mask 0: the graph's inputs."""
        encodings = self.tokenizer.encode_batch(texts)
        length = max((len(e.ids) for e in encodings), default=1)
        ids = np.zeros((len(encodings), length), dtype=np.int64)
        mask = np.zeros((len(encodings), length), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        return ids, mask


def load_onnx(path: str | Path) -> OnnxEncoder:
    """The encoder of an ``onnx`` export: a bare .onnx file (array models), or a text model's zip
    (model.onnx with the tokenizer.json that makes its inputs)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return OnnxEncoder(path.read_bytes())
    with zipfile.ZipFile(path) as bundle:
        described = json.loads(bundle.read("inputs.json"))
        if tuple(described["inputs"]) != TEXT_INPUTS:
            raise ValueError(f"the bundle's graph takes {list(described['inputs'])}, not {list(TEXT_INPUTS)}")
        return OnnxEncoder(bundle.read("model.onnx"), bundle.read("tokenizer.json").decode())
