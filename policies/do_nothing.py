"""The do-nothing planner: it keeps the plan it is handed (issue 16).

The floor below "random" that says how much of a planner's score was already in its start plan:
from the trivial TPPs on the v1 prostate phantoms it reached ψ = 9 on 84 % of held-out cases.
It proposes no action, so the closed loop (``rtautoplan.loop.run_loop``) takes no step and
keeps the initial plan; ``rtautoplan evaluate --policy do-nothing`` reports its ψ before = after.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class DoNothing:
    """Proposes nothing: ``rank`` is empty, so every step of the loop is passed over."""

    name = "do-nothing"
    value_kind = "priority"

    def __init__(self, env=None, seed: int = 0):
        self.env = env

    def act(self, observation: np.ndarray) -> Any:
        """No action (None): a caller that needs one should ask ``rank``, which is empty."""
        return None

    def rank(self, observation: np.ndarray) -> list[tuple[Any, float]]:
        return []
