"""Batched view augmentations: seeded, shape-preserving, and each op doing exactly its job."""

from __future__ import annotations

import itertools

import pytest
import torch

from embedmix.core.data.augment import augment, shift
from embedmix.core.spec import AugmentSpec

SHAPES = [(64, 40), (32, 3, 40), (16, 2, 12, 12)]
ALL_ON = AugmentSpec(noise_std=0.1, max_shift=0.2, scale_range=0.3, mask_fraction=0.2, flip=True)
NOTHING = dict(noise_std=0.0, max_shift=0.0, scale_range=0.0, mask_fraction=0.0, flip=False)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def distinct(shape) -> torch.Tensor:
    """Nonzero, pairwise distinct values, so a shifted copy can only match one offset."""
    n = 1
    for s in shape:
        n *= s
    return (torch.arange(n, dtype=torch.float32) + 1).reshape(shape)


def moved(x: torch.Tensor, o: int, dim: int) -> torch.Tensor:
    """x moved by o along dim (positive: towards higher indices), zero filled."""
    n = x.shape[dim]
    out = torch.zeros_like(x)
    if o >= 0:
        out.narrow(dim, o, n - o).copy_(x.narrow(dim, 0, n - o))
    else:
        out.narrow(dim, 0, n + o).copy_(x.narrow(dim, -o, n + o))
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=["B,L", "B,C,L", "B,C,H,W"])
def test_same_seed_same_views(shape):
    x = torch.randn(shape, generator=gen(99))
    a = augment(x, ALL_ON, gen(0))
    b = augment(x, ALL_ON, gen(0))
    assert torch.equal(a, b)
    assert not torch.equal(a, augment(x, ALL_ON, gen(1)))
    g = gen(0)
    first, second = augment(x, ALL_ON, g), augment(x, ALL_ON, g)
    assert torch.equal(first, a)
    assert not torch.equal(first, second)  # the generator advances: two views differ


@pytest.mark.parametrize("shape", SHAPES, ids=["B,L", "B,C,L", "B,C,H,W"])
def test_shape_and_dtype_preserved_and_input_untouched(shape):
    x = torch.randn(shape, generator=gen(5))
    before = x.clone()
    out = augment(x, ALL_ON, gen(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(x, before)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, x)


def test_everything_off_is_the_identity():
    x = torch.randn(8, 2, 6, 6, generator=gen(0))
    assert torch.equal(augment(x, AugmentSpec(**NOTHING), gen(0)), x)


def test_shift_moves_each_sequence_with_zero_fill():
    x = distinct((64, 40))
    spec = AugmentSpec(**{**NOTHING, "max_shift": 0.1})
    out = augment(x, spec, gen(3))
    k = int(0.1 * 40)
    offsets = []
    for i in range(len(x)):
        matches = [o for o in range(-k, k + 1) if torch.equal(out[i], moved(x[i:i + 1], o, 1)[0])]
        assert len(matches) == 1, f"row {i} is not x moved by at most {k}"
        offsets.append(matches[0])
    assert set(offsets) == set(range(-k, k + 1))  # 64 draws cover every offset in [-4, 4]
    # values are kept: what is not shifted out is there unchanged
    for i, o in enumerate(offsets):
        kept = out[i][out[i] != 0]
        assert torch.equal(kept, x[i, max(0, -o): 40 - max(0, o)])


def test_shift_moves_all_channels_together():
    x = distinct((32, 3, 20))
    out = augment(x, AugmentSpec(**{**NOTHING, "max_shift": 0.25}), gen(4))
    k = 5
    for i in range(len(x)):
        matches = [o for o in range(-k, k + 1) if torch.equal(out[i], moved(x[i], o, 1))]
        assert len(matches) == 1


def test_shift_of_images_moves_rows_and_columns():
    x = distinct((16, 2, 10, 10))
    out = augment(x, AugmentSpec(**{**NOTHING, "max_shift": 0.2}), gen(5))
    k = 2
    pairs = set()
    for i in range(len(x)):
        matches = [(dy, dx) for dy, dx in itertools.product(range(-k, k + 1), repeat=2)
                   if torch.equal(out[i], moved(moved(x[i], dx, 2), dy, 1))]
        assert len(matches) == 1, f"image {i} is not a translation of at most {k} pixels"
        pairs.add(matches[0])
    assert len({dy for dy, _ in pairs}) > 1 and len({dx for _, dx in pairs}) > 1


def test_shift_function_on_any_dim_and_zero_width():
    x = distinct((8, 30))
    assert torch.equal(shift(x, 0.01, gen(0), dim=1), x)  # int(0.01 * 30) == 0: nothing to do
    out = shift(x, 0.5, gen(0), dim=1)
    assert all(any(torch.equal(out[i], moved(x[i:i + 1], o, 1)[0]) for o in range(-15, 16)) for i in range(8))


def test_short_sequence_with_small_max_shift_is_unchanged():
    x = distinct((4, 5))
    assert torch.equal(augment(x, AugmentSpec(**{**NOTHING, "max_shift": 0.1}), gen(0)), x)


@pytest.mark.parametrize("shape", [(32, 40), (32, 3, 40)], ids=["B,L", "B,C,L"])
def test_flip_only_for_images_not_sequences(shape):
    x = distinct(shape)
    assert torch.equal(augment(x, AugmentSpec(**{**NOTHING, "flip": True}), gen(0)), x)


def test_flip_mirrors_some_images_horizontally():
    x = distinct((64, 3, 5, 7))
    out = augment(x, AugmentSpec(**{**NOTHING, "flip": True}), gen(0))
    flipped = [bool(torch.equal(out[i], x[i].flip(-1))) for i in range(len(x))]
    same = [bool(torch.equal(out[i], x[i])) for i in range(len(x))]
    assert all(f != s for f, s in zip(flipped, same))  # each image is either kept or mirrored left-right
    assert 10 < sum(flipped) < 54


def test_scale_multiplies_each_sample_by_one_factor_in_range():
    x = torch.rand(128, 3, 10, generator=gen(1)) + 0.5
    out = augment(x, AugmentSpec(**{**NOTHING, "scale_range": 0.3}), gen(2))
    ratio = out / x
    factor = ratio.flatten(1)[:, :1]
    torch.testing.assert_close(ratio.flatten(1), factor.expand(-1, 30))
    assert float(factor.min()) >= 0.7 - 1e-6 and float(factor.max()) <= 1.3 + 1e-6
    assert float(factor.max() - factor.min()) > 0.3


def test_mask_zeroes_about_the_fraction():
    x = torch.rand(64, 100, generator=gen(1)) + 1.0
    out = augment(x, AugmentSpec(**{**NOTHING, "mask_fraction": 0.3}), gen(2))
    zero = out == 0
    assert abs(zero.float().mean().item() - 0.3) < 0.02
    assert torch.equal(out[~zero], x[~zero])


def test_noise_has_the_given_std():
    x = torch.zeros(256, 200)
    out = augment(x, AugmentSpec(**{**NOTHING, "noise_std": 0.5}), gen(7))
    assert abs(out.std().item() - 0.5) < 0.01 and abs(out.mean().item()) < 0.01
