"""Exports map raw inputs to the same embeddings as the torch encoder, and the card tells the truth."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from embedmix.core.data import load_dataset
from embedmix.core.export import export, load_safetensors, sha256_file
from embedmix.core.spec import validate_spec
from embedmix.core.array_train import embed
from embedmix.core.train import train

CASES = {
    "mnist1d-conv1d": ({"name": "mnist1d", "size": 200}, "conv1d"),
    "digits-conv2d": ({"name": "digits"}, "conv2d"),
    "diabetes-mlp": ({"name": "diabetes"}, "mlp"),
}


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    dataset, encoder = CASES[request.param]
    loss = "barlow_twins" if dataset["name"] == "diabetes" else "supcon"
    spec = validate_spec({
        "name": request.param, "dataset": dataset,
        "model": {"encoder": encoder, "embedding_dim": 16, "width": 16},
        "objective": {"loss": loss, **({"views": 2} if loss == "barlow_twins" else {})},
        "train": {"epochs": 1, "batch_size": 64},
        "export": {"formats": ["safetensors", "onnx", "onnx_int8", "torchscript"]},
    })
    data = load_dataset(spec)
    result = train(spec, data)
    out = tmp_path_factory.mktemp(request.param)
    card = export(result, data, out, training={"steps": result.step})
    reference = embed(result.encoder, data.x_test, torch.device("cpu")).numpy()
    return out, card, data, reference


def test_onnx_matches_torch_on_raw_inputs(exported):
    out, card, data, reference = exported
    session = ort.InferenceSession(str(out / "model.onnx"))
    got = session.run(None, {"input": data.x_test.numpy()})[0]
    np.testing.assert_allclose(got, reference, atol=1e-4)
    assert card["files"]["onnx"]["opset"] == 18


def test_int8_onnx_stays_close_to_fp32_and_the_card_says_how_close(exported):
    out, card, data, reference = exported
    entry = card["files"]["onnx_int8"]
    assert entry["file"] == "model.int8.onnx" and entry["quantization"]["weight_type"] == "QInt8"
    got = ort.InferenceSession(str(out / entry["file"])).run(None, {"input": data.x_test.numpy()})[0]
    cosine = (got / np.linalg.norm(got, axis=1, keepdims=True) * reference).sum(1)
    parity = entry["parity"]
    assert parity["test_samples"] == len(data.x_test)
    assert parity["mean_cosine_to_fp32"] == pytest.approx(float(cosine.mean()), abs=1e-5)
    assert parity["mean_cosine_to_fp32"] >= 0.99 and parity["min_cosine_to_fp32"] <= parity["mean_cosine_to_fp32"]
    assert not np.allclose(got, reference, atol=1e-6), "the int8 model is quantised, not a copy of fp32"
    if data.task == "classification":
        p1 = parity["metrics"]["precision_at_1"]
        assert p1["change"] == pytest.approx(p1["int8"] - p1["fp32"]) and 0.0 <= p1["int8"] <= 1.0
        assert p1["fp32"] == pytest.approx(card["metrics"]["precision_at_1"], abs=1e-4), "fp32 scores as the run did"
    else:
        assert parity["metrics"] == {} and "no class labels" in parity["metrics_note"]


def test_torchscript_matches_torch(exported):
    out, _, data, reference = exported
    module = torch.jit.load(str(out / "model.torchscript.pt"))
    np.testing.assert_allclose(module(data.x_test).detach().numpy(), reference, atol=1e-4)


def test_safetensors_rebuilds_the_encoder(exported):
    out, _, data, reference = exported
    encoder = load_safetensors(out / "model.safetensors")
    np.testing.assert_allclose(embed(encoder, data.x_test, torch.device("cpu")).numpy(), reference, atol=1e-6)


def test_embeddings_are_unit_length(exported):
    *_, reference = exported
    np.testing.assert_allclose(np.linalg.norm(reference, axis=1), 1.0, atol=1e-5)


def test_card_records_what_a_user_needs(exported):
    out, card, data, _ = exported
    on_disk = json.loads((out / "card.json").read_text())
    assert on_disk == json.loads(json.dumps(card))
    assert card["input"]["shape"] == list(data.input_shape)
    assert card["embedding_dim"] == 16 and card["output"]["l2_normalized"] is True
    assert card["data"]["split"]["kind"] == "random"
    assert {"torch", "python", "onnxruntime"} <= set(card["versions"])
    for info in card["files"].values():
        assert sha256_file(out / info["file"]) == info["sha256"]
        assert (out / info["file"]).stat().st_size == info["bytes"]
