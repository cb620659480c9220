"""How sure a planner is of each suggestion (SPEC §5.4): its own spread, and an ensemble's disagreement.

For the actions the loop may take at a step (those that change a planning parameter), best first:

* **entropy** H = −Σ p log p (nats) of the policy's distribution over them: ACER's π (renormalised
  over the moving actions); for Q values (SARSA, DQN) the Boltzmann distribution softmax(Q / τ) with τ
  the spread (standard deviation) of the Q values [CONVENTION: SPEC §5.4 names no temperature]. A
  rule-based planner's priorities are not a distribution: no entropy.
* **margin**: top-1 minus top-2 — ΔP12 for probabilities (seed 000's 67 %, SPEC §1.16); for Q values
  and priorities the gap as a fraction of the range Q₁ − Q_min (0–1), so one threshold serves both.
* **disagreement** (epistemic, an ensemble of other seeds asked the same observation): the fraction
  of members whose best action differs from the policy's, and for probabilities the mean total
  variation distance ½ Σ |π − π_m| (0–1).

A step is **flagged** when its margin is below ``MARGIN_FLAG`` or its top-1 disagreement reaches
``DISAGREEMENT_FLAG`` (docs/decisions.md, "Uncertainty flags").
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

MARGIN_FLAG = 0.10  # ΔP12 (or the normalised Q gap) below 10 %: the planner barely prefers its choice [CONVENTION]
DISAGREEMENT_FLAG = 0.5  # half the ensemble or more would act otherwise [CONVENTION]


def action_key(action: Any):
    """A hashable, comparable form of an action (an index, a vector, a per-agent dict)."""
    if isinstance(action, dict):
        return tuple(sorted((str(k), action_key(v)) for k, v in action.items()))
    array = np.asarray(action)
    return int(array) if array.ndim == 0 and np.issubdtype(array.dtype, np.integer) else \
        tuple(np.round(array.astype(float).ravel(), 6).tolist())


def distribution(values: Sequence[float], kind: str) -> np.ndarray | None:
    """The policy's distribution over ranked actions: probabilities renormalised, Q values through a
    Boltzmann softmax (τ = their standard deviation); None for priorities or unknown values."""
    v = np.asarray(values, float)
    if v.size == 0 or not np.all(np.isfinite(v)):
        return None
    if kind == "probability":
        total = v.sum()
        return v / total if total > 0 else None
    if kind == "q":
        tau = float(v.std()) or 1.0
        z = np.exp((v - v.max()) / tau)
        return z / z.sum()
    return None


def entropy(p: np.ndarray) -> float:
    """H(p) in nats."""
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def margin(values: Sequence[float], kind: str) -> float:
    """Top-1 minus top-2: ΔP12 for probabilities, else the gap over the range Q₁ − Q_min (NaN with one action)."""
    v = np.sort(np.asarray(values, float))[::-1]
    if v.size < 2 or not np.all(np.isfinite(v)):
        return math.nan
    if kind == "probability":
        return float(v[0] - v[1])
    spread = float(v[0] - v[-1])
    return float((v[0] - v[1]) / spread) if spread > 0 else 0.0


def assess(ranking: Sequence[tuple[Any, float]], kind: str,
           members: Sequence[Sequence[tuple[Any, float]]] = (), member_kind: str = "") -> dict:
    """Uncertainty of one step: ``ranking`` the policy's (action, value) over the moving actions, best
    first; ``members`` the ensemble's rankings over the same actions. JSON-ready."""
    values = [v for _, v in ranking]
    p = distribution(values, kind)
    out = {"kind": kind, "margin": _round(margin(values, kind)), "entropy": None if p is None else _round(entropy(p)),
           "ensemble": len(members)}
    if members and ranking:
        best = action_key(ranking[0][0])
        tops = [action_key(m[0][0]) for m in members if m]
        out["disagreement"] = _round(float(np.mean([t != best for t in tops])) if tops else math.nan)
        mine = dict(zip((action_key(a) for a, _ in ranking), p)) if p is not None else None
        theirs = [distribution([v for _, v in m], member_kind or kind) for m in members]
        if mine is not None and all(q is not None for q in theirs):
            tv = [0.5 * sum(abs(mine.get(action_key(a), 0.0) - q_i) for (a, _), q_i in zip(m, q))
                  for m, q in zip(members, theirs)]
            out["total_variation"] = _round(float(np.mean(tv)))
    flags = []
    if out["margin"] is not None and out["margin"] < MARGIN_FLAG:
        flags.append("low margin")
    if out.get("disagreement") is not None and out["disagreement"] >= DISAGREEMENT_FLAG:
        flags.append("ensemble disagrees")
    out["flags"] = flags
    return out


def _round(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 5)
