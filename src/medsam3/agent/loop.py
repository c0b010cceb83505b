"""The agent's loop for one concept: score, propose, keep the better candidate, repeat.

Bounded (``max_rounds`` rounds, ``max_encodings`` extra encodings) and deterministic: actions
run in the planner's order and ties keep the current result. The loop stops as soon as the
critic accepts the current result (score >= ``accept``) or a round finds nothing better; what
is still below ``accept`` at the end is flagged for review. Every try is a trace row.

A candidate is better when the critic scores it higher by more than ``min_gain`` and, where a
replacement rule is given (:mod:`medsam3.agent.gain`), its expected Dice gain exceeds the rule's
margin; the best is the one with the highest expected gain (else the highest score).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from medsam3.agent.config import AgentConfig
from medsam3.agent.planner import Action, Candidate

TRACE_COLUMNS = (
    "concept",
    "round",
    "action",
    "critic_before",
    "critic_after",
    "decision",
    "reason",
)

Propose = Callable[[Candidate, int, int], list[Action]]
Advantage = Callable[[Candidate, Candidate], float]  # (current, candidate) -> gain over margin


@dataclass
class Outcome:
    """What the loop settled on for one concept.

    Attributes:
        final: the kept candidate (``initial`` when nothing beat it).
        initial: the backend's own result.
        rounds: rounds run (0 when the first result was accepted at once).
        encodings: extra encodings spent.
        review: the final score is below ``accept``.
        trace: one row per try (TRACE_COLUMNS).
    """

    final: Candidate
    initial: Candidate
    rounds: int = 0
    encodings: int = 0
    review: bool = False
    trace: list[dict] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether a candidate replaced the backend's result."""
        return self.final is not self.initial


def _row(concept: str, rnd: int, action: str, before, after, decision: str, reason: str) -> dict:
    return {
        "concept": concept,
        "round": rnd,
        "action": action,
        "critic_before": None if before is None else round(float(before), 4),
        "critic_after": None if after is None else round(float(after), 4),
        "decision": decision,
        "reason": reason,
    }


def run_loop(
    concept: str,
    initial: Candidate,
    propose: Propose,
    judge: Callable[[Candidate], None],
    config: AgentConfig,
    advantage: Advantage | None = None,
) -> Outcome:
    """Improve one concept's result.

    Args:
        concept: the phrase (trace only).
        initial: the backend's result as a candidate.
        propose: (current, round, encodings left) -> actions to try.
        judge: sets a candidate's ``features`` and ``score`` (the critic).
        config: rounds, encodings, accept threshold, minimum gain.
        advantage: the replacement rule, (current, candidate) -> expected Dice gain minus its
            margin (> 0 needed); None: the critic's score alone decides.

    Returns:
        The outcome, with its trace.
    """
    judge(initial)
    out = Outcome(initial, initial)
    for rnd in range(1, config.max_rounds + 1):
        if out.final.score >= config.accept:
            break
        out.rounds = rnd
        best = _round(concept, rnd, out, propose, judge, config, advantage)
        if best is None:
            break
        out.final = best
    out.review = out.final.score < config.accept
    decision = "review" if out.review else "accepted"
    reason = f"critic {out.final.score:.3f} vs accept {config.accept:.2f}"
    out.trace.append(
        _row(concept, out.rounds, "stop", initial.score, out.final.score, decision, reason)
    )
    return out


def _round(concept, rnd, out: Outcome, propose, judge, config, advantage) -> Candidate | None:
    """One round: try each proposed action once; return the best that beats the current."""
    current, best, best_row, best_rank = out.final, None, None, None
    for action in propose(current, rnd, config.max_encodings - out.encodings):
        if action.note:
            out.trace.append(
                _row(concept, rnd, action.name, current.score, None, "note", action.reason)
            )
            continue
        if action.encodings > config.max_encodings - out.encodings:
            out.trace.append(
                _row(concept, rnd, action.name, current.score, None, "skipped", "no encodings")
            )
            continue
        candidate = action.run()
        if candidate is None:
            out.trace.append(
                _row(concept, rnd, action.name, current.score, None, "skipped", "not applicable")
            )
            continue
        out.encodings += candidate.encodings
        judge(candidate)
        row = _row(concept, rnd, action.name, current.score, candidate.score, "rejected", "")
        row["reason"] = action.reason
        rank = candidate.score
        wins = candidate.score > current.score + config.min_gain
        if advantage is not None:
            rank = advantage(current, candidate)
            row["reason"] += f"; expected Dice gain {rank:+.3f} over the margin"
            wins = wins and rank > 0
        out.trace.append(row)
        if wins and (best_rank is None or rank > best_rank):
            best, best_row, best_rank = candidate, row, rank
    if best_row is not None:
        best_row["decision"] = "accepted"
    return best
