"""The trained planners as the product uses them: `rtautoplan train` options read off each trainer's
Args, and `--policy acer|sarsa` planning a case through the same closed loop."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from rtautoplan.adapters.inhouse import InHousePhoton
from rtautoplan.case import DoseLevel, Phase
from rtautoplan.dicom.read import read_case
from rtautoplan.loop import is_better
from rtautoplan.pipeline import plan_case
from rtautoplan.policies import TRAINERS
from rtautoplan.training import parse

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"
SEED_004_PHASES = (Phase("primary", tuple(DoseLevel(t, 44.0) for t in ("CTV_7000", "CTV_6000", "CTV_5400")), 22),
                   Phase("boost", (DoseLevel("CTV_7000", 26.0),), 13))


@dataclass(frozen=True)
class Toy:
    seed: int = 0
    seeds: tuple[int, ...] = (0,)
    band: float | None = 1.0
    fast: bool = True


def test_options_follow_the_args_dataclass():
    assert parse(Toy, [], "t") == Toy()
    assert parse(Toy, ["--seed", "3", "--seeds", "4", "5", "--band", "none", "--no-fast"], "t") == \
        Toy(3, (4, 5), None, False)


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_trainer_defaults_round_trip(name):
    import importlib

    module = importlib.import_module(TRAINERS[name])
    assert parse(module.Args, [], name) == module.Args()


@pytest.mark.parametrize("policy, sample, site", [("acer", "prostate01", "prostate"), ("sarsa", "hn01", "hn")])
def test_trained_planner_plans_a_case_never_worse_than_its_start(policy, sample, site, tmp_path):
    """SARSA plans seed 004's 44 Gy primary phase of a sequential course (tests/test_phases.py), whose
    plans are normalised after the loop: its never-worse promise is on the plans the loop compared."""
    tps = InHousePhoton(n_beams=7, dose_grid_factor=(2, 4, 4), max_iter=60, cache_dir=tmp_path)
    case = read_case(SAMPLES / sample)
    if policy == "sarsa":
        case = replace(case, prescription=replace(case.prescription, phases=SEED_004_PHASES))
    planned, result = plan_case(case, site=site, policy=policy, tps=tps, max_steps=3)
    result = result.phases[0] if policy == "sarsa" else result
    assert result.policy.startswith(policy) and result.steps
    policy_steps = [s for s in result.steps if "goal round" not in s.action]  # not rtautoplan.goal_rounds
    assert policy_steps and all(len(s.alternatives) >= 2 for s in policy_steps)  # probabilities or Q values
    if policy == "acer":
        assert not is_better(result.initial_score, result.score)
    else:
        assert result.score.system == "relative_loss" and planned.has("zCTV_Primary_4400")
        assert planned.has("CTV_7000") and planned.prescription == case.prescription
