"""The embedding maps behind the dashboard's embedding view (core/projection.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from embedmix.core.data import Dataset
from embedmix.core.projection import pca_2d, project, project_test_set, subsample

CAP = 150  # small enough that t-SNE takes a moment


def _clusters(n_per: int = 60, classes: int = 4, dim: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 6
    labels = torch.arange(classes).repeat_interleave(n_per)
    return centres[labels] + torch.randn(len(labels), dim, generator=g), labels


def test_pca_matches_sklearn_up_to_the_sign_of_each_axis():
    x, _ = _clusters()
    coords, shares = pca_2d(x)
    reference = PCA(n_components=2).fit(x.double().numpy())
    expected = reference.transform(x.double().numpy())
    for axis in range(2):
        ours = coords[:, axis].double().numpy()
        sign = np.sign(ours @ expected[:, axis])
        np.testing.assert_allclose(ours * sign, expected[:, axis], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(shares, reference.explained_variance_ratio_, rtol=1e-6)


def test_pca_is_the_same_map_for_the_same_embeddings_whatever_their_sign_convention():
    x, _ = _clusters()
    a, _ = pca_2d(x)
    b, _ = pca_2d(x.flip(0))  # the same points in another order: SVD may return flipped axes
    torch.testing.assert_close(a, b.flip(0), rtol=1e-4, atol=1e-4)


def test_separated_classes_stay_apart_on_the_map():
    x, labels = _clusters()
    result = project(x, labels, neighbours=False)
    coords = torch.tensor(result["maps"][0]["coords"])
    centres = torch.stack([coords[labels == k].mean(0) for k in range(4)])
    spread = max(float((coords[labels == k] - centres[k]).norm(dim=1).mean()) for k in range(4))
    gaps = torch.pdist(centres)
    assert float(gaps.min()) > 2 * spread


def test_project_keeps_labels_aligned_with_points_and_is_json():
    x, labels = _clusters(n_per=100)  # 400 points: subsampled to CAP
    result = project(x, labels, class_names=["a", "b", "c", "d"], seed=3, max_points=CAP)
    assert result["points"] == CAP and result["total_points"] == 400
    assert result["label_kind"] == "class" and len(result["labels"]) == CAP
    index = subsample(400, CAP, 3)
    assert result["labels"] == labels[index].tolist()
    methods = [m["method"] for m in result["maps"]]
    assert methods[0] == "pca" and "tsne" in methods  # scikit-learn is a dependency
    assert all(len(m["coords"]) == CAP for m in result["maps"])
    assert json.loads(json.dumps(result)) == result
    assert project(x, labels, seed=3, max_points=CAP, neighbours=False)["maps"][0] == result["maps"][0]


def test_regression_targets_and_unlabelled_data():
    x, _ = _clusters()
    target = torch.linspace(0, 1, len(x))
    assert project(x, target, neighbours=False)["label_kind"] == "value"
    unlabelled = project(x[:5], None)
    assert unlabelled["label_kind"] is None and unlabelled["labels"] is None
    assert [m["method"] for m in unlabelled["maps"]] == ["pca"]  # too few points for neighbour maps


@pytest.mark.parametrize("n, cap", [(10, 20), (50, 20)])
def test_subsample_is_sorted_unique_and_bounded(n, cap):
    index = subsample(n, cap, seed=0)
    assert len(index) == min(n, cap) and index.unique().numel() == len(index)
    assert torch.equal(index, index.sort().values)


def test_the_test_set_is_embedded_by_the_model_and_text_pairs_have_no_map():
    x, labels = _clusters(n_per=10)
    data = Dataset(x_train=x, y_train=labels, x_test=x, y_test=labels, task="classification", source="clusters")
    encoder = torch.nn.Linear(x.shape[1], 3)
    result = project_test_set(encoder, data, torch.device("cpu"), max_points=25)
    assert result is not None and result["points"] == 25 and result["total_points"] == 40
    assert result["labels"] == labels[subsample(40, 25, 0)].tolist()
    expected, _ = pca_2d(encoder(x[subsample(40, 25, 0)]).detach())
    np.testing.assert_allclose(result["maps"][0]["coords"], expected.numpy(), atol=1e-3)
    assert project_test_set(encoder, object(), torch.device("cpu")) is None
