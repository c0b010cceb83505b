"""The replacement rule: the Dice a candidate is expected to add to the current result.

The critic ranks results ("is this mask right?"); it does not say whether one candidate beats
another. The gain model does: a ridge regression, fitted on val, of Dice(candidate) -
Dice(current) from the action that made the candidate, the current result's critic features,
the change of each feature, the candidates' overlap and the change of the critic's score. A
candidate replaces the current result only when the critic scores it higher *and* its expected
gain exceeds ``margin``, the margin chosen by leave-one-dataset-out cross-validation on the fit
rows. Pure numpy on plain dicts (of the agent, only its config's default ``min_gain``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medsam3.agent.config import AgentConfig

ACTIONS = (
    "box:parent",
    "box:peak",
    "box:prior",
    "crop_zoom",
    "drop",
    "relax",
    "reprompt",
    "tighten",
)
MARGINS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.08)
RIDGE = 10.0


def action_kind(name: str) -> str:
    """The action family of a trace name ("reprompt:hepatic tumor" -> "reprompt")."""
    return "reprompt" if name.startswith("reprompt") else name


def input_names(features: Sequence[str]) -> list[str]:
    """Names of the model's inputs, in order, for critic features ``features``."""
    return (
        [f"action={a}" for a in ACTIONS]
        + [f"current:{f}" for f in features]
        + [f"change:{f}" for f in features]
        + ["overlap", "change:critic", "current:critic"]
    )


def inputs(
    action: str,
    current: dict[str, float],
    candidate: dict[str, float],
    overlap: float,
    features: Sequence[str],
) -> np.ndarray:
    """One input row.

    Args:
        action: the action that made the candidate (trace name).
        current: the current result's critic features plus ``"critic"``, its score.
        candidate: the same for the candidate.
        overlap: IoU of the two masks.
        features: the critic's feature names.

    Returns:
        (len(input_names(features)),) float array.
    """
    kind = action_kind(action)
    one_hot = [float(kind == a) for a in ACTIONS]
    now = [current[f] for f in features]
    change = [candidate[f] - current[f] for f in features]
    scores = [candidate["critic"] - current["critic"], current["critic"]]
    return np.array(one_hot + now + change + [overlap] + scores, float)


@dataclass(frozen=True)
class GainModel:
    """Fitted replacement rule.

    Attributes:
        features: the critic features it reads, in input order.
        coef: one weight per :func:`input_names` entry.
        intercept: the regression's bias.
        margin: expected Dice gain a candidate must exceed to replace the current result.
        fitted_on: where it came from, with its cross-validated gain (a sentence).
    """

    features: tuple[str, ...]
    coef: tuple[float, ...]
    intercept: float
    margin: float
    fitted_on: str = ""

    def expected_gain(self, action: str, current: dict, candidate: dict, overlap: float) -> float:
        """Predicted Dice(candidate) - Dice(current); arguments as for :func:`inputs`."""
        x = inputs(action, current, candidate, overlap, self.features)
        return float(x @ np.asarray(self.coef) + self.intercept)

    def to_json(self) -> dict:
        """The ``gain`` entry of ``agent_priors.json``."""
        return {
            "features": list(self.features),
            "inputs": input_names(self.features),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "margin": self.margin,
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_json(cls, data: dict) -> GainModel:
        """A model from :meth:`to_json`'s mapping (its inputs must match this version's)."""
        features = tuple(data["features"])
        if list(data.get("inputs", [])) != input_names(features):
            raise ValueError("agent_priors.json: the gain model's inputs do not match this medsam3")
        coef = tuple(float(v) for v in data["coef"])
        return cls(
            features, coef, float(data["intercept"]), float(data["margin"]), data["fitted_on"]
        )


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = RIDGE) -> tuple[np.ndarray, float]:
    """Ridge regression with an unpenalised intercept: (weights, intercept)."""
    mx, my = x.mean(0), y.mean()
    xc = x - mx
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - my))
    return w, float(my - mx @ w)


