"""MixStyle on embeddings: the look changes, the content stays."""

import torch

from medsam3.training.mixstyle import mix_styles


def _views() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    scale = torch.tensor([0.5, 1.0, 2.0, 4.0]).view(4, 1, 1, 1)
    shift = torch.tensor([-3.0, 0.0, 1.0, 5.0]).view(4, 1, 1, 1)
    return torch.randn(4, 6, 8, 8, generator=g) * scale + shift


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=(2, 3)), x.std(dim=(2, 3), correction=0)


def _mixes(mean, std, mean_x, std_x, i: int, j: int) -> bool:
    """True when (mean, std) = w * view i's + (1 - w) * view j's, one w in [0, 1]."""
    own = torch.cat([mean_x[i], std_x[i]])
    other = torch.cat([mean_x[j], std_x[j]])
    target = torch.cat([mean, std])
    d = own - other
    w = float(((target - other) @ d) / (d @ d)) if d.abs().sum() > 0 else 1.0
    fitted = w * own + (1 - w) * other
    return -1e-4 <= w <= 1 + 1e-4 and torch.allclose(fitted, target, atol=1e-3)


def test_not_mixed_when_p_is_zero_or_one_view():
    x = _views()
    assert mix_styles(x, 0.0, 0.1) is x
    one = x[:1]
    assert mix_styles(one, 1.0, 0.1) is one


def test_mixed_statistics_lie_between_two_views_and_content_is_kept():
    x = _views()
    y = mix_styles(x, 1.0, 0.3, torch.Generator().manual_seed(0))
    mean_x, std_x = _stats(x)
    mean_y, std_y = _stats(y)
    assert not torch.allclose(mean_x, mean_y)  # the looks did change
    for i in range(4):  # each view's statistics: one weight w mixing its own and one other's
        assert any(_mixes(mean_y[i], std_y[i], mean_x, std_x, i, j) for j in range(4))
    normed_x = (x - mean_x[..., None, None]) / std_x[..., None, None]
    normed_y = (y - mean_y[..., None, None]) / std_y[..., None, None]
    assert torch.allclose(normed_x, normed_y, atol=1e-3)  # same content, new look


def test_small_alpha_takes_one_of_the_batch_looks_and_seeds_repeat():
    x = _views()
    y = mix_styles(x, 1.0, 0.01, torch.Generator().manual_seed(3))
    mean_x, _ = _stats(x)
    mean_y, _ = _stats(y)
    # Beta(0.01, 0.01) is nearly always ~0 or ~1: every view wears one view's look
    nearest = torch.cdist(mean_y, mean_x).min(dim=1).values
    assert (nearest < 1e-2 * mean_x.abs().max()).all()
    again = mix_styles(x, 1.0, 0.01, torch.Generator().manual_seed(3))
    assert torch.equal(y, again)
