"""The phrase-conditioned concept head on top of frozen LiteMedSAM image embeddings.

Inputs per image: the (256, 64, 64) LiteMedSAM embedding and the padded 256x256 input frame.
Inputs per phrase: the 384-d MiniLM embedding. Outputs per (image, phrase): a presence logit and
a dense (256, 256) mask logit map in the padded frame.

Design: the image-only part (embedding projection and a shallow full-resolution conv branch
for thin, high-frequency structures) runs once per image; the phrase modulates the features by
FiLM at 64, 128 and 256 px and by a phrase-image similarity map, so N phrases cost N light
decoder passes. Optional (``coords``): the position in the padded frame as two input channels,
so the head can learn where an organ lies; (``context``): dilated 3x3 blocks after FiLM, so the
coarse map of a phrase sees its neighbourhood (liver beside spleen) rather than one location;
(``global_context``): a branch down to 16 px after them, so each location sees the whole frame
(where the spine and the body outline are); (``image_context``): a wider image-only branch from
the embedding through 32 px, added to the 64 px trunk, so the phrase-independent features
are not limited to one linear 256 -> 64 projection and a 5 x 5 neighbourhood (runs once per
image, not once per phrase).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class HeadConfig:
    """Head sizes (saved with the weights)."""

    text_dim: int = 384
    embed_dim: int = 256
    c64: int = 64
    c128: int = 32
    c256: int = 16
    coarse: int = 8
    fine: int = 8
    hidden: int = 256
    dropout: float = 0.1
    coords: bool = False  # x, y of the padded frame as two more embedding channels
    context: int = 0  # dilated 3x3 blocks (dilation 2, 4, ...) after FiLM at 64 px
    global_context: bool = False  # a 64 -> 16 px branch after them: each location sees the frame
    image_context: int = 0  # width of an image-only 64 -> 32 px branch added to the trunk; 0: none

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 4
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.GroupNorm(groups, cout),
        nn.GELU(),
    )


class ConceptHead(nn.Module):
    """Presence + dense mask head; see the module docstring."""

    def __init__(self, cfg: HeadConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or HeadConfig()
        extra = 2 if cfg.coords else 0
        self.proj = nn.Sequential(nn.Conv2d(cfg.embed_dim + extra, cfg.c64, 1), nn.GELU())
        self.trunk64 = nn.Sequential(_block(cfg.c64, cfg.c64), _block(cfg.c64, cfg.c64))
        width = cfg.image_context
        self.image_context = _image_branch(cfg.embed_dim + extra, width, cfg.c64) if width else None
        self.shallow256 = nn.Sequential(_block(3, 16), _block(16, 16))
        self.shallow128 = _block(16, 32, stride=2)
        self.trunk128 = _block(cfg.c64 + 32, cfg.c128)
        self.trunk256 = nn.Sequential(nn.Conv2d(cfg.c128 + 16, cfg.c256, 1), nn.GELU())
        self.text = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout)
        )
        self.query = nn.Linear(cfg.hidden, cfg.c64)
        self.film64 = nn.Linear(cfg.hidden, 2 * cfg.c64)
        self.context = nn.ModuleList(
            _block(cfg.c64, cfg.c64, dilation=2 ** (i + 1)) for i in range(cfg.context)
        )
        self.global_context = _global_branch(cfg.c64) if cfg.global_context else None
        self.mix64 = nn.Sequential(
            nn.Conv2d(cfg.c64 + 1, cfg.c64, 1), nn.GELU(), nn.Conv2d(cfg.c64, cfg.coarse, 1)
        )
        self.kernel128 = nn.Linear(cfg.hidden, cfg.c128 + 1)
        self.fine = nn.Sequential(
            _block(cfg.coarse + cfg.c256 + 1, cfg.fine), nn.Conv2d(cfg.fine, 1, 1)
        )
        self.presence = nn.Sequential(
            nn.Linear(2 * cfg.coarse + 2 + cfg.hidden, cfg.hidden),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, 1),
        )

    def image_features(self, embedding: torch.Tensor, frame: torch.Tensor) -> dict:
        """Phrase-independent multi-scale features (run once per image).

        Args:
            embedding: (B, 256, 64, 64) float LiteMedSAM embedding.
            frame: (B, 3, 256, 256) float in [0, 1], the padded input frame.

        Returns:
            dict: f64 (B, c64, 64, 64), f128 (B, c128, 128, 128), f256 (B, c256, 256, 256).
        """
        embedding = embedding.float()
        if self.cfg.coords:
            embedding = torch.cat([embedding, _coordinates(embedding)], dim=1)
        f64 = self.trunk64(self.proj(embedding))
        if self.image_context is not None:
            g = self.image_context(embedding)
            f64 = f64 + F.interpolate(g, size=f64.shape[-2:], mode="bilinear", align_corners=False)
        s256 = self.shallow256(frame.float())
        up = F.interpolate(f64, scale_factor=2, mode="bilinear", align_corners=False)
        f128 = self.trunk128(torch.cat([up, self.shallow128(s256)], dim=1))
        up = F.interpolate(f128, scale_factor=2, mode="bilinear", align_corners=False)
        f256 = self.trunk256(torch.cat([up, s256], dim=1))
        return {"f64": f64, "f128": f128, "f256": f256}

    def decode(
        self,
        feats: dict,
        text: torch.Tensor,
        index: torch.Tensor | None = None,
        coarse_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Phrase-conditioned outputs (:meth:`locate`, then :meth:`fine_mask`).

        Args:
            feats: from :meth:`image_features` for B images.
            text: (N, 384) phrase embeddings.
            index: (N,) long, which image each phrase belongs to; all image 0 when None.
            coarse_only: return the (N, 1, 64, 64) coarse logits instead (cheap; training
                negatives and presence-only queries).

        Returns:
            (N,) presence logits and (N, 1, 256, 256) mask logits in the padded frame.
        """
        if index is None:
            index = torch.zeros(len(text), dtype=torch.long, device=text.device)
        presence, coarse, hidden = self.locate(feats, text, index)
        if coarse_only:
            return presence, coarse[:, :1]
        return presence, self.fine_mask(feats, coarse, hidden, index)

    def locate(
        self, feats: dict, text: torch.Tensor, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Presence logits (N,), coarse maps (N, coarse, 64, 64) and phrase vectors (N, hidden).

        The cheap part of :meth:`decode`: enough to tell which phrases are present.
        """
        h = self.text(text.float())
        f64 = feats["f64"][index]
        sim = torch.einsum("nchw,nc->nhw", f64, self.query(h))[:, None] / f64.shape[1] ** 0.5
        gamma, beta = self.film64(h).chunk(2, dim=-1)
        x = f64 * (1 + gamma[..., None, None]) + beta[..., None, None]
        for block in self.context:
            x = x + block(x)
        if self.global_context is not None:
            g = self.global_context(x)
            x = x + F.interpolate(g, size=x.shape[-2:], mode="bilinear", align_corners=False)
        coarse = self.mix64(torch.cat([x, sim], dim=1))
        stats = [coarse.mean(dim=(2, 3)), coarse.amax(dim=(2, 3))]
        stats += [sim.amax(dim=(2, 3)), sim.mean(dim=(2, 3)), h]
        presence = self.presence(torch.cat(stats, dim=1))[:, 0]
        return presence, coarse, h

    def fine_mask(
        self, feats: dict, coarse: torch.Tensor, hidden: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        """(N, 1, 256, 256) mask logits from :meth:`locate`'s coarse maps and phrase vectors."""
        w = self.kernel128(hidden)
        f128 = feats["f128"][index]
        mid = torch.einsum("nchw,nc->nhw", f128, w[:, :-1])[:, None] + w[:, -1, None, None, None]
        mid = F.interpolate(mid, scale_factor=2, mode="bilinear", align_corners=False)
        up = F.interpolate(coarse, scale_factor=4, mode="bilinear", align_corners=False)
        fine = self.fine(torch.cat([up, feats["f256"][index], mid], dim=1))
        return fine + mid + up[:, :1]

    def forward(
        self, embedding: torch.Tensor, frame: torch.Tensor, text: torch.Tensor, index=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_features + decode; see those methods for shapes."""
        return self.decode(self.image_features(embedding, frame), text, index)


def _global_branch(channels: int) -> nn.Sequential:
    """64 -> 16 px and two dilated blocks there: a receptive field of the whole frame."""
    return nn.Sequential(
        _block(channels, channels, stride=2),
        _block(channels, channels, stride=2),
        _block(channels, channels, dilation=2),
        _block(channels, channels, dilation=4),
    )


def _image_branch(cin: int, width: int, cout: int) -> nn.Sequential:
    """Embedding -> ``width`` channels at 32 px, 3x3 blocks (dilation 1, 2, 4) -> ``cout``."""
    return nn.Sequential(
        nn.Conv2d(cin, width, 1),
        nn.GELU(),
        _block(width, width, stride=2),
        _block(width, width, dilation=2),
        _block(width, width, dilation=4),
        nn.Conv2d(width, cout, 1),
    )


def _coordinates(embedding: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W): x and y in [-1, 1] across the padded frame."""
    b, _, h, w = embedding.shape
    ys = torch.linspace(-1, 1, h, device=embedding.device, dtype=embedding.dtype)
    xs = torch.linspace(-1, 1, w, device=embedding.device, dtype=embedding.dtype)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1])
    return grid.expand(b, -1, -1, -1)