def design(rows: list[dict], features: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets (Dice gain) of every candidate of annotated pairs.

    Args:
        rows: per (image, concept): ``annotated``, ``dice``, ``current`` (features + critic) and
            ``candidates`` [{action, dice, features (+ critic), overlap}].
        features: the critic's feature names.
    """
    x, y = [], []
    for r in rows:
        if not r["annotated"]:
            continue
        for c in r["candidates"]:
            x.append(inputs(c["action"], r["current"], c["features"], c["overlap"], features))
            y.append(c["dice"] - r["dice"])
    return np.array(x, float).reshape(len(x), len(input_names(features))), np.array(y, float)


def realised_gains(
    rows: list[dict], model: GainModel, min_gain: float = AgentConfig.min_gain
) -> list[float]:
    """Dice gain of the rule on each annotated pair, as the loop's first round decides: the
    candidate with the highest expected gain, if that exceeds the model's margin and the critic
    scores it more than ``min_gain`` higher, else none (0)."""
    out = []
    for r in (r for r in rows if r["annotated"]):
        best, value = None, model.margin
        for c in r["candidates"]:
            if c["features"]["critic"] <= r["current"]["critic"] + min_gain:
                continue
            g = model.expected_gain(c["action"], r["current"], c["features"], c["overlap"])
            if g > value:
                best, value = c, g
        out.append(0.0 if best is None else best["dice"] - r["dice"])
    return out


def action_summary(rows: list[dict], min_gain: float = AgentConfig.min_gain) -> dict[str, float]:
    """Mean Dice over annotated pairs with candidates: the backend's (``current``), each
    action's change, the critic's rule (its best-scored candidate when it scores more than
    ``min_gain`` higher) and an oracle (the best candidate by true Dice)."""
    rows = [r for r in rows if r["annotated"] and r["candidates"]]
    if not rows:
        return {}
    changes: dict[str, list[float]] = {}
    critic, oracle = [], []
    for r in rows:
        for c in r["candidates"]:
            changes.setdefault(action_kind(c["action"]), []).append(c["dice"] - r["dice"])
        top = max(r["candidates"], key=lambda c: c["features"]["critic"])
        better = top["features"]["critic"] > r["current"]["critic"] + min_gain
        critic.append(top["dice"] if better else r["dice"])
        oracle.append(max([r["dice"]] + [c["dice"] for c in r["candidates"]]))
    out = {"pairs": len(rows), "current": float(np.mean([r["dice"] for r in rows]))}
    out |= {f"change:{a}": float(np.mean(v)) for a, v in sorted(changes.items())}
    return out | {"critic_rule": float(np.mean(critic)), "oracle": float(np.mean(oracle))}


def cross_validate(rows: list[dict], features, margins=MARGINS) -> dict[float, list[float]]:
    """Leave-one-dataset-out: per margin, the realised gain on every annotated pair, each
    dataset scored by the model fitted on the others."""
    out: dict[float, list[float]] = {m: [] for m in margins}
    for held in sorted({r["dataset"] for r in rows}):
        train = [r for r in rows if r["dataset"] != held]
        test = [r for r in rows if r["dataset"] == held]
        x, y = design(train, features)
        if len(y) == 0:
            continue
        w, b = fit_ridge(x, y)
        for m in margins:
            out[m] += realised_gains(test, GainModel(tuple(features), tuple(w), b, m))
    return out


def fit_gain(rows: list[dict], features: Sequence[str], source: str) -> tuple[GainModel, dict]:
    """The gain model on all rows, with the margin of the best cross-validated mean gain.

    Returns:
        (model, {margin: cross-validated mean Dice gain over annotated pairs}).
    """
    cv = {m: float(np.mean(g)) if g else 0.0 for m, g in cross_validate(rows, features).items()}
    margin = max(cv, key=lambda m: (round(cv[m], 4), m))  # ties: the more cautious margin
    x, y = design(rows, features)
    if len(y) == 0:
        raise ValueError("no candidates on annotated pairs to fit the replacement rule on")
    w, b = fit_ridge(x, y)
    note = f"{source}; leave-one-dataset-out mean Dice gain {cv[margin]:+.4f} at margin {margin}"
    model = GainModel(
        tuple(features), tuple(round(float(v), 5) for v in w), round(b, 5), margin, note
    )
    return model, cv
