"""M3CoL: float64 references transcribed from RaghavSinghal10/M3CoL (model/utils.py mixco_nce, soft_clip_loss;
model/model_med.py's sum of heads and terms), its defining property (beta = 1 is the unmixed cross-modal loss),
the SoftClip switch, two-modality data (built in and npz), training with a resume, and the export of both encoders."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedmix.core import catalog
from embedmix.core.array_train import ArrayTrainer
from embedmix.core.data import PairedDataset, load_dataset
from embedmix.core.errors import DataError
from embedmix.core.export import export, load_encoder_pair, load_safetensors
from embedmix.core.losses import build
from embedmix.core.losses.m3col import MixDraw, draw_mix, mixco_nce, soft_clip
from embedmix.core.mixup.mixing import sample_beta
from embedmix.core.spec import SpecError, validate_spec
from embedmix.core.train import train

from tests.callbacks import StopAt
from tests.references import assert_same

B, DIM, CLASSES = 6, 5, 3
PERM = torch.tensor([2, 0, 1, 5, 3, 4])  # no fixed point: where the official code and ours agree (see below)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def betas(seed: int = 1, mixed: tuple[int, ...] = (0, 2, 3)) -> torch.Tensor:
    """A Beta(0.15, 0.15) draw with the rows outside `mixed` set to 1, as mixco_text leaves unselected rows."""
    draw = sample_beta(0.15, 0.15, B, torch.Generator().manual_seed(seed), torch.float64)
    keep = torch.ones(B, dtype=torch.bool)
    keep[list(mixed)] = False
    return torch.where(keep, torch.ones_like(draw), draw)


# ---------------------------------------------------------------- the official functions, transcribed


def official_mixco_nce(mix_modality, fix_modality, temp, perm, betas):
    """model/utils.py mixco_nce, bidirectional: probs = diag(betas), then probs[i, perm[i]] = 1 - betas (assigned)."""
    mix_modality = F.normalize(mix_modality, dim=-1)
    fix_modality = F.normalize(fix_modality, dim=-1)
    cos_sim = (mix_modality @ fix_modality.T) / temp
    probs = torch.diag(betas)
    probs[torch.arange(mix_modality.shape[0]), perm] = 1 - betas
    loss = -(cos_sim.log_softmax(-1) * probs).sum(-1).mean()
    loss2 = -(cos_sim.T.log_softmax(-1) * probs.T).sum(-1).mean()
    return (loss + loss2) / 2


def official_mix(z, perm, betas):
    """mixco_text's mixing of the selected rows (betas 1 elsewhere leaves those rows as they are)."""
    b = betas.reshape(-1, 1)
    return z * b + z[perm] * (1 - b)


def official_soft_clip(preds, targs, temp=0.125):
    """model/utils.py soft_clip_loss."""
    preds = F.normalize(preds, dim=-1)
    targs = F.normalize(targs, dim=-1)
    clip_clip = (targs @ targs.T) / temp
    brain_clip = (preds @ targs.T) / temp
    loss1 = -(brain_clip.log_softmax(-1) * clip_clip.softmax(-1)).sum(-1).mean()
    loss2 = -(brain_clip.T.log_softmax(-1) * clip_clip.softmax(-1)).sum(-1).mean()
    return (loss1 + loss2) / 2


def official_total(loss, z_a, z_b, labels, draws, use_soft_clip):
    """MMC_Med.forward for two modalities: the unimodal heads, the fusion head, lambda_mixup * (M3Co or SoftClip)."""
    total = (F.cross_entropy(loss.heads[0](z_a), labels) + F.cross_entropy(loss.heads[1](z_b), labels)
             + F.cross_entropy(loss.fusion(torch.cat([z_a, z_b], dim=-1)), labels))
    if use_soft_clip:
        term = official_soft_clip(z_a, z_b) + official_soft_clip(z_b, z_a)
    else:
        (perm_a, b_a), (perm_b, b_b) = draws
        term = (official_mixco_nce(official_mix(z_a, perm_a, b_a), z_b, 0.1, perm_a, b_a)
                + official_mixco_nce(official_mix(z_b, perm_b, b_b), z_a, 0.1, perm_b, b_b))
    return total + 0.1 * term


