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
