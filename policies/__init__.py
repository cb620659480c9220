"""Planners: the Policy protocol, the environments they plan in, and one module per algorithm.

``POLICIES`` maps a name to a factory ``(env, seed) -> Policy``; it is the one place a planner is
registered, and what ``rtautoplan plan --policy NAME`` looks up.
"""

from rtautoplan.policies.base import Policy, RandomPolicy
from rtautoplan.policies.rule_based import RuleBased

POLICIES = {
    "rule-based": RuleBased,
    "random": RandomPolicy,
}

__all__ = ["POLICIES", "Policy", "RandomPolicy", "RuleBased"]
