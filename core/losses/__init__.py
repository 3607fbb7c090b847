"""Loss functions by catalog name.

`build(name, ...)` returns an `nn.Module` for any loss in `core.catalog.LOSSES`,
with the catalog's defaults overridden by `params`. Every module has the class
attributes `two_view` and `labels` (as in the catalog) and accepts:

* `loss(embeddings, labels)`: integer labels (B,);
* `loss(view_a, view_b)`: two-view objectives (ntxent, barlow_twins);
* `loss(embeddings, weights=PairWeights, ref=None | (N, d))`: pair losses,
  soft or hard weights against the batch or against extra references (queue,
  synthetic negatives); 0/1 weights from labels give exactly the labels value;
* `loss(embeddings, soft_targets)`: class-weight losses (proxy_anchor,
  normalized_softmax, arcface) and the cross_entropy head, float (B, C) rows
  summing to 1;
* `loss(view_a, view_b, index)`: losses with per-sample state (isogclr, its
  class attribute `indexed` set), `index` the rows' training-set indices;
* `loss(z_a, z_b, labels, epoch=, epochs=)`: two-modality losses (m3col, its
  class attribute `modalities` 2), the two encoders' embeddings of one batch;
  the second encoder is handed over with `use_second_encoder` and trained as
  one of the loss's parameters.

Class-weight losses, the heads (cross_entropy, mse, conr) and amcl (its
projection heads and temperature network) own learnable parameters: add
`loss.parameters()` to the optimizer; isogclr's per-sample temperatures
are buffers (saved in `state_dict`, updated by the loss itself). Nothing here depends on
pytorch-metric-learning; it is only the test oracle and the benchmark peer.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ..catalog import LOSSES
from .amcl import AMCLLoss
from .barlow_twins import BarlowTwinsLoss
from .cacr import CACRLoss
from .conr import ConRLoss
from .heads import CrossEntropyLoss, MSELoss
from .infonce import DecoupledSoftmaxLoss, NTXentLoss, SupConLoss
from .isogclr import ISogCLRLoss
from .m3col import M3CoLLoss
from .margin import ContrastiveLoss, TripletLoss
from .mnrl import MultipleNegativesRankingLoss
from .multi_similarity import MultiSimilarityLoss
from .pairs import PairLoss, PairWeights
from .proxies import ArcFaceLoss, ClassWeightLoss, NormalizedSoftmaxLoss, ProxyAnchorLoss

LOSS_CLASSES: dict[str, type[nn.Module]] = {
    "contrastive": ContrastiveLoss,
    "triplet": TripletLoss,
    "multi_similarity": MultiSimilarityLoss,
    "supcon": SupConLoss,
    "ntxent": NTXentLoss,
    "proxy_anchor": ProxyAnchorLoss,
    "normalized_softmax": NormalizedSoftmaxLoss,
    "arcface": ArcFaceLoss,
    "barlow_twins": BarlowTwinsLoss,
    "decoupled_softmax": DecoupledSoftmaxLoss,
    "cross_entropy": CrossEntropyLoss,
    "mse": MSELoss,
    "mnrl": MultipleNegativesRankingLoss,
    "conr": ConRLoss,
    "cacr": CACRLoss,
    "isogclr": ISogCLRLoss,
    "amcl": AMCLLoss,
    "m3col": M3CoLLoss,
}


def build(name: str, *, num_classes: int | None = None, embedding_dim: int | None = None,
          num_samples: int | None = None, **params: Any) -> nn.Module:
    """The loss `name` with `params`; the catalog's defaults complete what they leave out.

    The engine passes a resolved spec's complete `objective.params`; the defaults are
    for callers that build a loss by name (tests, benchmarks, library use).

    `num_classes`, `embedding_dim` and `num_samples` (training rows) go to the losses
    whose constructor takes them (the class-weight losses, the heads, isogclr's
    per-sample state) and are ignored by the others,
    so a training loop can always pass them. Unknown names or parameters, bad
    choices and missing sizes raise ValueError naming the culprit.
    """
    entry = LOSSES.get(name)
    if entry is None or name not in LOSS_CLASSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSS_CLASSES))}")
    known = {p.name: p for p in entry.params}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"loss {name!r} has no parameter {', '.join(map(repr, unknown))}; it takes {sorted(known)}")
    for key, value in params.items():
        choices = known[key].choices
        if choices is not None and value not in choices:
            raise ValueError(f"loss {name!r}: {key}={value!r}, expected one of {choices}")
    cls = LOSS_CLASSES[name]
    sizes = _sizes(name, cls, num_classes=num_classes, embedding_dim=embedding_dim, num_samples=num_samples)
    return cls(**sizes, **entry.complete(params))


def _sizes(name: str, cls: type[nn.Module], **sizes: int | None) -> dict[str, int | None]:
    """The sizes `cls` takes; one it requires but did not get is a ValueError."""
    accepted = inspect.signature(cls).parameters
    taken = {key: value for key, value in sizes.items() if key in accepted}
    missing = [key for key, value in taken.items() if value is None and accepted[key].default is inspect.Parameter.empty]
    if missing:
        raise ValueError(f"loss {name!r} learns per-class, per-dimension or per-sample state: pass {' and '.join(missing)}")
    return taken


__all__ = [
    "LOSS_CLASSES",
    "AMCLLoss",
    "ArcFaceLoss",
    "BarlowTwinsLoss",
    "CACRLoss",
    "ClassWeightLoss",
    "ConRLoss",
    "ContrastiveLoss",
    "CrossEntropyLoss",
    "DecoupledSoftmaxLoss",
    "ISogCLRLoss",
    "M3CoLLoss",
    "MSELoss",
    "MultiSimilarityLoss",
    "MultipleNegativesRankingLoss",
    "NTXentLoss",
    "NormalizedSoftmaxLoss",
    "PairLoss",
    "PairWeights",
    "ProxyAnchorLoss",
    "SupConLoss",
    "TripletLoss",
    "build",
]
