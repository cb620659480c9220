"""Planners: the Policy protocol, the environments they plan in, and one module per algorithm.

``POLICIES`` maps a name to a factory ``(env, seed) -> Policy``; it is the one place a planner is
registered, and what ``rtautoplan plan --policy NAME`` looks up.
"""

import importlib

from rtautoplan.policies.base import Policy, RandomPolicy
from rtautoplan.policies.do_nothing import DoNothing
from rtautoplan.policies.rule_based import RuleBased


def _trained(module: str):
    """A factory loading the committed weights of ``policies/<module>.py`` (imported on first use:
    torch is slow to import and the rule-based planner does not need it)."""
    def load(env, seed: int = 0):
        return importlib.import_module(f"rtautoplan.policies.{module}").load(env, seed)

    return load


POLICIES = {
    "rule-based": RuleBased,
    "random": RandomPolicy,
    "do-nothing": DoNothing,  # keeps the start plan: the floor of issue 16's tables
    "acer": _trained("acer"),  # seed 000 prostate (policies/weights/acer_prostate_v2.pt)
    "sarsa": _trained("sarsa"),  # seed 004 H&N IMRT, model 2 (policies/weights/sarsa_model2.npz)
    "qmix": _trained("qmix"),  # seed 003 carbon H&N, 45 agents (policies/weights/qmix_carbon.pt)
    "ppo": _trained("ppo"),  # seed 002 proton H&N (policies/weights/ppo_proton_hn_cov.pt)
}



def ensemble_for(name: str, env) -> list:
    """Other trained seeds of planner ``name`` (its module's ``ensemble(env)``), [] when it has none."""
    module = {"acer": "acer"}.get(name)
    if module is None:
        return []
    return importlib.import_module(f"rtautoplan.policies.{module}").ensemble(env)


# ``rtautoplan train NAME``: the module whose ``Args`` dataclass and ``train(args)`` reproduce the weights.
TRAINERS = {"acer": "rtautoplan.policies.acer", "sarsa": "rtautoplan.policies.sarsa",
            "dqn": "rtautoplan.policies.dqn", "qmix": "rtautoplan.policies.qmix",
            "ppo": "rtautoplan.policies.ppo"}  # dqn: the FGSM contrast of seed 000 (docs/results.md)

__all__ = ["DoNothing", "ensemble_for", "POLICIES", "TRAINERS", "Policy", "RandomPolicy", "RuleBased"]
