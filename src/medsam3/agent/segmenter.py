"""A segmenter wrapped with the agent: same ``segment`` call, results checked and improved.

The base segmenter runs first, unchanged. Then, per concept, the critic scores its result and
the loop tries the planner's fixes (or those an MLLM picks). On 2D images of the compact
backend the fixes reuse the image encodings of the base call (kept for the call's duration),
so only crop-and-zoom encodes again. Each result's ``extra`` gains ``critic_score``,
``agent_rounds``, ``review``, ``agent_action`` (what made the final mask), ``agent_encodings``,
``agent_seconds`` and ``agent_trace``; when the agent changed a mask,
``extra["agent_raw_mask"]`` holds the backend's own (uint8 array, popped by the pipeline into a
``<concept>__raw`` label).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
from scipy import ndimage

from medsam3.agent.config import AgentConfig
from medsam3.agent.critic import critic_score, features, iou
from medsam3.agent.loop import Advantage, Outcome, run_loop
from medsam3.agent.mllm import MllmChooser
from medsam3.agent.planner import (
    Candidate,
    PlaneContext,
    evidence,
    plane_actions,
    stack_actions,
)
from medsam3.agent.priors import Priors, load_priors
from medsam3.models.base import ConceptResult, Instance, Segmenter, mask_box
from medsam3.models.compact import CompactSegmenter, shared_encodings
from medsam3.models.inputs import infer_kind
from medsam3.models.modality import ModalityGuess
from medsam3.models.upright import results_to_stored, to_display
from medsam3.types import Kind


class AgentSegmenter(Segmenter):
    """A segmenter whose results the agent checks and improves (see the module docstring).

    Args:
        base: the backend's segmenter.
        config: the agent's settings (mode "rules" or "mllm").
        priors: concept priors and critic coefficients (default: the shipped ones).
    """

    def __init__(self, base: Segmenter, config: AgentConfig, priors: Priors | None = None):
        self.base, self.config = base, config
        self.priors = priors or load_priors()
        self.name, self.checkpoint_digest = base.name, base.checkpoint_digest
        self.precision = base.precision
        self.chooser = MllmChooser(config) if config.mode == "mllm" else None

    def __getattr__(self, item: str):
        """Backend attributes (``presence_threshold``, ``device``, ...) pass through."""
        if item == "base":
            raise AttributeError(item)
        return getattr(self.base, item)

    def recognise_modality(self, array: np.ndarray) -> ModalityGuess:
        """The backend's modality classifier (see :class:`Segmenter`)."""
        return self.base.recognise_modality(array)

    def segment(
        self,
        array: np.ndarray,
        concepts: list[str],
        modality: str | None = None,
        spacing: tuple[float, ...] | None = None,
        boxes: dict[str, list] | None = None,
        points: dict[str, list] | None = None,
        kind: Kind | None = None,
    ) -> dict[str, ConceptResult]:
        """The backend's ``segment``, then the agent per concept (prompted concepts are kept).

        Args and Returns: see :meth:`medsam3.models.base.Segmenter.segment`; each result's
        ``extra`` carries the agent's fields (module docstring).
        """
        kind = infer_kind(np.asarray(array), kind)
        planes = kind == "image" and isinstance(self.base, CompactSegmenter)
        prompted = set(boxes or {}) | set(points or {})
        call = {"modality": modality, "spacing": spacing, "kind": kind}
        if planes:
            with shared_encodings(self.base):
                upright = self._upright_view(array, concepts, boxes, points, call)
                if upright is not None:
                    return upright
                results = self.base.segment(array, concepts, boxes=boxes, points=points, **call)
                self._improve_all(results, array, prompted, call)
        else:
            results = self.base.segment(array, concepts, boxes=boxes, points=points, **call)
            self._improve_all(results, array, prompted, call)
        return results

    def _upright_view(self, array, concepts, boxes, points, call) -> dict | None:
        """The whole agent run on the upright view of a 2D image the compact backend's upright
        step turns, mapped back to the stored image; None when it is segmented as stored."""
        if self.base.upright is None:
            return None
        prompted = bool(boxes or points)
        order, guess = self.base.upright_order(array, call["modality"], prompted)
        if guess is None or order.identity:
            return None
        classifier, self.base.upright = self.base.upright, None
        try:
            view = self.segment(
                to_display(array, order), concepts, boxes=boxes, points=points, **call
            )
        finally:
            self.base.upright = classifier
        return results_to_stored(view, order, guess)

    def _improve_all(self, results: dict, array, prompted: set, call: dict) -> None:
        masks = {p: r.mask.astype(bool) for p, r in results.items()}
        for phrase, result in results.items():
            if phrase in prompted:
                continue
            others = {p: m for p, m in masks.items() if p != phrase}
            start = time.perf_counter()
            outcome = self._improve(phrase, result, np.asarray(array), others, call)
            _apply(result, outcome, self.base, call["kind"])
            result.extra["agent_seconds"] = round(time.perf_counter() - start, 3)
            masks[phrase] = outcome.final.mask

    def _improve(self, phrase, result: ConceptResult, array, others: dict, call: dict) -> Outcome:
        """Run the loop for one concept, on the plane or on the whole stack."""
        initial = Candidate(result.mask.astype(bool), float(result.presence))

        def judge(c: Candidate) -> None:
            c.features = features(phrase, c.mask, c.presence, others, c.evidence, self.priors)
            c.score = critic_score(c.features, self.priors)

        advantage = None
        if call["kind"] == "image" and isinstance(self.base, CompactSegmenter):
            advantage = self._advantage()
            ctx = self._plane_context(phrase, result, array, others, call["modality"])
            initial.evidence = evidence(ctx, initial.mask)

            def propose(current, rnd, budget):
                return plane_actions(ctx, current, budget)
        else:

            def propose(current, rnd, budget):
                return stack_actions(phrase, current, others, self._resegment(array, call), budget)

        if self.chooser is not None:
            propose = self.chooser.wrap(phrase, array, call["modality"], propose)
        config = self.config
        if not initial.mask.any() and not config.refine_absent:
            config = replace(config, max_rounds=0)  # scored, flagged if doubtful, kept
        return run_loop(phrase, initial, propose, judge, config, advantage)

    def _advantage(self) -> Advantage | None:
        """The shipped replacement rule on 2D planes, where it was fitted (None: not fitted)."""
        model = self.priors.gain
        if model is None:
            return None

        def advantage(current: Candidate, candidate: Candidate) -> float:
            now = {**current.features, "critic": current.score}
            new = {**candidate.features, "critic": candidate.score}
            overlap = iou(current.mask, candidate.mask)
            return model.expected_gain(candidate.action, now, new, overlap) - model.margin

        return advantage

    def _plane_context(self, phrase, result, array, others, modality) -> PlaneContext:
        """The compact model's encoded plane for a phrase (a cache hit after the base call)."""
        model: CompactSegmenter = self.base
        read = result.extra.get("read_as", phrase)
        plane = array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array
        rgb, _ = model.plane_rgb_groups(plane, [read], modality)[0]
        state = model.encode_plane(rgb, modality)
        _, dense = model.detect(state, [read])
        return PlaneContext(model, state, rgb, read, dense[0], others)

    def _resegment(self, array, call: dict):
        def run(phrase: str) -> tuple[np.ndarray, float]:
            r = self.base.segment(array, [phrase], **call)[phrase]
            return r.mask.astype(bool), float(r.presence)

        return run


