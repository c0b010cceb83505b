"""Head training on a tiny cached subset: it runs, writes a loadable head and resumes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml


@pytest.mark.shared_data
def test_tiny_training_writes_a_head_and_resumes(shared_data, tmp_path, monkeypatch, repo_root):
    import torch

    from medsam3.models.compact import build_compact, load_head
    from medsam3.training.fit_heads import MASK_MARGINS
    from medsam3.training.fit_heads import main as fit_main
    from medsam3.training.train import main, train

    monkeypatch.setenv("MEDSAM3_CACHE", str(tmp_path / "cache"))
    config = yaml.safe_load(
        (repo_root / "configs" / "train_compact.yaml").read_text(encoding="utf-8")
    )
    config.update(
        data_root=str(shared_data),
        output=str(tmp_path / "head.safetensors"),
        run_name="tiny",
        steps=2,
        eval_every=1,
        warmup_steps=1,
        max_samples=2,
        batch_images=2,
        augment_min=1,
        augment_max=1,
        atlas_slices=0,
        per_dataset_max={"train": {"default": 1}, "val": {"default": 1}},
        mixstyle={"p": 1.0, "alpha": 0.1},  # the embeddings' looks mixed at every step
    )
    out = train(config)
    info = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert len(info["sha256"]) == 64 and info["training"]["step"] in (1, 2)
    assert info["modality_classes"] and "default" in info["presence_calibration"]
    head, digest, loaded = load_head(out)
    assert info["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    both = out.read_bytes() + out.with_suffix(".json").read_bytes()
    assert digest == hashlib.sha256(both).hexdigest(), "the digest covers weights and JSON"
    assert loaded["modality_head"].classes == info["modality_classes"]
    model = build_compact(out)
    assert model.modality_head is not None and "default" in model.calibration
    assert set(info["mask_margin_val"]) == {str(m) for m in MASK_MARGINS}
    assert info["mask_margin"] in MASK_MARGINS and model.mask_margin == info["mask_margin"]
    last = tmp_path / "cache" / "train" / "tiny" / "last.pt"
    assert torch.load(last, weights_only=True)["step"] == 2
    n_features = len(list((tmp_path / "cache" / "features").glob("*.safetensors")))
    assert n_features == 6  # 2 train planes x 2 views + 2 val planes, encoded once each

    # resume: a second run continues at step 2 and re-uses the cached features
    config["steps"] = 3
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    main(str(path))
    assert torch.load(last, weights_only=True)["step"] == 3
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == n_features

    # refitting the mask cut rewrites the JSON only, from the cached val features
    weights, info_path = out.read_bytes(), out.with_suffix(".json")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info_path.write_text(json.dumps(info | {"mask_margin": 9}), encoding="utf-8")
    fit_main([str(out), "--config", str(path)])
    refitted = json.loads(info_path.read_text(encoding="utf-8"))
    assert refitted["mask_margin"] in MASK_MARGINS and refitted["sha256"] == info["sha256"]
    assert out.read_bytes() == weights
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == n_features


def test_view_weights_balance_datasets_and_rare_concepts():
    from medsam3.training.train import view_weights

    meta = [("us", "fetal", "HC18")] * 4 + [("ct", "chest", "small")]
    pos = [(i, "fetal head", None) for i in range(4)] + [(4, "heart", None)]
    assert view_weights(meta, pos, 0.0, 0.0) == [1.0] * 5
    w = view_weights(meta, pos, 0.5, 0.0)
    assert w[0] == 0.5 and w[4] == 1.0  # a dataset with 4x the views gets 2x the draws in all
    w = view_weights(meta, pos, 0.0, 0.5)
    assert w[0] == 0.5 and w[4] == 1.0  # fetal head seen 4 times, heart once


def test_colin27_atlas_slices_carry_consistent_labels():
    import numpy as np

    from medsam3.training.data import COLIN27_DIR, colin27_samples

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


def test_easy_negatives_are_limited_to_concepts_seen_as_positives(shared_data):
    import random

    from medsam3.training.data import easy_negatives, safe_negatives

    pool = safe_negatives(shared_data)
    assert {"polyp", "liver", "left rib 7"} <= set(pool)
    seen = safe_negatives(shared_data, seen={"polyp", "liver"})
    assert set(seen) == {"polyp", "liver"}
    drawn = easy_negatives(("endoscopy", "colon"), pool, random.Random(0), len(pool))
    assert "polyp" not in drawn and "liver" in drawn  # same modality / body part is never easy


def test_learning_rate_warms_up_then_decays_to_zero():
    from medsam3.training.train import step_lr

    config = {"lr": 1e-3, "steps": 100, "warmup_steps": 10}
    rates = [step_lr(config, s) for s in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(rates[10:], rates[11:], strict=False))
    assert rates[-1] < 0.01e-3


def test_a_second_stage_config_takes_its_base_and_replaces_keys(tmp_path):
    from medsam3.training.config import load_config

    (tmp_path / "one.yaml").write_text("steps: 3000\nlr: 0.001\nseed: 0\n")
    (tmp_path / "two.yaml").write_text("base: one.yaml\nlr: 0.0005\ninit_from: h.safetensors\n")
    assert load_config(tmp_path / "two.yaml") == {
        "steps": 3000,
        "lr": 0.0005,
        "seed": 0,
        "init_from": "h.safetensors",
    }
    configs = Path(__file__).resolve().parents[1] / "configs"
    shipped = load_config(configs / "train_compact_stage2.yaml")
    assert shipped["init_from"] == load_config(configs / "train_compact.yaml")["output"]
    grown = load_config(configs / "train_compact_v4.yaml")
    assert grown["init_from"] == shipped["output"] and grown["head"]["context"] == 2
    v5 = load_config(configs / "train_compact_v5.yaml")
    assert (
        v5["head"]["global_context"]
        and v5["init_from"] == "results/heads/v4/compact_head.safetensors"
    )
    assert v5["output"] == grown["output"] == "src/medsam3/weights/compact_head.safetensors"
    v6 = load_config(configs / "train_compact_v6.yaml")
    assert (
        v6["head"] == v5["head"]
        and v6["init_from"] == "results/heads/v5_1000steps/compact_head.safetensors"
    )
    assert (v6["augment_target"], v6["augment_max"], v6["steps"]) == (90, 6, 4000)
    v7 = load_config(configs / "train_compact_v7.yaml")
    trial = load_config(configs / "train_compact_v7_image.yaml")
    assert v7["head"] == v6["head"] and trial["head"] == {**v6["head"], "image_context": 128}
    assert v7["init_from"] == trial["init_from"] == "results/heads/v6/compact_head.safetensors"
    assert {k: v for k, v in trial.items() if k not in ("head", "output", "run_name")} == {
        k: v for k, v in v7.items() if k not in ("head", "output", "run_name")
    }
    v8 = load_config(configs / "train_compact_v8.yaml")  # head v9 averages v7 and v8
    assert v8["head"] == v7["head"] and v8["init_from"] == v7["output"]
    assert (v8["steps"], v8["lr"]) == (v7["steps"], v7["lr"])
    v10a = load_config(configs / "train_compact_v10a.yaml")  # v10 trial: v9 trained as v8 was
    assert (
        v10a["head"] == v7["head"]
        and v10a["init_from"] == "results/heads/v9/compact_head.safetensors"
    )
    assert (v10a["steps"], v10a["lr"]) == (v8["steps"], v8["lr"])


def test_a_grown_head_starts_as_the_smaller_one_and_trains_its_new_parts():
    import torch

    from medsam3.models.concept_head import ConceptHead, HeadConfig
    from medsam3.training.train import grow_from

    torch.manual_seed(0)
    sizes = {"c64": 16, "c128": 8, "c256": 8, "hidden": 32}
    small = ConceptHead(HeadConfig(**sizes)).eval()
    grown = ConceptHead(
        HeadConfig(**sizes, coords=True, context=2, global_context=True, image_context=8)
    )
    grow_from(grown, small.state_dict())
    grown.eval()
    emb, frame = torch.randn(2, 256, 64, 64), torch.rand(2, 3, 256, 256)
    text, index = torch.randn(3, 384), torch.tensor([0, 1, 1])
    for before, after in zip(
        small(emb, frame, text, index), grown(emb, frame, text, index), strict=True
    ):
        assert torch.allclose(before, after, atol=1e-6)
    # one optimiser step moves what the small head lacked: the position channels, the blocks,
    # the image branch's last convolution
    opt = torch.optim.SGD(grown.parameters(), lr=0.1)
    presence, mask = grown.train()(emb, frame, text, index)
    (presence.sum() + mask.mean()).backward()
    opt.step()
    assert grown.proj[0].weight[:, 256:].abs().sum() > 0
    assert grown.context[0][1].weight.abs().sum() > 0
    assert grown.global_context[-1][1].weight.abs().sum() > 0
    assert grown.image_context[-1].weight.abs().sum() > 0


def test_a_head_of_another_size_cannot_start_a_grown_one():
    from medsam3.models.concept_head import ConceptHead, HeadConfig
    from medsam3.training.train import grow_from

    other = ConceptHead(HeadConfig(c64=32)).state_dict()
    with pytest.raises(ValueError, match="cannot start"):
        grow_from(ConceptHead(HeadConfig(c64=16, coords=True)), other)


def test_a_soup_is_the_mean_of_its_heads_and_refuses_another_architecture(tmp_path):
    import torch

    from medsam3.models.concept_head import ConceptHead, HeadConfig
    from medsam3.models.modality import ModalityHead
    from medsam3.training.head_file import save_head
    from medsam3.training.soup import average_heads

    sizes = {"c64": 16, "c128": 8, "c256": 8, "hidden": 32}
    classes = ["ct", "mri"]
    heads, paths = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        heads.append(ConceptHead(HeadConfig(**sizes)))
        modality = {f"modality.{k}": v for k, v in ModalityHead(classes).state_dict().items()}
        paths.append(
            save_head(
                heads[-1],
                tmp_path / f"h{seed}.safetensors",
                {"modality_classes": classes},
                modality,
            )
        )
    one, two = (h.state_dict() for h in heads)
    soup = average_heads(paths).state_dict()
    assert not any(k.startswith("modality.") for k in soup)  # refitted, not averaged
    name = "proj.0.weight"
    assert not torch.equal(one[name], two[name])
    assert torch.allclose(soup[name], (one[name] + two[name]) / 2)
    other = save_head(ConceptHead(HeadConfig(**sizes, coords=True)), tmp_path / "o.safetensors", {})
    with pytest.raises(ValueError, match="not the architecture"):
        average_heads([paths[0], other])
    with pytest.raises(ValueError, match="two or more"):
        average_heads(paths[:1])


def test_the_lodo_config_of_head_v7_trains_its_recipe_from_scratch(repo_root):
    from medsam3.training.config import load_config
    from medsam3.training.lodo import load_lodo

    lodo, base = load_lodo(repo_root / "configs" / "lodo_v7.yaml")
    v7 = load_config(repo_root / "configs" / "train_compact_v7.yaml")
    assert base["head"] == v7["head"] and base["augment_target"] == v7["augment_target"]
    assert base["init_from"] is None  # every shipped head saw the held-out datasets
    assert base["steps"] == 1000
    old, _ = load_lodo(repo_root / "configs" / "lodo.yaml")
    assert lodo["folds"] == old["folds"]  # the same folds: the tables compare recipes


def test_the_mixstyle_lodo_trial_is_head_v7s_lodo_recipe_plus_mixstyle(repo_root):
    from medsam3.training.lodo import load_lodo

    v7, v7_base = load_lodo(repo_root / "configs" / "lodo_v7.yaml")
    trial, base = load_lodo(repo_root / "configs" / "lodo_v7_mixstyle.yaml")
    assert base.pop("mixstyle") == {"p": 0.5, "alpha": 0.1}
    assert base == v7_base  # the only difference: the control is results/lodo_v7
    assert trial["folds"]["b"] == v7["folds"]["b"] and trial["max_items"] == v7["max_items"]
