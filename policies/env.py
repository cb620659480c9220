"""The RL planning environments, over any TPS adapter (issue 6; SPEC §1.2–§1.8, §2.10–§2.12, §3.4–§3.6,
§4.2–§4.7).

| name | seed | class | spaces | reward | horizon |
|---|---|---|---|---|---|
| ``prostate`` | 000 | ``ProstateEnv`` (gymnasium) | Box(3, 100) / Discrete(18) | Δψ (proknow9) | 20 |
| ``hn_imrt`` | 004 | ``HNImrtEnv`` (gymnasium) | Box(14) / Discrete(6 or 12) | L_{t−1} − L_t | 35 |
| ``proton_hn`` | 002 | ``ProtonHNEnv`` (gymnasium) | Box(50, 104) / Box(16) | Δscore_plan | 4 |
| ``carbon_hn`` | 003 | ``CarbonHNEnv`` (PettingZoo) | 45 × Box(19, 150) / Discrete(3) | φ − ½ max φ | 10 |

Each takes the adapter (instance or factory) first; ``case_seeds=[…]`` (phantom variants) or
``case=`` (a fixed Case); ``reset(seed=…)`` draws the initial parameters. Every environment exposes
``parameters`` (name → value), ``objectives``, ``last_dose``, ``last_score`` (a ``scoring.Score``),
``dose_scale`` and ``last_step_s``; ``info`` carries score, parameters and the action applied. The
parameter ↔ objective mappings are pure functions in the modules: ``tpp`` (seed 000),
``env_hn_imrt`` (004), ``env_proton`` (002), ``env_carbon`` (003).
"""

from rtautoplan.policies import tpp
from rtautoplan.policies.env_base import CaseSource, Planner, single_level
from rtautoplan.policies.env_carbon import CarbonHNEnv
from rtautoplan.policies.env_hn_imrt import HNImrtEnv
from rtautoplan.policies.env_proton import ProtonHNEnv
from rtautoplan.policies.env_prostate import ProstateEnv

ENVS: dict[str, type] = {
    "prostate": ProstateEnv,
    "hn_imrt": HNImrtEnv,
    "proton_hn": ProtonHNEnv,
    "carbon_hn": CarbonHNEnv,
}

__all__ = ["ENVS", "CarbonHNEnv", "CaseSource", "HNImrtEnv", "Planner", "ProstateEnv", "ProtonHNEnv", "single_level",
           "tpp"]