def _apply(result: ConceptResult, outcome: Outcome, base: Segmenter, kind: str) -> None:
    """Write the loop's outcome into a result, in place (mask, instances, extra)."""
    final = outcome.final
    result.extra.update(
        critic_score=round(final.score, 4),
        critic_raw=round(outcome.initial.score, 4),
        critic_raw_features={k: round(float(v), 4) for k, v in outcome.initial.features.items()},
        agent_rounds=outcome.rounds,
        review=outcome.review,
        agent_action=final.action,
        agent_encodings=outcome.encodings,
        agent_trace=outcome.trace,
    )
    if not outcome.changed:
        return
    result.extra["agent_raw_mask"] = result.mask.astype(np.uint8)
    result.extra["agent_raw_presence"] = float(result.presence)
    result.mask = final.mask.astype(np.uint8)
    result.presence = final.presence
    result.instances = _instances(final.mask, final.presence, base, kind)


def _instances(mask: np.ndarray, presence: float, base: Segmenter, kind: str) -> list[Instance]:
    """Instances of a changed mask: the compact model's own split on 2D, else components."""
    if kind == "image" and isinstance(base, CompactSegmenter):
        return base.instances(mask, presence)[1]
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    return [Instance(labels == i, mask_box(labels == i), float(presence)) for i in range(1, n + 1)]


def wrap(base: Segmenter, agent: str | dict | AgentConfig | None) -> Segmenter:
    """The base segmenter, or the base wrapped with the agent (None / "off": unchanged).

    Args:
        base: a loaded segmenter.
        agent: a mode name ("rules", "mllm"), a mapping of AgentConfig fields, or a config.

    Returns:
        ``base`` or an :class:`AgentSegmenter` around it.
    """
    config = AgentConfig.from_value(agent)
    return base if config is None else AgentSegmenter(base, config)
