"""The transparent baseline: what a dosimetrist does, written down (issue 6).

Look at the plan's score, find the organ that fails worst, tighten its objective; if the last
tightening made the plan worse, try that organ's next handle (a lower limit, then more weight,
then more volume) or back off. Every learned policy must beat this.

One heuristic per environment family, in ``HEURISTICS``; ``RuleBased(env)`` picks it. The policy
reads the environment's last score (``env.last_score``: every criterion with its structure and
points) — the same information a planner reads off the DVH and the clinical-goal list. ``rank``
returns up to three candidate actions, best first, with a priority (higher = more urgent).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from rtautoplan.policies import tpp as T

_PROSTATE_ORGANS = {"Bladder": "bla", "Rectum": "rec"}


def _failing(score) -> dict[str, float]:
    """Structure → points lost (max_score − score) over its failed criteria."""
    lost: dict[str, float] = {}
    for c in score.criteria:
        if c.passed is False:
            lost[c.structure] = lost.get(c.structure, 0.0) + float((c.max_score or 0.0) - (c.score or 0.0)) + 1e-6
    return lost


def _improved(now, before) -> bool:
    sign = 1.0 if now.higher_is_better else -1.0
    return sign * (float(now.total) - float(before.total)) > 1e-9


class RuleBased:
    """The rule-based planner bound to ``env`` (one of ``policies.env.ENVS``). Greedy: the closed
    loop undoes any of its steps that does not improve the score (``rtautoplan.loop``)."""

    name = "rule-based"
    greedy = True
    value_kind = "priority"

    def __init__(self, env, seed: int = 0):
        self.env = env
        kind = type(getattr(env, "unwrapped", env)).__name__
        if kind not in HEURISTICS:
            raise ValueError(f"no rule-based heuristic for {kind}; known: {sorted(HEURISTICS)}")
        self._heuristic: Callable[[RuleBased], list[tuple[Any, float]]] = HEURISTICS[kind]
        self.reset()

    def reset(self) -> None:
        self._last_score = None  # the score when the last action was chosen
        self._handle: dict[str, int] = {}  # organ → which of its handles to pull next
        self._last_organ: str | None = None
        self.gain = 1.0

    def rank(self, observation) -> list[tuple[Any, float]]:
        score = self.env.last_score
        if self._last_score is not None and self._last_organ is not None and not _improved(score, self._last_score):
            self._handle[self._last_organ] = self._handle.get(self._last_organ, 0) + 1
            self.gain = max(0.125, self.gain / 2.0)
        self._last_score = score
        return self._heuristic(self)

    def act(self, observation) -> Any:
        return self.rank(observation)[0][0]


def _prostate(policy: RuleBased) -> list[tuple[int, float]]:
    """Seed 000 TPPs: tighten the failing organ (t down, then λ up, then V up); a PTV hot spot:
    t_PTV down, λ_PTV up, V_PTV up, then relax the OARs that squeeze the PTV (t up, λ down) — the
    D95 normalisation turns a cold overlap into a hot spot elsewhere. Organs losing most points first."""
    handles = {"bla": ("t_bla-", "lam_bla+", "v_bla+"), "rec": ("t_rec-", "lam_rec+", "v_rec+"),
               "ptv": ("t_ptv-", "lam_ptv+", "v_ptv+", "t_rec+", "t_bla+", "lam_rec-", "lam_bla-")}
    lost = _failing(policy.env.last_score)
    keyed = {("ptv" if organ.startswith("PTV") else _PROSTATE_ORGANS.get(organ)): points
             for organ, points in lost.items()}
    keyed.pop(None, None)
    order = sorted(keyed, key=lambda o: -keyed[o]) or ["bla", "rec"]
    out = []
    for organ in order:
        options = handles[organ]
        name = options[policy._handle.get(organ, 0) % len(options)]
        out.append((T.NAMES.index(name[:-1]) * 2 + (0 if name[-1] == "+" else 1), keyed.get(organ, 0.0)))
    policy._last_organ = order[0]
    options = handles[order[0]]
    second = options[(policy._handle.get(order[0], 0) + 1) % len(options)]
    out.insert(1, (T.NAMES.index(second[:-1]) * 2 + (0 if second[-1] == "+" else 1), keyed.get(order[0], 0.0) / 2))
    return out[:3]


def _hn_imrt(policy: RuleBased) -> list[tuple[int, float]]:
    """Seed 004: lower the objective of the OAR furthest above its goal (model 2: its volume
    first, down to 20 %, then its dose); if PTV coverage is short, raise the dose objective of the
    OAR that was lowered last."""
    from rtautoplan.policies.env_hn_imrt import MOVES, OARS

    env = policy.env
    per_move = len(MOVES[env.model])
    loss: dict[str, float] = {}
    for c in env.last_score.criteria:
        loss[c.structure] = loss.get(c.structure, 0.0) + float(c.score or 0.0)
    ptv_short = any(loss.get(s, 0.0) > 0 for s in loss if s.startswith("PTV"))
    organs = sorted((o for o in OARS if loss.get(o, 0.0) > 0), key=lambda o: -loss[o]) or list(OARS)
    out = []
    if ptv_short and policy._last_organ is not None:
        out.append((OARS.index(policy._last_organ) * per_move + 0, sum(v for s, v in loss.items() if s.startswith("PTV"))))
    for organ in organs:
        lower_v = env.model == 2 and env.positions[organ].v_pct > 20.0 and policy._handle.get(organ, 0) % 2 == 0
        out.append((OARS.index(organ) * per_move + (3 if lower_v else 1), loss.get(organ, 0.0)))
    policy._last_organ = organs[0]
    return out[:3]


def _seed002(policy: RuleBased) -> list[tuple[np.ndarray, float]]:
    """Seed 002: for the selected OARs (worst score first), lower each dose limit in proportion to
    how far its score is from the best-scoring one (by up to 25 %), and at least to just below what
    the organ now gets — 0.95 × its current Dmax or Dmean (rule 11 starts limits 10–30 % above an
    estimate, where they do nothing) — and raise its weight likewise (by up to 50 %). After a step that did not improve the plan, only
    the worst OAR moves, at half the gain. Alternatives: half and a quarter of the step."""
    from rtautoplan.dvh import dmax, dmean
    from rtautoplan.plan import ObjectiveKind

    env = policy.env
    scores = np.array([env.structure_scores.get(name, 0.0) for name in env.selected])
    worst = float(scores.min()) if scores.size else 0.0
    share = scores / worst if worst < 0 else np.zeros_like(scores)
    if policy._handle.get("seed002", 0) % 2:
        share = np.where(np.arange(share.size) == 0, share, 0.0)
    policy._handle.setdefault("seed002", 0)
    kinds = {o.structure: o.kind for o in env.objectives if o.adjustable}
    actions = []
    for gain in (policy.gain, policy.gain / 2, policy.gain / 4):
        action = np.zeros(env.action_space.shape, np.float32)
        pairs = action.reshape(-1, 2)
        for i, name in enumerate(env.selected):
            if share[i] <= 0:
                continue
            mask = env.case.structure(name).voxels
            now = (dmean if kinds.get(name) is ObjectiveKind.DMEAN else dmax)(env.last_dose.gy, mask)
            goal = 0.95 * now * (1.0 - 0.2 * gain * share[i])
            limit = env.params[name][1]
            below_now = goal / limit - 1.0 if limit > 0 else 0.0
            pairs[i] = (0.5 * gain * share[i], max(-0.5, min(-0.25 * gain * share[i], below_now)))
        actions.append((action, gain))
    policy._last_organ = "seed002"
    return actions


def _carbon(policy: RuleBased) -> list[tuple[dict, float]]:
    """Seed 003 (all 45 agents move at once): for every OAR short of its Table A2 goal, lower its
    Max limit and raise its weight; a cold CTV of any level (V95 short) raises the Min and DVHmin
    dose and weights; a hot one (V105 or HI short) lowers the Max dose. Everything else stays. The
    alternative moves only the worst OAR."""
    from rtautoplan.policies.env_carbon import CTV_ROLE, MOVE, PARAMETERS, ctv_levels

    env, up, down, stay = policy.env, MOVE.index(1), MOVE.index(-1), MOVE.index(0)
    short = {(c.structure, c.metric) for c in env.last_score.scored if c.passed is False}
    ctvs = {name for name, _ in ctv_levels(env.case)}
    organs = {structure for structure, _ in short} - ctvs
    cold = any(metric == "V95%" for structure, metric in short if structure in ctvs)
    hot = any(metric in ("V105%", "HI") for structure, metric in short if structure in ctvs)
    moves = {}
    for p in PARAMETERS:
        if p.structure == CTV_ROLE:
            lift = cold and p.kind.value in ("Dmin", "DVHmin") and p.field in ("dose", "weight")
            cool = hot and p.kind.value == "Dmax" and p.field == "dose"
            moves[p.name] = up if lift else down if cool else stay
        elif p.structure in organs:
            moves[p.name] = down if p.field == "dose" else up
        else:
            moves[p.name] = stay
    worst = min((c for c in env.last_score.scored if c.structure not in ctvs),
                key=lambda c: (c.score or 0.0) - (c.max_score or 0.0), default=None)
    only_worst = {n: (m if worst is not None and n.startswith(worst.structure + ".") else stay) for n, m in moves.items()}
    policy._last_organ = None if worst is None else worst.structure
    return [(moves, float(len(organs))), (only_worst, 1.0)]


HEURISTICS: dict[str, Callable[[RuleBased], list[tuple[Any, float]]]] = {
    "ProstateEnv": _prostate,
    "HNImrtEnv": _hn_imrt,
    "ProtonHNEnv": _seed002,
    "CarbonHNEnv": _carbon,
}
