"""`embedmix recipes`: each mixing method's recipe against its baseline, over seeds, and RESULTS.md.

`recipes/NAME.json` is a method's spec and `recipes/NAME-baseline.json` the same run
without the mixing (see RECIPES: where a spec without mixing cannot compute the
paper's metric, the baseline is the method with its weight or eta at 0). A recipe
with a `pretrain` first trains `recipes/PRETRAIN.json` for each seed; method and
baseline then both start from its encoder weights (the paper's fine-tuning schedule).

`run` trains both for seeds 0..n-1 by overriding `train.seed` (which also seeds the
train/test split), so the two runs of a seed share the split and the initial weights
and the comparison is paired; `run-all` does every recipe, several seeds at once in
worker processes, and `report` turns the result files into RESULTS.md: per recipe the
mean paired difference with its 95% t interval and the verdict that follows from it.
`regime` runs a baseline on a validation share of the training split, which is how a
recipe's regime (data size, schedule) is chosen without looking at any test split.

RECIPES below is the one place that says, per method, which metric the paper
reports, which direction counts as better, the protocol and where its settings come from.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RECIPES_DIR = ROOT / "recipes"
RESULTS_DIR = Path("results")
SMOKE_DIR = Path(".embedmix/recipes-smoke")  # smoke results never overwrite real ones (the folder is git-ignored)
RESULTS_MD = Path("RESULTS.md")
RUN_ALL_FILE = "run-all.json"  # in the results directory: the last `run-all`'s command, machine and times
SMOKE_STEPS = 2
SMOKE_SIZE = 200  # datasets with a size parameter (mnist1d) shrink to this in a smoke run
SMOKE_SEEDS = 2
DEFAULT_SEEDS = 5
CONFIDENCE = 0.95
VALIDATION_FRACTION = 0.2

recipes_app = typer.Typer(help="Run each mixing method's recipe against its baseline over seeds; write RESULTS.md.",
                          no_args_is_help=True)
console = Console(stderr=True)


@dataclass(frozen=True)
class Precondition:
    """What the baseline must show before the pair can test the paper's claim (e.g. over-confidence for RankMixup)."""

    metric: str
    op: str  # "<" or ">"
    value: float
    why: str

    def met(self, baseline_mean: float) -> bool:
        return baseline_mean < self.value if self.op == "<" else baseline_mean > self.value

    def text(self) -> str:
        return f"baseline {self.metric} {self.op} {self.value:g}"


@dataclass(frozen=True)
class Recipe:
    """One method's pair of specs, how to read its result, and the protocol it follows."""

    name: str
    paper: str
    metric: str  # the paper's metric, as the engine names it
    better: str  # "higher" or "lower"
    claim: str  # the paper's direction, in words
    baseline: str  # what recipes/NAME-baseline.json is
    baseline_kind: str  # how the specs differ: "no_mixup", "weight_0", "eta_0", "moco", "no_mixed_pairs",
    # and for the loss methods "beta_0" (objective.params.beta 0), "loss" (another objective), "one_head_fixed" (AMCL),
    # "loss_weight_0" (objective.params.weight 0: M3CoL's heads alone), "no_until" (the same mixing without
    # mixup.until: mixing throughout, against which early-stopped mixup is compared)
    protocol: str  # the paper's protocol as these data carry it, in a few words
    hparams: str  # where the hyper-parameters come from
    secondary: tuple[str, ...] = ()
    seeds: int = DEFAULT_SEEDS  # seeds run by default: more where a pair is cheap
    pretrain: str | None = None  # recipes/PRETRAIN.json, trained per seed; both runs start from its encoder
    precondition: Precondition | None = None
    regime: str = ""  # how a regime was chosen (from the baseline alone, on a validation share of train)
    note: str = ""  # what the evidence says about why, for a row that is not reproduced
    seed_paper: bool = True  # one of the seed papers (the others are the generic mixups the engine also has)

    @property
    def files(self) -> tuple[Path, Path]:
        return RECIPES_DIR / f"{self.name}.json", RECIPES_DIR / f"{self.name}-baseline.json"

    @property
    def spec_files(self) -> tuple[Path, ...]:
        """Every spec file the recipe runs: the pair and its pretraining spec."""
        return self.files + ((RECIPES_DIR / f"{self.pretrain}.json",) if self.pretrain else ())


_RETRIEVAL = "class-disjoint retrieval on mnist1d (4,000): train on classes 0-5, R@1 / MAP@R among the held-out classes 6-9"
_MS_METRIX = ("billpsomas/metrix main.py: multi-similarity alpha 17.97, beta 75.66, base 0.77, miner epsilon 0.39 in "
              "both runs")
_SSL = "self-supervised pre-training on mnist1d (4,000), kNN / linear probe on a random 20% test split"
_HARD = "mnist1d (1,200) with conv1d, random 20% test split"
_LT = ("long-tailed mnist1d (4,000 generated; dataset.params.imbalance_ratio 10: 320 down to 32 training rows per "
       "class, 1,308 in all), self-supervised pre-training, kNN / linear probe on a balanced test set of 80 per class")
_CEILING = "a baseline at its ceiling leaves nothing to improve"
_CHOSEN = "chosen from the baseline alone, on a validation fifth of the training split (`embedmix recipes regime {}`): "

RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("metrix", "Venkataramanan et al., It Takes Two to Tango (ICLR 2022)", "precision_at_1", "higher",
           "Metrix raises R@1 of multi-similarity (CUB 67.8 -> 71.4)",
           "multi-similarity without mixing, the same MS settings", "no_mixup", _RETRIEVAL,
           _MS_METRIX + "; Metrix alpha 2, weight 0.4 (paper), pos-neg and anchor-neg mixing alternating 50/50 per "
           "step at the embedding level (official train.py)", ("map_at_r",), seeds=10,
           note="embedmix's Metrix-MS computes the paper's formula, which the official Metrix-MS code does not "
                "(docs/methods.md)"),
    Recipe("mochi", "Kalantidis et al., Hard Negative Mixing (NeurIPS 2020)", "knn_accuracy", "higher",
           "synthetic hard negatives raise MoCo v2's accuracy",
           "MoCo v2 (method 'moco', same queue, momentum and temperature) = MoCHi with s = s' = 0", "moco", _SSL,
           "MoCHi paper / facebookresearch/moco v2: temperature 0.2, N 64, s 32, s' 16; queue 1,024 and momentum "
           "0.99 scaled to 3,200 training samples", ("linear_probe_accuracy",), seeds=15,
           note="with 10 classes about a tenth of the queue shares the query's class, so the hardest negatives MoCHi "
                "mixes are often false negatives; the paper's gains are about one point with 65,536-entry queues "
                "over 100-1,000 classes"),
    Recipe("mixed_barlow_twins", "Bandara et al., Guarding Barlow Twins Against Overfitting with Mixed Samples (2023)",
           "knn_accuracy", "higher", "the mixed-sample regulariser raises Barlow Twins' kNN / linear accuracy",
           "Barlow Twins without the regulariser", "no_mixup", _SSL,
           "wgcban/mix-bt main.py: unbiased standardisation without eps (standardise 'unbiased') in both runs, "
           "lambda_offdiag 1/128 (mix-bt's fixed CIFAR value, not 1/d), l_reg 4, alpha 1", ("linear_probe_accuracy",), seeds=8),
    Recipe("c_mixup", "Yao et al., C-Mixup (NeurIPS 2022)", "rmse", "lower", "C-Mixup lowers the RMSE of plain (ERM) training",
           "the MSE regressor without mixing", "no_mixup", "regression on diabetes (442 rows), random 20% test split",
           "huaxiuyao/C-Mixup: partners drawn from the whole training set (partner_pool 'train_set'), alpha 2; "
           "bandwidth sigma 20 in target units (the targets' sd is 77)", ("mae",), seeds=20),
    Recipe("supremix", "Wu et al., Mixup Your Own Pairs (2023)", "mae", "lower",
           "SupReMix's mixed pairs lower the linear probe's MAE of supervised contrastive regression",
           "the same supervised contrastive regression without the mixed pairs (mixed_pairs false)", "no_mixed_pairs",
           "contrastive pre-training on diabetes, linear-probe MAE on a random 20% test split",
           "the paper and its authors' code: temperature 0.3, mix-neg lambda ~ Beta(2, 8), every (j, k) mix-pos pair "
           "(pos_pairs 'all'), label window 10", ("rmse",), seeds=20,
           note="the paper's gains are on AgeDB-DIR and IMDB-WIKI-DIR (tens of thousands of images); diabetes gives "
                "354 training rows of 10 features, and the mixed pairs did not help its linear probe here (its "
                "rmse rises too); the authors' separate max-shift of mixture logits is not reproduced "
                "(docs/methods.md)"),
    Recipe("decoupled_mixup", "Liu et al., Harnessing Hard Mixed Samples with Decoupled Regularizer (NeurIPS 2023)",
           "accuracy", "higher", "the decoupled regulariser raises the accuracy of mixup training",
           "the same input mixup with eta = 0 (plain mixup cross-entropy, the paper's comparison)", "eta_0", _HARD,
           "Westlake-AI/openmixup: eta 0.1, mode both, the batch mean (ClsMixupHead's avg_factor), alpha 1",
           ("ece", "confidence_gap"), seeds=15, precondition=Precondition("accuracy", "<", 0.95, _CEILING),
           regime=_CHOSEN.format("decoupled_mixup") + ("on mnist1d 1,200 the baseline's accuracy is 0.909 ± 0.011 (seeds 0-2); 0.919 ± 0.009 on 2,000")),
    Recipe("rankmixup", "Noh et al., RankMixup (ICCV 2023)", "ece", "lower", "RankMixup (MRL) lowers the expected calibration error",
           "the same spec with weight 0: no mixing is drawn or computed, plain cross-entropy", "weight_0",
           "calibration of an over-confident classifier: a wide MLP (512) trained 60 epochs on mnist1d (2,000), "
           "ECE on a random 20% test split",
           "cvlab-yonsei/RankMixup configs: MRL, margin 2, weight 0.1, mixup alpha 2 at the input, same-class rows "
           "rescaled as calibrate/losses/rankmixup.py (mrl_rows 'rescale')", ("accuracy", "confidence_gap"), seeds=10,
           precondition=Precondition("confidence_gap", ">", 0.0,
                                     "RankMixup targets over-confidence: the baseline's mean confidence must exceed "
                                     "its accuracy"),
           regime=_CHOSEN.format("rankmixup") + ("a 512-wide MLP, 60 epochs on mnist1d 2,000: confidence − accuracy +0.281 ± 0.021 (accuracy 0.575, seeds 0-2); a conv1d of width 64-128 on 600-2,000 samples gave only +0.003 to +0.025, within its seed-to-seed spread")),
    Recipe("mixoe", "Zhang et al., Mixture Outlier Exposure (WACV 2023)", "auroc", "higher",
           "MixOE fine-tuning raises the OOD AUROC of max-softmax scores",
           "the same fine-tuning with weight 0 (plain cross-entropy) from the same pre-trained encoder", "weight_0",
           "mnist1d (2,000) classes 0-7 in-distribution, classes 8-9 the real outlier set (their training rows "
           "mixed in, their test rows the OOD test set); a trained baseline (recipes/mixoe-pretrain.json, 30 epochs) "
           "fine-tuned 10 epochs in both runs",
           "zjysteven/MixOE scripts/train.sh and train_mixoe.py: mixup, alpha 1, weight (beta) 5, fine-tuning 10 epochs "
           "at lr 0.001 with a cosine schedule", ("tnr_at_95_tpr", "accuracy"), pretrain="mixoe-pretrain", seeds=10,
           precondition=Precondition("auroc", "<", 0.95, _CEILING),
           regime=_CHOSEN.format("mixoe") + ("with digits as the data the baseline's AUROC is 0.994 ± 0.003 (seeds 0-2), the ceiling; on mnist1d 2,000 it is 0.806 ± 0.045, accuracy 0.966"),
           note="the fine-tuning runs start from the pre-trained encoder with a fresh classification head (the "
                "starting weights are the encoder's); the official code fine-tunes the whole network, fc layer "
                "included"),
    Recipe("conr", "Keramati et al., ConR: Contrastive Regularizer for Deep Imbalanced Regression (ICLR 2024)", "mae",
           "lower", "the ConR regulariser lowers the MAE of the regression head on imbalanced targets",
           "the same two-view MSE head with beta = 0 (the regulariser weighs nothing)", "beta_0",
           "imbalanced regression on diabetes (442 rows; right-skewed targets, 25-346, most below 200), linear-probe "
           "MAE on a random 20% test split",
           "BorealisAI/ConR agedb-dir: beta 4, temperature 0.07 (loss.py's effective value); window 1 and eta 0.01 "
           "are in years over AgeDB's 0-101 range, scaled to diabetes' 25-346 range (x 3.2): window 3, eta 0.003",
           ("rmse", "mae_many_shot", "mae_medium_shot", "mae_few_shot"), seeds=10,
           note="the paper's claim is mostly in the few-shot region (mae_few_shot: test targets in bins with few "
                "training targets, docs/methods.md); on diabetes' 89 test rows those are the top tail's few, so a "
                "seed's test split often has none and the region's means are over different seeds"),
    Recipe("cacr", "Zheng et al., Contrastive Attraction and Contrastive Repulsion for Representation Learning (2023)",
           "knn_accuracy", "higher", "CACR beats SimCLR's contrastive loss, most on long-tailed data",
           "SimCLR's NT-Xent at temperature 0.5 (SimCLR's CIFAR value), the same views and encoder", "loss", _LT,
           "JegZheng/CACR-SSL README CIFAR-10 command: tau_pos 1, tau_neg 0.9, alpha 1, beta 1 (two views, not Ny 4)",
           ("linear_probe_accuracy", "precision_at_1"), seeds=6),
    Recipe("isogclr", "Qiu et al., Not All Semantics are Created Equal (iSogCLR, ICML 2023)", "knn_accuracy", "higher",
           "individualised temperatures beat SimCLR at a fixed temperature, most on imbalanced data",
           "SimCLR's NT-Xent at temperature 0.1 (iSogCLR's starting temperature), the same views and encoder", "loss",
           _LT, "Optimization-AI/LibAUC GCLoss_v1(enable_isogclr=True): tau_init 0.1 in [0.05, 0.7], rho 0.3, "
           "eta 0.01, beta 0.9, gamma 0.9", ("linear_probe_accuracy", "precision_at_1"), seeds=6),
    Recipe("amcl", "Wang, Koniusz, Gedeon & Zheng, Adaptive Multi-head Contrastive Learning (ECCV 2024)",
           "knn_accuracy", "higher", "several heads with adaptive per-pair temperatures beat SimCLR",
           "SimCLR: AMCL with one head and a fixed temperature 0.5 (adaptive false), the same projection MLP",
           "one_head_fixed", "self-supervised pre-training on mnist1d (1,500), kNN / linear probe on a random 20% test split",
           "LeiWangR/cl runs/cifar10_simclr_amcl/config.json: 3 heads of 512 -> 128, beta 1e-4, tau in [1e-5, 2], "
           "top-k 100, temperature network 128; SimCLR's temperature 0.5", ("linear_probe_accuracy", "precision_at_1"),
           seeds=5),
    Recipe("m3col", "Kumar, Singhal et al., M3CoL: Harnessing Shared Relations via Multimodal Mixup Contrastive "
           "Learning for Multimodal Classification (TMLR 2025)", "linear_probe_accuracy", "higher",
           "the mixup-based contrastive term (M3Co, then SoftClip) raises multimodal classification accuracy",
           "the same two encoders and three heads with weight 0: no contrastive term (the paper's ablation without it)",
           "loss_weight_0", "two-modality classification on paired_modalities (2,000 samples, 10 classes; x of 32 and x2 of "
           "16 features from one 8-d latent, noise 1), the fused embedding's linear probe on a random 20% test split",
           "RaghavSinghal10/M3CoL train_medical.py / model_med.py: lambda_mixup 0.1, mixup_beta 0.15, s_thresh 0.5, "
           "temperature 0.1, mixup_pct 0.33 (M3Co for 9 of 30 epochs, then SoftClip at 0.125), embeddings mixed",
           ("knn_accuracy", "precision_at_1"), seeds=10),
    Recipe("early_mixup", "Zou et al., The Benefits of Mixup for Feature Learning (ICML 2023)", "knn_accuracy",
           "higher", "mixup's benefit is gained mostly early in training, so stopping mixing early keeps (or raises) "
           "full mixup's test accuracy",
           "the same input mixup throughout (no until)", "no_until",
           _HARD + "; kNN accuracy on the embeddings as in the manifold row (the paper reports a classifier's test "
           "accuracy; the engine computes `accuracy` only for the classification mixing methods, not for input "
           "mixup), the linear probe beside it",
           "the paper: standard input mixup under cross-entropy; alpha 1 (facebookresearch/mixup-cifar10, as in the "
           "input row); mixing stops at half the run (until fraction 0.5: epoch 15 of 30), our choice, as we found "
           "no stop point in the paper to take; data, model and schedule those of the manifold recipe",
           ("linear_probe_accuracy", "precision_at_1"), seeds=20,
           precondition=Precondition("knn_accuracy", "<", 0.95, _CEILING),
           regime=_CHOSEN.format("early_mixup") + ("the manifold recipe's regime (mnist1d 1,200, conv1d, 30 epochs) "
                                                    "reused unchanged, only checked: on the validation fifth the "
                                                    "full-mixup baseline's kNN accuracy is 0.902 ± 0.022 (seeds 0-2, "
                                                    "--threads 1), below 0.95")),
    Recipe("input", "Zhang et al., mixup (ICLR 2018)", "knn_accuracy", "higher", "mixup raises accuracy",
           "SupCon without mixing", "no_mixup", "mnist1d (4,000), random 20% test split",
           "facebookresearch/mixup-cifar10: alpha 1", ("precision_at_1",), seeds=8, seed_paper=False),
    Recipe("manifold", "Verma et al., Manifold Mixup (ICML 2019)", "knn_accuracy", "higher", "manifold mixup raises accuracy",
           "cross-entropy without mixing", "no_mixup", _HARD,
           "vikasverma1077/manifold_mixup: alpha 2, a random block per step", ("precision_at_1",), seeds=10,
           seed_paper=False, precondition=Precondition("knn_accuracy", "<", 0.95, _CEILING),
           regime=_CHOSEN.format("manifold") + ("on mnist1d 1,200 the baseline's kNN accuracy is 0.904 ± 0.030 (seeds 0-2); 0.935 ± 0.019 on 1,500 and 0.950 ± 0.009 on 2,000, not below 0.95")),
    Recipe("embedding", "embedding-level mixup (a baseline in the Metrix paper)", "precision_at_1", "higher",
           "mixing embeddings raises R@1", "multi-similarity without mixing, the same MS settings", "no_mixup",
           _RETRIEVAL, _MS_METRIX + "; embedding mixup alpha 1", ("map_at_r",), seeds=10, seed_paper=False),
    Recipe("cutmix", "Yun et al., CutMix (ICCV 2019)", "knn_accuracy", "higher", "CutMix raises accuracy",
           "cross-entropy without mixing", "no_mixup",
           "digits (8x8 images, as CutMix needs) with 5% of the data to train on (90 images), 95% test",
           "clovaai/CutMix-PyTorch: alpha 1", ("precision_at_1",), seeds=20, seed_paper=False,
           precondition=Precondition("knn_accuracy", "<", 0.95, _CEILING),
           regime=_CHOSEN.format("cutmix") + ("with 95% of digits held out for test the baseline's kNN accuracy is 0.900 ± 0.087 (seeds 0-2, 20 validation images); 0.957 ± 0.039 with 90% held out, 0.970 with 85%, 0.982 with 70%")),
    Recipe("moco", "He et al., MoCo (CVPR 2020); Chen et al., MoCo v2 (2020)", "knn_accuracy", "higher",
           "a momentum queue of negatives beats in-batch negatives at small batch sizes",
           "in-batch NT-Xent (SimCLR) with the same views and temperature", "no_mixup", _SSL,
           "facebookresearch/moco v2: temperature 0.2; queue 1,024 and momentum 0.99 scaled to the data",
           ("linear_probe_accuracy",), seeds=6, seed_paper=False),
]}


