"""Shape priors per concept, learned from the training split, and the critic's coefficients.

The priors ship as ``medsam3/data/agent_priors.json``; ``python -m medsam3.agent.priors fit``
rebuilds them from the shared data set's training masks (2D masks, and the labelled axial
slices of the volumes in display order). Per concept they hold the spread of the mask's share of
the plane (log10), of its connected-component count, and where its box sits (fractions of the
plane). JSON only: nothing is unpickled.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsam3.agent.gain import GainModel
from medsam3.training.data import build_samples

PRIORS_FILE = "data/agent_priors.json"


@dataclass(frozen=True)
class ConceptPrior:
    """What the training masks of one concept look like on a 2D plane.

    Attributes:
        n: masks seen.
        log_share: (5th, 50th, 95th) percentile of log10(mask pixels / plane pixels).
        components: 95th percentile of the 8-connected component count.
        box: mean (x0, y0, x1, y1) box as fractions of the plane's width and height.
    """

    n: int
    log_share: tuple[float, float, float]
    components: float
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Priors:
    """Concept priors and the critic's logistic-regression coefficients.

    Attributes:
        concepts: canonical concept -> prior.
        features: critic feature names, in coefficient order.
        coef: one weight per feature.
        intercept: the logistic regression's bias.
        fitted_on: where the coefficients came from (a sentence).
        gain: the replacement rule (:mod:`medsam3.agent.gain`); None: the critic alone decides.
    """

    concepts: dict[str, ConceptPrior] = field(default_factory=dict)
    features: tuple[str, ...] = ()
    coef: tuple[float, ...] = ()
    intercept: float = 0.0
    fitted_on: str = ""
    gain: GainModel | None = None

    def to_json(self) -> dict:
        """The JSON the package ships."""
        gain = {} if self.gain is None else {"gain": self.gain.to_json()}
        return {
            "concepts": {c: vars(p) for c, p in sorted(self.concepts.items())},
            "critic": {
                "features": list(self.features),
                "coef": list(self.coef),
                "intercept": self.intercept,
                "fitted_on": self.fitted_on,
            },
            **gain,
        }

    @classmethod
    def from_json(cls, data: dict) -> Priors:
        """Priors from :meth:`to_json`'s mapping."""
        concepts = {
            c: ConceptPrior(
                int(p["n"]), tuple(p["log_share"]), float(p["components"]), tuple(p["box"])
            )
            for c, p in data.get("concepts", {}).items()
        }
        critic = data.get("critic", {})
        return cls(
            concepts,
            tuple(critic.get("features", ())),
            tuple(float(v) for v in critic.get("coef", ())),
            float(critic.get("intercept", 0.0)),
            critic.get("fitted_on", ""),
            GainModel.from_json(data["gain"]) if "gain" in data else None,
        )


@lru_cache(maxsize=1)
def load_priors() -> Priors:
    """The priors shipped with medsam3 (empty priors when the file is missing)."""
    path = resources.files("medsam3").joinpath(PRIORS_FILE)
    if not path.is_file():
        return Priors()
    return Priors.from_json(json.loads(path.read_text(encoding="utf-8")))


def mask_stats(mask: np.ndarray) -> tuple[float, int, tuple[float, float, float, float]]:
    """Share, component count and fractional box of a non-empty (y, x) bool mask.

    Returns:
        (log10 share of the plane, 8-connected components, (x0, y0, x1, y1) in [0, 1]).
    """
    h, w = mask.shape
    _, n = ndimage.label(mask, structure=np.ones((3, 3)))
    ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = (xs[0] / w, ys[0] / h, (xs[-1] + 1) / w, (ys[-1] + 1) / h)
    return float(np.log10(mask.sum() / mask.size)), int(n), tuple(float(v) for v in box)


def fit_concept_priors(root: Path, split: str = "train") -> dict[str, ConceptPrior]:
    """Concept priors from every mask of a split of the shared data set.

    Args:
        root: the shared data folder (manifest.csv).
        split: the manifest split to learn from ("train": never the split that is scored).

    Returns:
        canonical concept -> prior (concepts with at least one non-empty mask).
    """
    stats: dict[str, list] = {}
    for sample in build_samples(root, (split,), volume_slices=8):
        for concept, load in sample.masks.items():
            mask = load()
            if mask.any():
                stats.setdefault(concept, []).append(mask_stats(mask))
    return {c: _prior(rows) for c, rows in sorted(stats.items())}


def _prior(rows: list) -> ConceptPrior:
    shares = np.array([r[0] for r in rows])
    comps = np.array([r[1] for r in rows])
    boxes = np.array([r[2] for r in rows])
    return ConceptPrior(
        len(rows),
        tuple(round(float(v), 4) for v in np.percentile(shares, [5, 50, 95])),
        round(float(np.percentile(comps, 95)), 2),
        tuple(round(float(v), 4) for v in boxes.mean(0)),
    )


def write_priors(priors: Priors, path: Path) -> Path:
    """Write priors as indented JSON (atomic enough for a build step: one write)."""
    path.write_text(json.dumps(priors.to_json(), indent=1) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    """``python -m medsam3.agent.priors fit --data ../shared/data [--out FILE]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["fit"])
    parser.add_argument("--data", type=Path, required=True, help="shared data folder")
    parser.add_argument("--split", default="train")
    default_out = Path(str(resources.files("medsam3").joinpath(PRIORS_FILE)))
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args(argv)
    old = load_priors()
    new = dataclasses.replace(old, concepts=fit_concept_priors(args.data, args.split))
    print(f"wrote {write_priors(new, args.out)} ({len(new.concepts)} concepts)")


if __name__ == "__main__":
    main()
