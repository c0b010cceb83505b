"""MixStyle on cached encoder features: unseen scanners and sites, simulated during training.

The cached views fix each training plane's look (a few intensity and colour variants). A
source the head never saw differs mostly in low-order feature statistics: the per-channel mean
and spread of the image embedding. MixStyle (Zhou et al., ICLR 2021) normalises each view's
embedding by its own per-channel statistics and re-scales it with a random convex mix of its
own and another view's, so the head learns to find a concept under looks between those of its
training sources. Training only: nothing changes at inference, and no view is re-encoded.
"""

from __future__ import annotations

import torch
from scipy.stats import beta as beta_distribution

EPS = 1e-6


def mix_styles(
    features: torch.Tensor, p: float, alpha: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mix the per-channel statistics of a batch's feature maps (with probability ``p``).

    Args:
        features: (B, C, H, W) float feature maps (the LiteMedSAM embedding).
        p: probability that this batch is mixed at all.
        alpha: Beta(alpha, alpha) concentration of each view's own weight (0.1: mostly close
            to one of the two looks).
        generator: CPU torch generator (seeded runs repeat exactly).

    Returns:
        (B, C, H, W): ``features`` itself when not mixed, else the views with mixed statistics.
    """
    batch = features.shape[0]
    if batch < 2 or torch.rand((), generator=generator).item() >= p:
        return features
    mean = features.mean(dim=(2, 3), keepdim=True)
    std = (features.var(dim=(2, 3), keepdim=True) + EPS).sqrt()
    normed = (features - mean) / std
    uniform = torch.rand(batch, generator=generator).numpy()
    weight = torch.as_tensor(beta_distribution.ppf(uniform, alpha, alpha), dtype=features.dtype)
    weight = weight.view(batch, 1, 1, 1).to(features.device)
    other = torch.randperm(batch, generator=generator).to(features.device)
    mean = weight * mean + (1 - weight) * mean[other]
    std = weight * std + (1 - weight) * std[other]
    return normed * std + mean