@dataclass(frozen=True)
class Study:
    """A study without a baseline that `run-all` runs after the pairs and the report gives a section.

    A study's module registers itself in STUDIES (cli/temperature.py does), so this module
    never imports it: the study builds on this module's runner, not the other way round.
    """

    name: str
    read: Callable[[Path, bool], dict[str, Any] | None]  # (directory, smoke) -> its result if current, else None
    run: Callable[..., dict[str, Any]]  # (out, *, jobs, smoke, device, command, threads) -> its result
    section: Callable[[dict[str, Any] | None], list[str]]  # RESULTS.md's lines for a result (None: not yet run)


STUDIES: dict[str, Study] = {}


# --------------------------------------------------------------------------- specs
def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def load_pair(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The raw JSON of NAME.json and NAME-baseline.json."""
    method, baseline = RECIPES[name].files
    return _read(method), _read(baseline)


def load_pretrain(name: str) -> dict[str, Any] | None:
    """The raw JSON of the recipe's pretraining spec, or None when both runs start from a fresh encoder."""
    recipe = RECIPES[name]
    return _read(RECIPES_DIR / f"{recipe.pretrain}.json") if recipe.pretrain else None


def seed_list(name: str, seeds: int | None, smoke: bool) -> list[int]:
    """The seeds a run uses: the asked number, else SMOKE_SEEDS for a smoke run, else the recipe's own."""
    n = seeds if seeds is not None else SMOKE_SEEDS if smoke else RECIPES[name].seeds
    return list(range(n))


def spec_hash(name: str, seeds: list[int], smoke: bool) -> str:
    """What a result file was computed from: the pair, its pretraining spec, the seeds and the smoke flag."""
    method, baseline = load_pair(name)
    blob = json.dumps({"method": method, "baseline": baseline, "pretrain": load_pretrain(name), "seeds": seeds,
                       "smoke": smoke}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_complete(path: Path, name: str, seeds: list[int], smoke: bool) -> bool:
    """Whether `path` holds a finished result of exactly these specs and seeds (run-all then skips the recipe)."""
    if not path.is_file():
        return False
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (old.get("spec_hash") == spec_hash(name, seeds, smoke)
            and [r.get("seed") for r in old.get("runs", {}).get("method", [])] == seeds
            and [r.get("seed") for r in old.get("runs", {}).get("baseline", [])] == seeds)


def with_seed(spec: dict[str, Any], seed: int) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    out.setdefault("train", {})["seed"] = seed
    return out


def smoke_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The recipe shrunk for a smoke run: a small dataset where it has a size, one epoch, eval at the end.

    The batch size that gives SMOKE_STEPS steps is set by `_train` once the split is known.
    """
    from embedmix.core import catalog

    out = copy.deepcopy(spec)
    ds = out["dataset"]
    entry = catalog.DATASETS.get(ds.get("name") or "")
    if entry is not None and any(p.name == "size" for p in entry.params):
        ds["size"] = SMOKE_SIZE
    out.setdefault("train", {})["epochs"] = 1
    out.setdefault("eval", {})["every_epochs"] = 0
    return out


def with_validation(spec: dict[str, Any], fraction: float) -> dict[str, Any]:
    """The spec with `dataset.split.validation_fraction` set: core carves that share of the training split."""
    out = copy.deepcopy(spec)
    out["dataset"].setdefault("split", {})["validation_fraction"] = fraction
    return out


def weights_fingerprint(weights: dict[str, Any]) -> str:
    """A short hash of a state dict's tensors (names, shapes, values): shows which weights a run started from."""
    h = hashlib.sha256()
    for key in sorted(weights):
        tensor = weights[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()[:16]


def _train(spec: dict[str, Any], *, smoke: bool, device: str | None, init_weights: dict[str, Any] | None = None,
           validation: float | None = None) -> tuple[dict[str, Any], Any]:
    """Validate, load the data, train and evaluate one spec: its record (metrics, steps, CPU and wall time) and result."""
    import torch

    from embedmix.core.data import load_dataset
    from embedmix.core.spec import validate_spec
    from embedmix.core.train import train

    cpu0, wall0 = time.process_time(), time.perf_counter()
    if smoke:
        spec = smoke_spec(spec)
    if validation is not None:
        spec = with_validation(spec, validation)
    parsed = validate_spec(spec)
    data = load_dataset(parsed)
    if validation is not None:
        data = data.validation_view()  # evaluated on the validation share alone: no test row is read
    if smoke:
        spec = copy.deepcopy(spec)
        spec["train"]["batch_size"] = max(2, len(data.x_train) // SMOKE_STEPS)
        parsed = validate_spec(spec)  # the split depends on the seed and fraction, not the batch: data stays valid
    result = train(parsed, data, device=torch.device(device) if device else None, init_weights=init_weights)
    record = {"seed": parsed.train.seed, "metrics": result.metrics, "steps": result.step,
              "cpu_s": round(time.process_time() - cpu0, 3), "wall_s": round(time.perf_counter() - wall0, 3)}
    if init_weights is not None:
        record["init_weights"] = weights_fingerprint(init_weights)
    return record, result


def run_spec(spec: dict[str, Any], *, smoke: bool = False, device: str | None = "cpu",
             init_weights: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train and evaluate one spec; the metrics with CPU and wall time of the whole run."""
    return _train(spec, smoke=smoke, device=device, init_weights=init_weights)[0]


def _encoder_weights(result: Any) -> dict[str, Any]:
    """The trained encoder's state dict, detached copies on the CPU: what the fine-tuning runs start from."""
    return {k: v.detach().cpu().clone() for k, v in result.encoder.state_dict().items()}


def run_seed(name: str, seed: int, smoke: bool = False, device: str | None = "cpu",
             sides: tuple[str, ...] = ("method", "baseline"), validation: float | None = None) -> dict[str, Any]:
    """One seed of a recipe: its pretraining (if any), then each side from the same starting weights.

    The unit of work of `run-all`'s worker processes; it also returns the resolved
    specs that ran, which the result file records.
    """
    cpu0, wall0 = time.process_time(), time.perf_counter()
    method, baseline = load_pair(name)
    out: dict[str, Any] = {"seed": seed, "resolved": {}}
    init = None
    pretrain = load_pretrain(name)
    if pretrain is not None:
        record, result = _train(with_seed(pretrain, seed), smoke=smoke, device=device, validation=validation)
        init = _encoder_weights(result)
        record["weights"] = weights_fingerprint(init)
        out["pretrain"], out["resolved"]["pretrain"] = record, result.spec.model_dump(mode="json")
    for side, spec in (("method", method), ("baseline", baseline)):
        if side in sides:
            record, result = _train(with_seed(spec, seed), smoke=smoke, device=device, init_weights=init,
                                    validation=validation)
            out[side], out["resolved"][side] = record, result.spec.model_dump(mode="json")
    out["cpu_s"], out["wall_s"] = round(time.process_time() - cpu0, 3), round(time.perf_counter() - wall0, 3)
    return out


# --------------------------------------------------------------------------- statistics
def _finite(values: list[float]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for one value)."""
    vals = _finite(values)
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def _stats(values: list[float]) -> dict[str, float]:
    """Mean, sd and how many seeds had the metric: some (a shot region's MAE) are absent from some seeds."""
    mean, sd = mean_std(values)
    return {"mean": mean, "std": sd, "n": len(_finite(values))}


def paired_t_interval(diffs: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The t interval of the mean of paired differences: mean -+ t(1 - (1 - c) / 2, n - 1) * sd / sqrt(n).

    NaN for fewer than two differences (no spread to scale by).
    """
    from scipy.stats import t

    n = len(diffs)
    if n < 2:
        return float("nan"), float("nan")
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = float(t.ppf(1 - (1 - confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def verdict(method: list[float], baseline: list[float], better: str) -> dict[str, Any]:
    """Paired comparison per seed (the same seed gives both runs the same split and initialisation).

    Improvement d_i = method_i - baseline_i, sign-flipped when lower is better, so d > 0 is
    the paper's direction. "reproduced": the 95% t interval of mean d lies above 0;
    "contradicted": below 0; "inconclusive": it contains 0 (or there are fewer than two seeds).
    Seeds where either run has no value are left out of the pairs.
    """
    sign = 1.0 if better == "higher" else -1.0
    diffs = [sign * (m - b) for m, b in zip(method, baseline)
             if m is not None and b is not None and not (math.isnan(m) or math.isnan(b))]
    n = len(diffs)
    mean_d, sd_d = mean_std(diffs)
    lo, hi = paired_t_interval(diffs)
    if n == 0:
        word = "not yet run"
    elif math.isnan(lo):
        word = "inconclusive"
    elif lo > 0:
        word = "reproduced"
    elif hi < 0:
        word = "contradicted"
    else:
        word = "inconclusive"
    return {"improvement": mean_d, "std": sd_d, "ci": [lo, hi], "confidence": CONFIDENCE, "n": n,
            "wins": sum(d > 0 for d in diffs), "verdict": word}


def summarise(recipe: Recipe, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side in ("method", "baseline"):
        metrics = sorted({k for r in runs[side] for k in r["metrics"]})
        out[side] = {k: _stats([r["metrics"].get(k, float("nan")) for r in runs[side]]) for k in metrics}
    values = {side: [r["metrics"].get(recipe.metric, float("nan")) for r in runs[side]] for side in ("method", "baseline")}
    out["verdict"] = verdict(values["method"], values["baseline"], recipe.better)
    if recipe.precondition is not None:
        mean = out["baseline"].get(recipe.precondition.metric, {}).get("mean", float("nan"))
        out["precondition"] = {"text": recipe.precondition.text(), "met": not math.isnan(mean) and recipe.precondition.met(mean)}
    return out


# --------------------------------------------------------------------------- running
def _machine(threads: int) -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": threads}


def _set_threads(threads: int | None) -> int:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def assemble(name: str, units: list[dict[str, Any]], *, smoke: bool, device: str | None, command: str,
             threads: int) -> dict[str, Any]:
    """The result file of a recipe from its seeds' units (any order), with the resolved specs that ran."""
    recipe = RECIPES[name]
    units = sorted(units, key=lambda u: u["seed"])
    seeds = [u["seed"] for u in units]
    runs = {side: [u[side] for u in units] for side in ("method", "baseline")}
    if recipe.pretrain:
        runs["pretrain"] = [u["pretrain"] for u in units]
    files = {"method": f"recipes/{name}.json", "baseline": f"recipes/{name}-baseline.json"}
    if recipe.pretrain:
        files["pretrain"] = f"recipes/{recipe.pretrain}.json"
    return {
        "recipe": name, "paper": recipe.paper, "metric": recipe.metric, "better": recipe.better,
        "seeds": seeds, "smoke": smoke, "device": device or "spec", "command": command,
        "spec_hash": spec_hash(name, seeds, smoke),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": _machine(threads),
        "files": files,
        "init_from": (f"each seed trains {files['pretrain']} first; method and baseline start from its encoder "
                      "weights (runs.*.init_weights = runs.pretrain.weights)") if recipe.pretrain else None,
        "resolved_specs": units[0]["resolved"] if units else {},
        "runs": runs, "summary": summarise(recipe, runs),
        "cpu_s": round(sum(u["cpu_s"] for u in units), 2), "wall_s": round(sum(u["wall_s"] for u in units), 2),
    }


def _write(out: Path | None, result: dict[str, Any]) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result['recipe']}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)  # a crash mid-write leaves the old file, never half a new one


def _progress(done: int, total: int, unit: dict[str, Any], name: str, started: float) -> str:
    recipe = RECIPES[name]
    m, b = (unit[side]["metrics"].get(recipe.metric, float("nan")) for side in ("method", "baseline"))
    elapsed = time.perf_counter() - started
    return (f"[{done}/{total}] {name} seed {unit['seed']}: {recipe.metric} method {m:.4f} baseline {b:.4f}; "
            f"cpu {unit['cpu_s']:.0f}s; elapsed {int(elapsed // 60)}m{int(elapsed % 60):02d}s")


def _units(plan: dict[str, list[int]], jobs: int, smoke: bool, device: str | None,
           threads: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Run every (recipe, seed) of the plan; yield (recipe, unit) as each finishes. jobs > 1: worker processes."""
    work = [(name, seed) for name, seeds in plan.items() for seed in seeds]
    if jobs <= 1:
        for name, seed in work:
            yield name, run_seed(name, seed, smoke, device)
        return
    # spawn: a fresh interpreter per worker, one torch thread each, no state forked from this process
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_set_threads,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(run_seed, name, seed, smoke, device): name for name, seed in work}
        for future in as_completed(futures):
            yield futures[future], future.result()


def run_recipes(plan: dict[str, list[int]], *, out: Path | None, jobs: int = 1, smoke: bool = False,
                device: str | None = "cpu", command: str, threads: int | None = None,
                quiet: bool = False) -> dict[str, dict[str, Any]]:
    """Run each recipe of `plan` (name -> seeds); write each result file as soon as its last seed finishes."""
    used = threads if threads is not None else 1 if jobs > 1 else _set_threads(None)
    if jobs <= 1:
        _set_threads(used)
    pending: dict[str, list[dict[str, Any]]] = {name: [] for name in plan}
    results: dict[str, dict[str, Any]] = {}
    total, started, done = sum(len(s) for s in plan.values()), time.perf_counter(), 0
    for name, unit in _units(plan, jobs, smoke, device, used):
        done += 1
        pending[name].append(unit)
        if not quiet:
            print(_progress(done, total, unit, name, started), file=sys.stderr, flush=True)
        if len(pending[name]) == len(plan[name]):
            results[name] = assemble(name, pending[name], smoke=smoke, device=device, command=command, threads=used)
            _write(out, results[name])
    return results


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _signed(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:+.{digits}f}"


def _ci(v: dict[str, Any]) -> str:
    lo, hi = v["ci"]
    return "-" if math.isnan(lo) else f"[{_signed(lo)}, {_signed(hi)}]"


def _print_table(result: dict[str, Any]) -> None:
    recipe = RECIPES[result["recipe"]]
    s = result["summary"]
    table = Table(title=f"{recipe.name}: {recipe.metric} ({recipe.better} is better), seeds {result['seeds']}")
    for col in ("run", "metric", "mean", "std"):
        table.add_column(col)
    for side in ("method", "baseline"):
        for metric in (recipe.metric, *recipe.secondary):
            ms = s[side].get(metric, {"mean": float("nan"), "std": float("nan")})
            table.add_row(side, metric, _fmt(ms["mean"]), _fmt(ms["std"]))
    Console().print(table)


def _summary_line(result: dict[str, Any]) -> str:
    recipe = RECIPES[result["recipe"]]
    s, v = result["summary"], result["summary"]["verdict"]
    return (f"{recipe.name}: {recipe.metric} method {_cell(s, 'method', recipe.metric)}, baseline "
            f"{_cell(s, 'baseline', recipe.metric)}; difference {_signed(v['improvement'])} ± {_fmt(v['std'])} "
            f"(n {v['n']}), 95% CI {_ci(v)}: {v['verdict']}; cpu {result['cpu_s']:.1f}s")


def _check_name(name: str) -> None:
    if name not in RECIPES:
        console.print(f"[red]error:[/red] unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
        raise typer.Exit(2)


Seeds = typer.Option(None, "--seeds", min=1, max=100,
                     help="seeds 0..n-1 (each seeds the split, the initialisation and the mixing); default: the "
                          f"recipe's own (at least {DEFAULT_SEEDS}; {SMOKE_SEEDS} with --smoke)")
Out = typer.Option(None, "--out", help=f"directory for the JSON result files (default {RESULTS_DIR}/; {SMOKE_DIR}/ "
                                        "with --smoke)")
Threads = typer.Option(None, "--threads", min=1, help="torch threads per process (default: 1 with --jobs > 1, else torch's)")
Jobs = typer.Option(1, "--jobs", min=1, max=64, help="worker processes, each running one seed of a recipe at a time")
Smoke = typer.Option(False, "--smoke", help=f"a {SMOKE_STEPS}-step version of each run (tests; not a result)")
Device = typer.Option("cpu", "--device", help="cpu (the reported CPU times), cuda, or auto (the spec's)")


def _device(device: str) -> str | None:
    if device not in ("cpu", "cuda", "auto"):
        console.print(f"[red]error:[/red] --device must be cpu, cuda or auto, not {device!r}")
        raise typer.Exit(2)
    return None if device == "auto" else device


def _command(head: str, seeds: int | None, jobs: int, threads: int | None, smoke: bool, extra: str = "") -> str:
    return (f"embedmix recipes {head}" + (f" --seeds {seeds}" if seeds else "") + (f" --jobs {jobs}" if jobs > 1 else "")
            + (f" --threads {threads}" if threads else "") + (" --smoke" if smoke else "") + extra)


@recipes_app.command("list")
def list_recipes(as_json: bool = typer.Option(False, "--json", help="print as JSON")) -> None:
    """Each method, the paper's metric and which direction is better, its seeds and spec files."""
    if as_json:
        print(json.dumps([{"name": r.name, "paper": r.paper, "metric": r.metric, "better": r.better,
                           "baseline": r.baseline, "protocol": r.protocol, "seeds": r.seeds,
                           "files": [str(p.relative_to(ROOT)) for p in r.spec_files]}
                          for r in RECIPES.values()], indent=2))
        return
    table = Table(title="recipes")
    for col in ("name", "paper", "metric (better)", "seeds", "baseline", "files"):
        table.add_column(col, overflow="fold")
    for r in RECIPES.values():
        table.add_row(r.name, r.paper, f"{r.metric} ({r.better})", str(r.seeds), r.baseline,
                      " ".join(str(p.relative_to(ROOT)) for p in r.spec_files))
    Console(width=200).print(table)


def _out(out: Path | None, smoke: bool) -> Path:
    return out if out is not None else SMOKE_DIR if smoke else RESULTS_DIR


@recipes_app.command("run")
def run(name: str = typer.Argument(..., help="recipe name (see `embedmix recipes list`)"), seeds: Optional[int] = Seeds,
        out: Optional[Path] = Out, jobs: int = Jobs, threads: Optional[int] = Threads, smoke: bool = Smoke,
        device: str = Device) -> None:
    """Train NAME.json and NAME-baseline.json for each seed; print the paired difference and its CI; write OUT/NAME.json."""
    _check_name(name)
    out = _out(out, smoke)
    command = _command(f"run {name}", seeds, jobs, threads, smoke)
    plan = {name: seed_list(name, seeds, smoke)}
    result = run_recipes(plan, out=out, jobs=jobs, smoke=smoke, device=_device(device), command=command,
                         threads=threads)[name]
    _print_table(result)
    print(_summary_line(result))
    print(f"wrote {out / (name + '.json')}")


@recipes_app.command("run-all")
def run_all(seeds: Optional[int] = Seeds, out: Optional[Path] = Out,
            jobs: int = typer.Option(2, "--jobs", min=1, max=64, help="worker processes (one torch thread each)"),
            threads: Optional[int] = Threads, smoke: bool = Smoke, device: str = Device,
            only: Optional[list[str]] = typer.Option(None, "--only", help="run just these recipes (repeatable)"),
            force: bool = typer.Option(False, "--force", help="rerun recipes whose result file is already complete"),
            report_to: Path = typer.Option(RESULTS_MD, "--report", help="the Markdown report written at the end "
                                                                        "(not with --smoke)")) -> None:
    """Run every recipe pair (or --only some) over its seeds, --jobs seeds at a time, then write RESULTS.md.

    A recipe whose OUT/NAME.json is already complete for its current specs and seeds is skipped (--force reruns it).
    """
    names = [n for n in only if n not in STUDIES] if only else list(RECIPES)
    for name in names:
        _check_name(name)
    studies = [st for st in STUDIES.values() if not only or st.name in only]  # run after the pairs
    out = _out(out, smoke)
    command = _command("run-all", seeds, jobs, threads, smoke, "".join(f" --only {n}" for n in only or []))
    plan = {}
    for name in names:
        wanted = seed_list(name, seeds, smoke)
        if not force and is_complete(out / f"{name}.json", name, wanted, smoke):
            console.print(f"{name}: complete for these specs and seeds ({out / name}.json), skipped")
            continue
        plan[name] = wanted
    plan = dict(sorted(plan.items(), key=lambda kv: -_expected_cost(out, kv[0], len(kv[1]))))  # longest first
    cpu0, wall0, started = time.process_time() + _children_cpu(), time.perf_counter(), datetime.now(timezone.utc)
    results = run_recipes(plan, out=out, jobs=jobs, smoke=smoke, device=_device(device), command=command,
                          threads=threads)
    ran = list(results)
    for st in studies:
        if st.read(out, smoke) is not None and not force:
            console.print(f"{st.name}: complete for its spec and seeds ({out / st.name}.json), skipped")
            continue
        st.run(out, jobs=jobs, smoke=smoke, device=_device(device), command=command, threads=threads)
        ran.append(st.name)
    wall, cpu = time.perf_counter() - wall0, time.process_time() + _children_cpu() - cpu0
    for result in results.values():
        print(_summary_line(result))
    if ran:
        summary = {"command": command, "started": started.isoformat(timespec="seconds"), "jobs": jobs, "smoke": smoke,
                   "recipes_run": ran, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                   "machine": _machine(threads or (1 if jobs > 1 else _set_threads(None)))}
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_ALL_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"all: {len(results)} recipe(s) run, cpu {cpu:.1f}s wall {wall:.1f}s; results in {out}/")
    if not smoke:
        report(results=out, out=report_to)


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (the worker processes) so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _expected_cost(out: Path, name: str, seeds: int) -> float:
    """CPU seconds a recipe is expected to take, from its last result (0 when unknown): to start the longest first."""
    path = out / f"{name}.json"
    try:
        old = json.loads(path.read_text())
        return old["cpu_s"] / max(1, len(old["seeds"])) * seeds
    except (OSError, KeyError, ValueError, TypeError):
        return 0.0


@recipes_app.command("regime")
def regime(name: str = typer.Argument(..., help="recipe name"), seeds: int = typer.Option(3, "--seeds", min=1, max=100),
           fraction: float = typer.Option(VALIDATION_FRACTION, "--validation", min=0.05, max=0.5,
                                          help="share of the training split evaluated on"),
           threads: Optional[int] = Threads, smoke: bool = Smoke, device: str = Device) -> None:
    """The baseline alone, evaluated on a validation share of the training split (the test split is never read):
    how a recipe's regime is chosen, e.g. that RankMixup's baseline is over-confident."""
    _check_name(name)
    _set_threads(threads)
    recipe = RECIPES[name]
    units = [run_seed(name, seed, smoke, _device(device), sides=("baseline",), validation=fraction)
             for seed in range(seeds)]
    metrics = [recipe.metric, *recipe.secondary]
    if recipe.precondition is not None and recipe.precondition.metric not in metrics:
        metrics.append(recipe.precondition.metric)
    for metric in metrics:
        mean, sd = mean_std([u["baseline"]["metrics"].get(metric, float("nan")) for u in units])
        print(f"{name} baseline on validation {fraction:g} of train, seeds 0..{seeds - 1}: {metric} {_fmt(mean)} ± {_fmt(sd)}")
    if recipe.precondition is not None:
        mean, _ = mean_std([u["baseline"]["metrics"].get(recipe.precondition.metric, float("nan")) for u in units])
        print(f"precondition {recipe.precondition.text()}: {'met' if recipe.precondition.met(mean) else 'NOT met'}")


# --------------------------------------------------------------------------- report
def _cell(summary: dict[str, Any], side: str, metric: str) -> str:
    ms = summary[side].get(metric)
    if not ms or math.isnan(ms["mean"]):
        return "-"
    seeds = summary["verdict"]["n"]
    some = f" ({ms['n']} of {seeds} seeds)" if ms.get("n", seeds) < seeds else ""
    return f"{ms['mean']:.4f} ± {ms['std']:.4f}{some}"


def _setup(name: str, result: dict[str, Any] | None) -> list[str]:
    """The method spec's data, model, objective, schedule, mixing and start, as table cells."""
    spec, _ = load_pair(name)
    ds, model, obj, train = spec["dataset"], spec.get("model", {}), spec.get("objective", {}), spec.get("train", {})
    data = ds.get("name") or ds.get("path") or ds.get("id")
    data += f" (size {ds['size']})" if ds.get("size") else ""
    split = ds.get("split", {})
    data += "".join(f", {k} {v:g}" for k, v in ds.get("params", {}).items())
    if split.get("kind") == "classes":
        data += f", test classes {split['holdout_classes']}"
    elif split.get("kind") == "given":
        data += ", the data's own test set"
    else:
        data += f", test {split.get('test_fraction', 0.2)}"
    net = f"{model.get('encoder', 'mlp')} width {model.get('width', 'default')}, dim {model.get('embedding_dim', 128)}"
    loss = obj.get("loss", "supcon") + "".join(f" {k}={v}" for k, v in obj.get("params", {}).items())
    loss += f", views {obj['views']}" if obj.get("views") else ""
    steps = result["runs"]["method"][0]["steps"] if result and result["runs"]["method"] else None
    sched = f"{train.get('epochs', 10)} epochs x batch {train.get('batch_size', 128)}, lr {train.get('lr', 1e-3)}"
    sched += f" ({steps} steps)" if steps else ""
    mix = spec.get("mixup")
    mixing = "-" if mix is None else mix["method"] + "".join(f" {k}={mix[k]}" for k in ("alpha", "level", "weight") if k in mix)
    mixing += "".join(f" {k}={v}" for k, v in (mix or {}).get("params", {}).items())
    until = (mix or {}).get("until")
    mixing += "".join(f" until {k} {v:g}" for k, v in (until or {}).items())  # early-stopped: where mixing stops
    pretrain = RECIPES[name].pretrain
    start = f"encoder of `recipes/{pretrain}.json` (same seed)" if pretrain else "fresh"
    return [data, net, loss, sched, mixing, start]


def _headroom(recipe: Recipe, summary: dict[str, Any]) -> str | None:
    """How far the baseline is below the ceiling 1 of a share metric (accuracy, R@1, AUROC); None for other metrics."""
    mean = summary["baseline"].get(recipe.metric, {}).get("mean")
    if mean is None or math.isnan(mean) or recipe.better != "higher" or not 0 <= mean <= 1:
        return None
    return f"the baseline's {recipe.metric} is {mean:.4f}, {1 - mean:.4f} below the ceiling 1"


def evidence(recipe: Recipe, result: dict[str, Any]) -> str:
    """What the numbers say about a row that is not reproduced: power, headroom, the precondition, the note."""
    s = result["summary"]
    v = s["verdict"]
    parts = []
    lo, hi = v["ci"]
    if not math.isnan(lo):
        parts.append(f"mean difference {_signed(v['improvement'])} with a 95% interval half-width of "
                     f"{(hi - lo) / 2:.4f} over {v['n']} seeds (seed-to-seed sd of the difference {_fmt(v['std'])})")
    room = _headroom(recipe, s)
    if room:
        parts.append(room)
    if recipe.precondition is not None:
        p = recipe.precondition
        parts.append(f"precondition {p.text()} ({p.why}): {_cell(s, 'baseline', p.metric)}, "
                     + ("met" if s["precondition"]["met"] else "NOT met, so this pair cannot test the claim"))
    if recipe.note:
        parts.append(recipe.note)
    return "; ".join(parts) + "."


def _run_line(results: dict[str, dict[str, Any]], directory: Path | None) -> list[str]:
    """Dates, commands, machine and times of the runs behind the report."""
    done = [r for r in results.values() if not r.get("smoke")]
    if not done:
        return []
    dates = sorted(r["date"] for r in done)
    machines = {json.dumps(r["machine"], sort_keys=True) for r in done}
    commands = sorted({r["command"] for r in done})
    cpu = sum(r["cpu_s"] for r in done)
    lines = [f"- Run: {dates[0][:10]}" + (f" to {dates[-1][:10]}" if dates[-1][:10] != dates[0][:10] else "")
             + " (UTC), commands: " + ", ".join(f"`{c}`" for c in commands) + ", then `embedmix recipes report`.",
             "- Machine: " + "; ".join(
                 f"{m['platform']}, {m['cpu_count']} CPU cores, torch {m['torch']}, {m['torch_threads']} torch thread(s) "
                 "per process" for m in map(json.loads, sorted(machines)))
             + ", device " + ", ".join(sorted({r['device'] for r in done})) + ".",
             f"- CPU time over the {len(done)} recipe(s): {cpu / 60:.1f} min (time.process_time of every run, summed "
             "over the worker processes)."]
    summary_path = None if directory is None else directory / RUN_ALL_FILE
    if summary_path is not None and summary_path.is_file():
        s = json.loads(summary_path.read_text())
        if not s.get("smoke"):
            lines.append(f"- The last `{s['command']}` ({s['started'][:16].replace('T', ' ')} UTC) ran "
                         f"{len(s['recipes_run'])} recipe(s) in {s['wall_s'] / 60:.1f} min wall time with {s['jobs']} "
                         f"worker process(es), {s['cpu_s'] / 60:.1f} min CPU; recipes already complete for their "
                         "specs and seeds were skipped.")
    return lines + [""]


READING = [
    "How to read the tables:",
    "",
    "- Each row trains `recipes/NAME.json` (method) and `recipes/NAME-baseline.json` (baseline) for seeds 0..n-1, "
    "overriding `train.seed`. The seed also draws the train/test split, so the spread across seeds includes the "
    "split, not only the initialisation and the mixing draws. Both runs of one seed share the split and the initial "
    "weights (and, for a recipe with a pretraining spec, the same pre-trained encoder), so the comparison is paired.",
    "- mean ± sd: over seeds, sample standard deviation (n - 1), on the test split (for class-disjoint retrieval: "
    "the held-out classes).",
    "- Δ ± sd: the mean over seeds of the paired difference (method − baseline), sign-flipped when lower is better, "
    "so Δ > 0 means the method is better, with the seed-to-seed standard deviation of that difference. "
    "95% CI: the paired t interval of the mean difference, Δ ∓ t(0.975, n − 1) · sd / √n.",
    "- Verdict: *reproduced* = the interval lies above 0 (the paper's direction); *contradicted* = it lies below 0; "
    "*inconclusive* = it contains 0. A verdict is about these data and this scale, not the paper's.",
    "- Precondition: what the baseline must show for the pair to test the claim at all (RankMixup's baseline must be "
    "over-confident, confidence − accuracy > 0; a classifier's baseline must be below its ceiling). It is reported "
    "from the test runs next to the verdict, and the row says when it is not met.",
    "- No setting was tuned on a test split: hyper-parameters are the paper's or its official code's (the 'settings "
    "from' column). Where a regime had to be chosen (data size, width, epochs), it was chosen from the baseline alone, "
    "on a validation fifth carved from the training split (`embedmix recipes regime NAME`), never from the method's "
    "result; the 'Regimes' section says how.",
    "- CPU s: CPU seconds of all runs of the row over its seeds (pretraining, training, evaluation).",
    "",
]


def _row(recipe: Recipe, r: dict[str, Any] | None) -> str:
    head = f"| {recipe.name} | {recipe.protocol} | {recipe.hparams} | {recipe.metric} ({recipe.better}) "
    if r is None or r.get("smoke"):
        return head + f"| not yet run | not yet run | - | - | not yet run | - | `embedmix recipes run {recipe.name}` |"
    s, v = r["summary"], r["summary"]["verdict"]
    word = v["verdict"]
    if "precondition" in s and not s["precondition"]["met"]:
        word += f" (precondition not met: {s['precondition']['text']})"
    return head + (f"| {_cell(s, 'method', recipe.metric)} | {_cell(s, 'baseline', recipe.metric)} "
                   f"| {_signed(v['improvement'])} ± {_fmt(v['std'])} (n {v['n']}) | {_ci(v)} | {word} "
                   f"| {r['cpu_s']:.0f} | `embedmix recipes run {recipe.name}` |")


def render_report(results: dict[str, dict[str, Any]], directory: Path | None = None,
                  studies: dict[str, dict[str, Any] | None] | None = None) -> str:
    """RESULTS.md from the result files (one per recipe; recipes without one are marked 'not yet run'), with each
    registered study's section from its result (`studies` by name; missing or None: not yet run)."""
    lines = ["# Results: each mixing method against its baseline, under its paper's protocol", ""]
    lines += ["Written by `embedmix recipes report` from the JSON files that `embedmix recipes run-all` "
              "(or `embedmix recipes run NAME`) writes into `results/`. Do not edit by hand: rerun the commands.", ""]
    lines += _run_line(results, directory)
    lines += READING
    header = ("| method | protocol | settings from | paper metric (better) | method mean ± sd | baseline mean ± sd "
              "| Δ ± sd (n) | 95% CI of Δ | verdict | CPU s | command |")
    rule = "|---|---|---|---|---|---|---|---|---|---|---|"
    for title, seed_paper in (("Seed papers", True), ("Other mixing methods in the engine", False)):
        lines += [f"## {title}", "", header, rule]
        lines += [_row(r, results.get(r.name)) for r in RECIPES.values() if r.seed_paper == seed_paper]
        lines.append("")
    done = {n: r for n, r in results.items() if not r.get("smoke")}
    unproven = [RECIPES[n] for n in RECIPES if n in done and done[n]["summary"]["verdict"]["verdict"] != "reproduced"]
    if unproven:
        lines += ["## Rows not reproduced: what the evidence says", ""]
        lines += [f"- **{r.name}** ({done[r.name]['summary']['verdict']['verdict']}): {evidence(r, done[r.name])}"
                  for r in unproven]
        lines.append("")
    for st in STUDIES.values():
        lines += st.section((studies or {}).get(st.name))
    lines += ["## Regimes and preconditions", "",
              "| method | precondition | baseline on test (mean ± sd) | met | how the regime was chosen |", "|---|---|---|---|---|"]
    for recipe in RECIPES.values():
        if recipe.precondition is None:
            continue
        r = done.get(recipe.name)
        value = _cell(r["summary"], "baseline", recipe.precondition.metric) if r else "not yet run"
        met = ("yes" if r["summary"]["precondition"]["met"] else "no") if r else "-"
        lines.append(f"| {recipe.name} | {recipe.precondition.text()}: {recipe.precondition.why} | {value} | {met} "
                     f"| {recipe.regime} |")
    lines += ["", "## Secondary metrics", "",
              "| method | metric | method mean ± sd | baseline mean ± sd | Δ (method − baseline) |", "|---|---|---|---|---|"]
    for recipe in RECIPES.values():
        r = done.get(recipe.name)
        if r is None:
            continue
        for metric in recipe.secondary:
            m, b = (r["summary"][side].get(metric, {}).get("mean", float("nan")) for side in ("method", "baseline"))
            lines.append(f"| {recipe.name} | {metric} | {_cell(r['summary'], 'method', metric)} "
                         f"| {_cell(r['summary'], 'baseline', metric)} | {_signed(m - b)} |")
    lines += ["", "## Setups (the method's spec; the baseline differs only as the next table says)", "",
              "| method | data | model | objective | training | mixing | starts from |", "|---|---|---|---|---|---|---|"]
    for recipe in RECIPES.values():
        lines.append(f"| {recipe.name} | " + " | ".join(_setup(recipe.name, done.get(recipe.name))) + " |")
    lines += ["", "Each result file (`results/NAME.json`) holds the resolved specs that ran (`resolved_specs`: every "
              "default filled in), and for MixOE the fingerprint of the pre-trained encoder each fine-tuning run "
              "started from.", ""]
    lines += ["## What each pair compares", "", "| method | paper | the paper's claim | baseline |", "|---|---|---|---|"]
    for recipe in RECIPES.values():
        lines.append(f"| {recipe.name} | {recipe.paper} | {recipe.claim} | {recipe.baseline} |")
    lines += [
        "",
        "Baselines that are not 'the same spec without the `mixup` block': the metrics `accuracy`, `ece`, "
        "`confidence_gap`, `auroc` and `tnr_at_95_tpr` come from the classification head that the classification "
        "methods own, so a spec without mixing cannot compute them. RankMixup's and MixOE's baselines are therefore "
        "the method with `weight` 0, which draws and computes no mixing: "
        "`tests/unit/test_mixup_ssl_cls.py::test_rankmixup_weight_zero_is_plain_cross_entropy_training` and "
        "`::test_mixoe_weight_zero_is_plain_cross_entropy_training` prove it trains exactly as plain cross-entropy. "
        "Decoupled Mixup's baseline is the method with `eta` 0, which is plain mixup cross-entropy "
        "(`::test_decoupled_mixup_reduces_to_mixup_ce_and_to_ce`): the paper's claim is over mixup, so this is "
        "the comparison that isolates the decoupled regulariser. MoCHi's baseline is MoCo v2 (method `moco`), "
        "which equals MoCHi with no synthetic negatives (`::test_mochi_without_synthetic_points_is_moco_exactly`). "
        "SupReMix's baseline is SupReMix with `mixed_pairs` false: the same supervised contrastive regression "
        "without its mixed pairs. Early-stopped mixup's baseline is the same input mixup without `mixup.until`, "
        "mixing throughout: the paper proposes stopping full mixup early, so full mixup is the comparison "
        "(`tests/unit/test_mixup_until.py` proves that after the switch a run takes exactly the unmixed spec's "
        "steps). `tests/unit/test_recipes.py` checks that every pair differs only in this way.",
        "",
    ]
    missing = [n for n in RECIPES if n not in done]
    if missing:
        lines += ["## Not yet run", "",
                  "These recipes have no result yet; run them with the command in their row "
                  "(or all with `embedmix recipes run-all`, which skips the complete ones), then "
                  "`embedmix recipes report`: " + ", ".join(f"`{n}`" for n in missing) + ".", ""]
    return "\n".join(lines)


def read_results(directory: Path) -> dict[str, dict[str, Any]]:
    """The result files of the current specs; a file computed from other specs (or seeds) is left out, as not yet run."""
    out = {}
    for name in RECIPES:
        path = directory / f"{name}.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        if result.get("spec_hash") != spec_hash(name, result.get("seeds", []), bool(result.get("smoke"))):
            console.print(f"{path}: computed from other specs than recipes/ holds now; left out (rerun it)")
            continue
        result["summary"] = summarise(RECIPES[name], result["runs"])  # recomputed: the rule here is the one reported
        out[name] = result
    return out


@recipes_app.command("report")
def report(results: Path = typer.Option(RESULTS_DIR, "--results", help="directory of the JSON result files"),
           out: Path = typer.Option(RESULTS_MD, "--out", help="the Markdown file to write")) -> None:
    """Write RESULTS.md from the JSON result files (recipes without one are marked 'not yet run')."""
    found = read_results(results)
    out.write_text(render_report(found, results, {st.name: st.read(results, False) for st in STUDIES.values()}))
    print(f"wrote {out} ({len(found)} of {len(RECIPES)} recipes have results)")


def register(app: typer.Typer) -> None:
    """Add `embedmix recipes` to the CLI; `cli.main` imports the studies first, which register themselves."""
    app.add_typer(recipes_app, name="recipes")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(recipes_app())
