"""Integrated gradients of the ACER planner's choice over its DVH state (SPEC §5.6): properties that hold
for any trained weights."""

from __future__ import annotations

import numpy as np
import pytest

from rtautoplan.attribution import acer_attributions, empty_plan_dvh, explain
from rtautoplan.plan import Step
from rtautoplan.policies.acer import load_net


@pytest.fixture(scope="module")
def net():
    return load_net()


def dvh_states(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    falls = rng.uniform(0.3, 1.1, (n, 3, 1))
    doses = np.linspace(0.0, 1.2, 100)[None, None, :]
    return (1.0 / (1.0 + np.exp((doses - falls) * rng.uniform(8, 30, (n, 3, 1))))).reshape(n, 300).astype(np.float32)


def test_attributions_are_complete(net):
    """Σ_i IG_i ≈ log π(a|s) − log π(a|s') (the Riemann sum's error shrinks with more steps)."""
    states = dvh_states(3)
    ig, gap = acer_attributions(net, states, [0, 5, 11], steps=256)
    assert np.allclose(ig.sum(axis=1), gap, atol=0.02 + 0.02 * np.abs(gap))


def test_the_baseline_itself_gets_no_attribution_and_masked_actions_count(net):
    base = empty_plan_dvh(3, 100)[None]
    ig, gap = acer_attributions(net, base, [3])
    assert np.all(ig == 0.0) and gap[0] == 0.0
    states = dvh_states(1, seed=2)
    only = np.zeros((1, 18), bool)
    only[0, [3, 4]] = True
    masked_ig, _ = acer_attributions(net, states, [3], only)
    free_ig, _ = acer_attributions(net, states, [3])
    assert not np.allclose(masked_ig, free_ig)  # π over the available actions, as the planner acts


def test_explain_summarises_accepted_steps_per_structure(net):
    class Planner:
        pass

    planner = Planner()
    planner.net = net
    states = dvh_states(2, seed=4)
    steps = [Step(1, "a", True, 5.0, state=states[0].reshape(3, 100), action_id=2, available=tuple(range(18))),
             Step(2, "b", False, 5.0, state=states[1].reshape(3, 100), action_id=7),
             Step(2, "c", True, 6.0, state=states[1].reshape(3, 100), action_id=9)]
    out = explain(planner, steps, ("PTV", "Bladder", "Rectum"), 93.6)
    assert set(out) == {1, 2}
    for summary in out.values():
        assert {"PTV", "Bladder", "Rectum", "top"} <= set(summary)
        structure, dose, _ = summary["top"]
        assert structure in ("PTV", "Bladder", "Rectum") and 0.0 <= dose <= 93.6
    assert explain(object(), steps, ("PTV", "Bladder", "Rectum"), 93.6) == {}
