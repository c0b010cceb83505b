"""Head training on a tiny cached subset: it runs, writes a loadable head and resumes."""

from __future__ import annotations

import json

import pytest
import yaml


@pytest.mark.shared_data
def test_tiny_training_writes_a_head_and_resumes(shared_data, tmp_path, monkeypatch, repo_root):
    import torch

    from medsam3.models.compact import load_head
    from medsam3.train import main, train

    monkeypatch.setenv("MEDSAM3_CACHE", str(tmp_path / "cache"))
    config = yaml.safe_load(
        (repo_root / "configs" / "train_compact.yaml").read_text(encoding="utf-8")
    )
    config.update(
        data_root=str(shared_data),
        output=str(tmp_path / "head.safetensors"),
        run_name="tiny",
        epochs=1,
        max_samples=2,
        batch_images=2,
        per_dataset_max={"train": {"default": 1}, "val": {"default": 1}},
    )
    out = train(config)
    assert out.is_file()
    info = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert len(info["sha256"]) == 64 and info["training"]["epoch"] == 0
    head, digest, _ = load_head(out)
    assert digest == info["sha256"]
    last = tmp_path / "cache" / "train" / "tiny" / "last.pt"
    assert torch.load(last, weights_only=True)["epoch"] == 1
    n_features = len(list((tmp_path / "cache" / "features").glob("*.safetensors")))
    assert n_features == 4  # 2 train + 2 val planes, encoded once each

    # resume: a second run continues at epoch 1 and re-uses the cached features
    config["epochs"] = 2
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    main(str(path))
    assert torch.load(last, weights_only=True)["epoch"] == 2
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == n_features


def test_sample_weights_favour_images_of_rare_concepts():
    from medsam3.train import sample_weights

    pos = [(0, "fetal head", None), (1, "fetal head", None), (2, "fetal head", None)]
    pos += [(2, "heart", None), (3, "fetal head", None)]
    assert sample_weights(pos, 5, 0.0) == [1.0] * 5
    w = sample_weights(pos, 5, 0.5)
    assert w[2] == 1.0 and w[0] == w[1] == w[3] == 0.5  # heart seen once, fetal head 4 times
    assert w[4] == 1.0  # an image with no annotated concept counts as rare


def test_colin27_atlas_slices_carry_consistent_labels():
    import numpy as np

    from medsam3.training_data import COLIN27_DIR, colin27_samples

    if not (COLIN27_DIR / "aal.nii.gz").is_file():
        pytest.skip("Debian mricron-data is not installed")
    samples = colin27_samples(n_slices=4)
    assert len(samples) >= 4 and all(s.modality == "mri" for s in samples)
    with_hippo = [s for s in samples if "hippocampus" in s.masks]
    assert with_hippo
    for s in with_hippo:
        brain = s.masks["brain"]()
        none = np.zeros_like(brain)
        names = ("hippocampus", "left hippocampus", "right hippocampus")
        both, left, right = (s.masks[c]() if c in s.masks else none for c in names)
        assert not (left & right).any() and np.array_equal(left | right, both)
        assert (both & brain).sum() > 0.9 * both.sum()
        assert s.load_rgb().shape == (*brain.shape, 3)


def test_training_negatives_can_be_limited_to_concepts_seen_as_positives():
    from medsam3.train import _training_negatives

    safe = {"polyp": ({"endoscopy"}, {"colon"}), "left rib 7": ({"ct"}, {"abdomen"})}
    pos = [(0, "polyp", None)]
    assert _training_negatives(safe, pos, False) == safe
    assert _training_negatives(safe, pos, True) == {"polyp": safe["polyp"]}


def test_cosine_learning_rate_decays_from_lr_to_zero():
    from medsam3.train import epoch_lr

    config = {"lr": 1e-3, "epochs": 10, "lr_schedule": "cosine"}
    rates = [epoch_lr(config, e) for e in range(10)]
    assert rates[0] == 1e-3 and all(a > b for a, b in zip(rates, rates[1:], strict=False))
    assert rates[-1] < 0.03e-3
    assert epoch_lr({"lr": 1e-3, "epochs": 10}, 7) == 1e-3
