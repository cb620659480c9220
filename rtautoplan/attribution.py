"""Why the neural planner chose its action: integrated gradients over the DVH state (SPEC §5.6).

For step t of an ACER episode, with the LSTM state h_{t−1} the planner carried into the step held fixed,
the attribution of DVH input i to the chosen action a is (Sundararajan et al. 2017)

    IG_i = (s_i − s'_i) · (1/m) Σ_{j=1..m} ∂ log π(a | s' + (j/m)(s − s'), h_{t−1}) / ∂ s_i

with the baseline s' the DVH of an empty plan (100 % of every structure at 0 Gy, 0 above) and m = ``STEPS``
(a Riemann sum; Σ_i IG_i ≈ log π(a|s) − log π(a|s'), the completeness the tests check). π is masked to
the actions available at the step, as the planner is. ``explain`` summarises each step per structure
(the sum over its 100 DVH points) and names the dose where the largest single attribution lies.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

STEPS = 32


def empty_plan_dvh(rows: int, points: int) -> np.ndarray:
    """The baseline: every structure 100 % at 0 Gy and 0 % at every higher dose point, (rows·points,)."""
    base = np.zeros((rows, points), np.float32)
    base[:, 0] = 1.0
    return base.ravel()


def acer_attributions(net, states: np.ndarray, actions: Sequence[int], available: np.ndarray | None = None,
                      steps: int = STEPS) -> tuple[np.ndarray, np.ndarray]:
    """(IG (T, d), log π(a_t|s_t) − log π(a_t|s') (T,)) for an episode's states (T, d) and actions, the LSTM
    state carried through the episode; ``available`` (T, A) bool masks π (None: every action)."""
    import torch

    from rtautoplan.policies.acer import masked

    states = np.asarray(states, np.float32).reshape(len(actions), -1)
    base = torch.as_tensor(empty_plan_dvh(3, states.shape[1] // 3) if states.shape[1] % 3 == 0
                           else np.zeros(states.shape[1], np.float32))
    alphas = torch.linspace(1.0 / steps, 1.0, steps)[:, None]
    out, gaps, state = np.zeros_like(states), np.zeros(len(actions)), None
    for t, (s, a) in enumerate(zip(states, actions)):
        s = torch.as_tensor(s)
        mask = None if available is None else np.asarray(available[t], bool)
        path = (base + alphas * (s - base)).requires_grad_(True)
        batch = None if state is None else tuple(x.expand(-1, steps, -1).contiguous() for x in state)
        logits, _, _ = net(path[:, None, :], batch)
        logp = torch.log_softmax(masked(logits[:, 0], mask), -1)[:, int(a)]
        (grad,) = torch.autograd.grad(logp.sum(), path)
        out[t] = ((s - base) * grad.mean(0)).detach().numpy()
        with torch.no_grad():
            ends, _, _ = net(torch.stack([base, s])[:, None, :], None if state is None else
                             tuple(x.expand(-1, 2, -1).contiguous() for x in state))
            lp = torch.log_softmax(masked(ends[:, 0], mask), -1)[:, int(a)]
            gaps[t] = float(lp[1] - lp[0])
            _, _, state = net(s[None, None], state)
    return out, gaps


def explain(planner, steps, structures: Sequence[str], dose_max_gy: float) -> dict[int, dict]:
    """Step number → {structure: summed attribution, "top": (structure, dose Gy, value)} for the accepted
    steps of a neural planner with ``net`` (ACER); {} for any other planner."""
    net = getattr(planner, "net", None)
    taken = [s for s in steps if s.accepted and s.state is not None and isinstance(s.action_id, (int, np.integer))]
    if net is None or not taken or not hasattr(net, "lstm"):
        return {}
    attempts = sorted({s.step for s in steps})  # one LSTM advance per loop step, accepted or not
    first = {}
    for s in steps:
        first.setdefault(s.step, s)
    states = np.stack([np.asarray(first[t].state, np.float32).ravel() for t in attempts])
    chosen = [next((s.action_id for s in steps if s.step == t and s.accepted), first[t].action_id) for t in attempts]
    n_actions = int(net.pi.out_features)
    available = np.stack([np.isin(np.arange(n_actions), first[t].available) if first[t].available
                          else np.ones(n_actions, bool) for t in attempts])
    ig, _ = acer_attributions(net, states, [int(a) for a in chosen], available)
    rows = ig.reshape(len(attempts), len(structures), -1)
    doses = np.linspace(0.0, dose_max_gy, rows.shape[2])
    result = {}
    for i, t in enumerate(attempts):
        if not any(s.step == t and s.accepted for s in taken):
            continue
        r, j = np.unravel_index(np.argmax(np.abs(rows[i])), rows[i].shape)
        result[t] = {**{name: round(float(rows[i, k].sum()), 4) for k, name in enumerate(structures)},
                     "top": [structures[r], round(float(doses[j]), 2), round(float(rows[i, r, j]), 4)]}
    return result


def explain_env(planner, env, steps) -> dict[int, dict]:
    """``explain`` on the DVH state of seed 000's prostate environment (its three structures, 0–1.2 Rx);
    {} for other environments (their states are not DVHs alone)."""
    from rtautoplan.policies.env_prostate import DVH_MAX_REL, ProstateEnv

    if not isinstance(getattr(env, "unwrapped", env), ProstateEnv):
        return {}
    return explain(planner, steps, env._structures(), DVH_MAX_REL * env.case.prescription.levels[0].dose_gy)