def small_m3col(seed: int = 0, **params):
    torch.manual_seed(seed)
    return build("m3col", num_classes=CLASSES, embedding_dim=DIM, **params).double()


# ---------------------------------------------------------------- value and gradient


def test_mixco_nce_equals_the_official_code():
    draw = MixDraw(PERM, betas())
    assert_same(lambda m, f: mixco_nce(draw.mix(m), f, draw, 0.1),
                lambda m, f: official_mixco_nce(official_mix(m, PERM, betas()), f, 0.1, PERM, betas()),
                randn(B, DIM, seed=2), randn(B, DIM, seed=3))


def test_soft_clip_equals_the_official_code():
    assert_same(lambda p, t: soft_clip(p, t, 0.125), official_soft_clip, randn(B, DIM, seed=4), randn(B, DIM, seed=5))


@pytest.mark.parametrize("epoch,use_soft_clip", [(0, False), (40, True)], ids=["m3co", "softclip"])
def test_the_whole_loss_and_its_head_gradients_equal_the_official_sum(epoch, use_soft_clip):
    loss = small_m3col()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    draws = (MixDraw(PERM, betas(1)), MixDraw(PERM.flip(0), betas(2, (1, 4))))
    ours = (lambda a, b: loss.heads_loss(a, b, labels) + 0.1 * loss.mixco(a, b, draws)) if not use_soft_clip else \
        (lambda a, b: loss(a, b, labels, epoch=epoch, epochs=100))
    reference = lambda a, b: official_total(loss, a, b, labels, [(d.perm, d.betas) for d in draws], use_soft_clip)
    z_a, z_b = randn(B, DIM, seed=6), randn(B, DIM, seed=7)
    assert_same(ours, reference, z_a, z_b)
    grads = []
    for fn in (ours, reference):
        loss.zero_grad(set_to_none=True)
        fn(z_a, z_b).backward()
        grads.append([p.grad.clone() for p in loss.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- defining property, switch, draws


def clip_loss(a, b, temperature):
    """The unmixed cross-modal (CLIP) loss: identity targets, both directions averaged."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    target = torch.arange(len(a))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def test_beta_one_gives_the_unmixed_cross_modal_loss():
    z_a, z_b = randn(B, DIM, seed=8), randn(B, DIM, seed=9)
    draw = MixDraw(PERM, torch.ones(B, dtype=torch.float64))
    torch.testing.assert_close(mixco_nce(draw.mix(z_a), z_b, draw, 0.1), clip_loss(z_a, z_b, 0.1), rtol=1e-12, atol=1e-12)
    loss = small_m3col()
    both = loss.mixco(z_a, z_b, (draw, draw))
    torch.testing.assert_close(both, clip_loss(z_a, z_b, 0.1) + clip_loss(z_b, z_a, 0.1), rtol=1e-12, atol=1e-12)


def test_a_partner_that_is_the_row_itself_keeps_its_whole_target():
    """Departure: the official code assigns 1 - beta over beta at (i, i) when perm(i) = i; we add them (target 1)."""
    perm = torch.tensor([0, 2, 1, 4, 3, 5])
    b = betas()
    draw = MixDraw(perm, b)
    z_a, z_b = randn(B, DIM, seed=10), randn(B, DIM, seed=11)
    ours = mixco_nce(draw.mix(z_a), z_b, draw, 0.1)
    ones = torch.where((perm == torch.arange(B)), torch.ones_like(b), b)  # a row mixed with itself is unmixed
    assert torch.allclose(ours, mixco_nce(draw.mix(z_a), z_b, MixDraw(perm, ones), 0.1))
    assert not torch.allclose(ours, official_mixco_nce(draw.mix(z_a), z_b, 0.1, perm, b))


@pytest.mark.parametrize("epochs,last_m3co", [(100, 32), (30, 8), (3, None)])
def test_soft_clip_takes_over_after_the_first_third(epochs, last_m3co):
    """M3Co in epochs e < int(0.33 E), as train_medical.py's `epoch < int(args.mixup_pct * args.num_epoch)`."""
    loss = small_m3col()
    m3co = [e for e in range(epochs) if loss.uses_mixco(e, epochs)]
    assert m3co == ([] if last_m3co is None else list(range(last_m3co + 1)))


def test_soft_clip_epochs_draw_nothing_and_m3co_epochs_draw_from_the_run_generator():
    loss = small_m3col()
    gen = torch.Generator().manual_seed(0)
    loss.use_generator(gen)
    z_a, z_b, labels = randn(B, DIM, seed=12), randn(B, DIM, seed=13), torch.tensor([0, 1, 2, 0, 1, 2])
    state = gen.get_state()
    loss(z_a, z_b, labels, epoch=50, epochs=100)
    assert torch.equal(gen.get_state(), state)
    first = loss(z_a, z_b, labels, epoch=0, epochs=100)
    gen.set_state(state)
    assert torch.equal(loss(z_a, z_b, labels, epoch=0, epochs=100), first)


def test_the_draw_mixes_about_half_the_rows_with_beta_near_0_or_1():
    draw = draw_mix(4000, 0.15, 0.5, torch.Generator().manual_seed(1))
    mixed = draw.betas != 1
    assert 0.45 < mixed.double().mean() < 0.55
    assert ((draw.betas[mixed] < 0.1) | (draw.betas[mixed] > 0.9)).double().mean() > 0.6  # Beta(0.15, 0.15) is U-shaped
    assert sorted(draw.perm.tolist()) == list(range(4000))


def test_weight_zero_is_the_heads_alone():
    loss = small_m3col(weight=0.0)
    z_a, z_b, labels = randn(B, DIM, seed=14), randn(B, DIM, seed=15), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.testing.assert_close(loss(z_a, z_b, labels, epoch=0, epochs=9), loss.heads_loss(z_a, z_b, labels))


# ---------------------------------------------------------------- catalog and validation

PAIRED = {"name": "paired_modalities", "size": 240, "params": {"num_classes": 4, "num_features": 12, "num_features_2": 6}}


def _spec(formats: tuple[str, ...] = ("safetensors",), dataset: dict | None = None, **params):
    return validate_spec({
        "name": "m3col",
        "dataset": dataset or PAIRED,
        "model": {"encoder": "mlp", "embedding_dim": 8, "width": 16},
        "objective": {"loss": "m3col", "params": {"mixco_fraction": 0.5, **params}},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.01, "seed": 3, "device": "cpu"},
        "eval": {"metrics": ["precision_at_1", "knn_accuracy"], "every_epochs": 0},
        "export": {"formats": list(formats)},
    })


def test_catalog_entry_and_builder_agree():
    entry = catalog.LOSSES["m3col"]
    loss = build("m3col", num_classes=CLASSES, embedding_dim=DIM)
    assert entry.paper and entry.source and entry.labels == "class" and entry.extra["modalities"] == 2
    assert entry.defaults() == {"weight": 0.1, "temperature": 0.1, "alpha": 0.15, "mix_share": 0.5,
                                "mixco_fraction": 0.33, "soft_clip_temperature": 0.125}
    for param, default in entry.defaults().items():
        assert getattr(loss, param) == default, param
    with pytest.raises(ValueError, match="num_classes"):
        build("m3col", embedding_dim=DIM)
    assert "m3col" in {e["name"] for e in catalog.catalog_json()["losses"]}


def fields_of(spec: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        validate_spec({"name": "x", "dataset": PAIRED, "objective": {"loss": "m3col"}, **spec})
    return [e["field"] for e in info.value.errors]


@pytest.mark.parametrize("spec,field", [
    ({"objective": {"loss": "m3col", "params": {"alpha": 0.0}}}, "objective.params.alpha"),
    ({"objective": {"loss": "m3col", "params": {"mix_share": 2}}}, "objective.params.mix_share"),
    ({"objective": {"loss": "m3col", "params": {"tau": 0.1}}}, "objective.params.tau"),
    ({"objective": {"loss": "m3col", "views": 2}}, "objective.views"),
    ({"mixup": {"method": "input"}}, "mixup.method"),
    ({"model": {"encoder": "mlp", "projection_dim": 8}}, "model.projection_dim"),
    ({"augment": {"enabled": True}}, "augment.enabled"),
    ({"train": {"grad_cache_chunk": 16}}, "train.grad_cache_chunk"),
    ({"resources": {"devices": 2}}, "resources.devices"),
    ({"export": {"formats": ["onnx_int8"]}}, "export.formats"),
    ({"dataset": {"name": "blobs"}}, "dataset.name"),
    ({"objective": {"loss": "supcon"}}, "objective.loss"),
], ids=["alpha", "share", "unknown", "views", "mixup", "projection", "augment", "grad-cache", "devices", "int8",
        "one-modality-data", "one-modality-loss"])
def test_bad_specs_name_the_field(spec, field):
    assert field in fields_of(spec)


# ---------------------------------------------------------------- data


def test_paired_modalities_split_both_modalities_alike():
    data = load_dataset(_spec())
    assert isinstance(data, PairedDataset)
    assert data.x2_train.shape == (len(data.x_train), 6) and data.x2_test.shape == (len(data.x_test), 6)
    raw = load_dataset(_spec()).describe()
    assert raw["modalities"] == 2 and raw["input_shape"] == [12] and raw["input_shape_2"] == [6]
    from embedmix.core.data.modalities import paired_modalities
    full = paired_modalities(240, 4, 8, 12, 6, 1.0)
    rows = [int(np.flatnonzero((full["x"] == x.numpy()).all(1))[0]) for x in data.x_test]
    np.testing.assert_array_equal(full["x2"][rows], data.x2_test.numpy())  # each sample's two inputs stay together
    np.testing.assert_array_equal(full["y"][rows], data.y_test.numpy())


def _npz(tmp_path, **arrays):
    path = tmp_path / "pairs.npz"
    np.savez(path, **arrays)
    return path


def _npz_spec(**split):
    spec = _spec().model_dump()
    spec["dataset"] = {"path": "pairs.npz", "split": split or {"kind": "random", "test_fraction": 0.25}}
    return validate_spec(spec)


def test_an_npz_with_two_modalities_is_read_and_split(tmp_path):
    rng = np.random.default_rng(0)
    x, x2, y = rng.normal(size=(40, 3)), rng.normal(size=(40, 2, 4)), np.arange(40) % 4
    x2[:, 0, 0] = np.arange(40)  # the row's id, to check the pairing survives the split
    x[:, 0] = np.arange(40)
    data = load_dataset(_npz_spec(), file_path=_npz(tmp_path, x=x, x2=x2, y=y))
    assert data.input_shape == (3,) and data.input_shape_2 == (2, 4)
    for side in ("train", "test"):
        torch.testing.assert_close(getattr(data, f"x_{side}")[:, 0], getattr(data, f"x2_{side}")[:, 0, 0])
    given = load_dataset(_npz_spec(kind="given"), file_path=_npz(tmp_path, x=x[:30], x2=x2[:30], y=y[:30],
                                                                  x_test=x[30:], x2_test=x2[30:], y_test=y[30:]))
    assert len(given.x2_test) == 10 and torch.equal(given.x2_test[:, 0, 0], torch.arange(30, 40).float())


@pytest.mark.parametrize("arrays,message", [
    ({"x2": None}, "x2: the loss trains on two modalities"),
    ({"x2": np.ones((39, 2))}, "x2: 39 rows, but x has 40"),
    ({"x2": np.full((40, 2), np.nan)}, "x2: 80 values are NaN"),
    ({"x2": np.array([["a", "b"]] * 40)}, "x2: features must be numeric"),
    ({"x_test": np.ones((4, 3)), "y_test": np.zeros(4, dtype=int)}, "x2_test: the file has x_test but no x2_test"),
], ids=["missing", "rows", "nan", "strings", "no-x2-test"])
def test_bad_second_modalities_are_refused_naming_the_array(tmp_path, arrays, message):
    base = {"x": np.ones((40, 3)), "x2": np.ones((40, 2)), "y": np.arange(40) % 4}
    given = {k: v for k, v in {**base, **arrays}.items() if v is not None}
    with pytest.raises(DataError, match=message):
        load_dataset(_npz_spec(), file_path=_npz(tmp_path, **given))


def test_two_modality_data_with_a_one_modality_loss_is_refused(tmp_path):
    spec = _npz_spec().model_dump()
    spec["objective"] = {"loss": "supcon"}
    path = _npz(tmp_path, x=np.ones((40, 3)), x2=np.ones((40, 2)), y=np.arange(40) % 4)
    with pytest.raises(DataError, match="x2: the data has two modalities"):
        load_dataset(validate_spec(spec), file_path=path)


# ---------------------------------------------------------------- training, resume, export


def test_training_trains_both_encoders_and_heads_and_resumes_exactly():
    spec = _spec()  # 2 epochs, mixco_fraction 0.5: epoch 0 M3Co, epoch 1 SoftClip
    data = load_dataset(spec)
    straight = ArrayTrainer(spec, data)
    start = {k: v.clone() for k, v in straight.loss.state_dict().items()}
    result = straight.run()
    assert math.isfinite(result.metrics["precision_at_1"]) and result.metrics["knn_accuracy"] > 0.25
    changed = {k.split(".")[0] for k, v in straight.loss.state_dict().items() if not torch.equal(start[k], v)}
    assert changed == {"heads", "fusion", "second"}

    stop = StopAt(3)  # mid-epoch of the M3Co epoch: 6 steps an epoch
    assert ArrayTrainer(spec, data, stop).run().stopped
    saved = torch.load(io.BytesIO(stop.checkpoints[-1]), weights_only=True)["loss"]
    assert {k.split(".")[0] for k in saved} == {"heads", "fusion", "second"}
    resumed = ArrayTrainer(spec, data)
    resumed.load_state(stop.checkpoints[-1])
    resumed.run()
    for part in ("net", "loss"):
        ours, theirs = getattr(straight, part).state_dict(), getattr(resumed, part).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), part


def test_the_export_holds_both_encoders_and_embeds_as_in_training(tmp_path):
    spec = _spec(formats=("safetensors", "onnx", "torchscript"))
    data = load_dataset(spec)
    trainer = ArrayTrainer(spec, data)
    result = trainer.run()
    card = export(result, data, tmp_path)
    assert card["embedding_dim"] == 16 and [m["shape"] for m in card["input"]["modalities"]] == [[12], [6]]
    from safetensors.torch import load_file
    keys = set(load_file(str(tmp_path / "model.safetensors")))
    assert keys == {f"modality_0.{k}" for k in trainer.net.encoder.state_dict()} | {
        f"modality_1.{k}" for k in trainer.second.state_dict()}
    pair = load_encoder_pair(tmp_path / "model.safetensors")
    x, x2 = data.x_test[:16], data.x2_test[:16]
    with torch.no_grad():
        torch.testing.assert_close(pair(x, x2), trainer._embed(data, "test")[:16])
        torch.testing.assert_close(pair.modality_1(x2), trainer.second.eval()(x2))
        torch.testing.assert_close(load_safetensors(tmp_path / "model.safetensors")(x), result.encoder.eval()(x))
        scripted = torch.jit.load(str(tmp_path / "model.torchscript.pt"))
        torch.testing.assert_close(scripted(x, x2), pair(x, x2))
    import onnxruntime as ort
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(["embedding"], {"input": x.numpy(), "input_2": x2.numpy()})[0]
    np.testing.assert_allclose(onnx_out, pair(x, x2).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_the_baseline_trains_with_the_heads_alone():
    result = train(_spec(weight=0.0), load_dataset(_spec(weight=0.0)))
    assert math.isfinite(result.metrics["knn_accuracy"])


def test_a_validation_carve_takes_both_modalities_of_its_rows(tmp_path):
    rng = np.random.default_rng(1)
    x, x2, y = rng.normal(size=(80, 3)), rng.normal(size=(80, 2)), np.arange(80) % 4
    x[:, 0] = x2[:, 0] = np.arange(80)  # the row's id in both modalities
    spec = _npz_spec(kind="random", test_fraction=0.25, validation_fraction=0.25)
    data = load_dataset(spec, file_path=_npz(tmp_path, x=x, x2=x2, y=y))
    view = data.validation_view()
    assert len(view.x_test) == len(view.x2_test) == len(data.x_val) > 0
    torch.testing.assert_close(view.x_test[:, 0], view.x2_test[:, 0])
    ids = set(data.x_train[:, 0].tolist()) | set(data.x_test[:, 0].tolist()) | set(data.x_val[:, 0].tolist())
    assert ids == set(range(80))
