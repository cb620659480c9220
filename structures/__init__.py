"""Structures: TG-263 names, mm-exact margins, the seed-002 rules and the initial objectives.

``apply_rules(case, site)`` → Case with PTV/Gap/Ring and resolved planning masks (SPEC §2.3–§2.5);
``objectives_for(case, rng)`` → the initial objectives (SPEC §2.5–§2.7).
"""

from rtautoplan.structures.margins import distance_mm, expand, shell, shrink
from rtautoplan.structures.objectives import estimate_dose, objectives_for
from rtautoplan.structures.rules import SITES, RuleLog, Resolved, SiteRules, apply_rules, resolve

__all__ = ["SITES", "Resolved", "RuleLog", "SiteRules", "apply_rules", "distance_mm", "estimate_dose", "expand",
           "objectives_for", "resolve", "shell", "shrink"]
