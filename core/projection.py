"""2-D maps of a model's test-set embeddings, for the dashboard's embedding view.

A job ends with one map per method: PCA always (exact, deterministic, a few
milliseconds), t-SNE when scikit-learn is importable and UMAP when umap-learn
is. PCA shows the global geometry (how far apart the classes sit along the
directions of most variance); the neighbour-embedding methods show which points
are each other's neighbours, which is what retrieval metrics measure. The test
set is subsampled to ``max_points`` so that t-SNE stays cheap (seconds for a
thousand points on one core) and the JSON stays small (tens of KB).
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

import torch
from torch import Tensor

from embedmix.core.data import Dataset
from embedmix.core.models import Encoder
from embedmix.core.array_train import embed

FORMAT = 1
MAX_POINTS = 1000
MIN_POINTS_NEIGHBOURS = 10  # below this t-SNE's perplexity and UMAP's neighbourhoods make no sense
DECIMALS = 4
TSNE_ITERATIONS = 500  # half sklearn's default: the map settles well before, at half the cost


def pca_2d(x: Tensor) -> tuple[Tensor, list[float]]:
    """The first two principal components of ``x`` (N, d) and the share of variance each explains.

    A thin SVD of the centred data is exact and cheap at dashboard sizes (N of
    about 1000, d up to a few hundred). Each axis's sign is fixed so that its
    largest loading is positive: the same embeddings always draw the same map.
    """
    x = x.double()
    centred = x - x.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    axes = vh[:2]
    signs = torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)))
    axes = axes * torch.where(signs == 0, torch.ones_like(signs), signs)
    coords = centred @ axes.T
    if coords.shape[1] < 2:  # a 1-D embedding: draw it on a line
        coords = torch.cat([coords, torch.zeros(len(coords), 2 - coords.shape[1], dtype=coords.dtype)], dim=1)
    variance = s.square()
    total = float(variance.sum())
    shares = [float(v) / total if total > 0 else 0.0 for v in variance[:2]]
    return coords.float(), shares


def tsne_2d(x: Tensor, seed: int) -> Tensor | None:
    """t-SNE of ``x`` with scikit-learn, or None when it is not installed or there are too few points."""
    if len(x) < MIN_POINTS_NEIGHBOURS or importlib.util.find_spec("sklearn") is None:
        return None
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = min(30.0, (len(x) - 1) / 3)
    tsne = TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed, n_jobs=1, max_iter=TSNE_ITERATIONS
    )
    # One thread: its OpenMP threads fighting a busy machine's other work made it 5-10x slower.
    with threadpool_limits(1):
        return torch.from_numpy(tsne.fit_transform(x.double().numpy())).float()


def umap_2d(x: Tensor, seed: int) -> Tensor | None:
    """UMAP of ``x`` with umap-learn, or None when it is not installed or there are too few points."""
    if len(x) < MIN_POINTS_NEIGHBOURS or importlib.util.find_spec("umap") is None:
        return None
    import umap

    reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed)
    return torch.from_numpy(reducer.fit_transform(x.double().numpy())).float()


def subsample(n: int, max_points: int, seed: int) -> Tensor:
    """Indices of at most ``max_points`` of ``n`` rows, the same for the same seed, in ascending order."""
    if n <= max_points:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:max_points].sort().values


def project(
    embeddings: Tensor,
    labels: Tensor | None,
    *,
    class_names: list[str] | None = None,
    max_points: int = MAX_POINTS,
    seed: int = 0,
    neighbours: bool = True,
) -> dict[str, Any]:
    """The JSON-ready maps of ``embeddings`` (N, d): coordinates per method and each point's label.

    ``labels`` are class indices (drawn as colours) or regression targets
    (drawn as a colour scale); None draws every point alike. ``neighbours``
    False keeps only PCA.
    """
    started = time.perf_counter()
    index = subsample(len(embeddings), max_points, seed)
    x = embeddings.detach().cpu().float()[index]
    coords, shares = pca_2d(x)
    maps = [{"method": "pca", "coords": _rounded(coords), "explained_variance": [round(v, DECIMALS) for v in shares]}]
    if neighbours:
        for method, fn in (("tsne", tsne_2d), ("umap", umap_2d)):
            result = fn(x, seed)
            if result is not None:
                maps.append({"method": method, "coords": _rounded(result)})
    return {
        "format": FORMAT,
        "points": len(index),
        "total_points": len(embeddings),
        "label_kind": _label_kind(labels),
        "labels": None if labels is None else _label_values(labels[index]),
        "class_names": class_names,
        "maps": maps,
        "seconds": round(time.perf_counter() - started, 3),
    }


def project_test_set(
    encoder: Encoder, data: object, device: torch.device, *, seed: int = 0, max_points: int = MAX_POINTS
) -> dict[str, Any] | None:
    """The maps of the test set as embedded by ``encoder`` (the exported model, without its head).

    None for data that is not an array dataset (text pairs): their test rows are
    strings with no class to colour them by, so a map would show little.
    """
    if not isinstance(data, Dataset):
        return None
    index = subsample(len(data.x_test), max_points, seed)
    embeddings = embed(encoder, data.x_test[index], device)
    labels = None if data.y_test is None else data.y_test[index]
    result = project(embeddings, labels, class_names=data.class_names, max_points=max_points, seed=seed)
    result["total_points"] = len(data.x_test)
    return result


def _label_kind(labels: Tensor | None) -> str | None:
    if labels is None:
        return None
    return "value" if labels.is_floating_point() else "class"


def _label_values(labels: Tensor) -> list[float] | list[int]:
    if labels.is_floating_point():
        return [round(float(v), DECIMALS) for v in labels]
    return [int(v) for v in labels]


def _rounded(coords: Tensor) -> list[list[float]]:
    """Four decimals: far below a pixel on any map, and half the JSON of full floats."""
    return [[round(float(a), DECIMALS), round(float(b), DECIMALS)] for a, b in coords.tolist()]
