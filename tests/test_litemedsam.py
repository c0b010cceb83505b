"""LiteMedSAM as medsam3 runs it: the fused, channels-last encoder matches the shipped one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam3.models.litemedsam import LiteMedSAM, build_litemedsam, prepare_image


def test_fused_encoder_gives_the_shipped_encoders_embedding():
    from nilearn.datasets import load_mni152_template

    torch.set_num_threads(2)
    vol = load_mni152_template().get_fdata().astype(np.float32)
    plane = np.rot90(vol[:, :, vol.shape[2] // 2])
    rgb = np.repeat((255 * plane / plane.max()).astype(np.uint8)[..., None], 3, axis=-1)
    prep = prepare_image(rgb)
    shipped = LiteMedSAM(build_litemedsam(fuse=False))
    fused = LiteMedSAM()
    assert not any(type(m).__name__ == "Conv2d_BN" for m in fused.net.image_encoder.modules())
    assert any(type(m).__name__ == "Conv2d_BN" for m in shipped.net.image_encoder.modules())
    a, b = shipped.encode(prep), fused.encode(prep)
    assert a.shape == b.shape == (1, 256, 64, 64) and b.is_contiguous()
    assert float((a - b).abs().max()) < 1e-4 * float(a.abs().max())


def test_bfloat16_autocast_stays_close_to_float32_and_returns_float32():
    """precision="bfloat16" runs encoder and decoder under autocast: float32 outputs, the
    embedding within 20% relative error, the decoder's box mask nearly the same."""
    from nilearn.datasets import load_mni152_template

    torch.set_num_threads(2)
    vol = load_mni152_template().get_fdata().astype(np.float32)
    plane = np.rot90(vol[:, :, vol.shape[2] // 2])
    rgb = np.repeat((255 * plane / plane.max()).astype(np.uint8)[..., None], 3, axis=-1)
    prep = prepare_image(rgb)
    net = build_litemedsam()
    full, half = LiteMedSAM(net), LiteMedSAM(net, precision="bfloat16")
    a, b = full.encode(prep), half.encode(prep)
    assert b.dtype == torch.float32 and b.shape == a.shape
    assert 1e-4 < float((a - b).norm() / a.norm()) < 0.2  # bf16 did run, and stayed close
    box = np.array([[40, 40, 180, 200]], np.float32)
    (la, _), (lb, iou) = full.decode(a, prep, boxes=box), half.decode(b, prep, boxes=box)
    assert lb.dtype == iou.dtype == torch.float32
    ma, mb = (la > 0).numpy(), (lb > 0).numpy()
    assert 2 * (ma & mb).sum() / (ma.sum() + mb.sum()) >= 0.9
    with pytest.raises(ValueError, match="precision"):
        LiteMedSAM(net, precision="float16")
