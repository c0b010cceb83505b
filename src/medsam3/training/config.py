"""Training configs: YAML files, a second stage naming the first as its ``base``."""

from __future__ import annotations

from pathlib import Path

import yaml


def load_config(path: str | Path) -> dict:
    """A training config; ``base: OTHER.yaml`` (beside this file) takes that file's keys and
    replaces the given ones (a second stage names the first as its base)."""
    config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if "base" in config:
        base = load_config(Path(path).parent / config.pop("base"))
        config = base | config
    return config
