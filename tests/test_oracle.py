"""The reachability oracle of issue 16 (``policies/oracle.py``): the geometric floor and the beam search."""

from __future__ import annotations

import math

import numpy as np

from rtautoplan.case import Role
from rtautoplan.phantom import make_case
from rtautoplan.plan import Dose
from rtautoplan.policies.env_prostate import ProstateEnv
from rtautoplan.policies.oracle import beam_search, geometric_floor
from rtautoplan.scoring import proknow9
from rtautoplan.scoring.base import primary
from rtautoplan.structures.rules import apply_rules


class WeightTPS:
    """A stand-in TPS: Rx in the PTV; each organ outside the PTV at Rx · (1 − 0.1 k), k the number of
    Table-1 λ increases its weight holds (λ_i / 2 = ½ · 1.65^k), 0.2 Rx elsewhere."""

    name, modality = "weights", None

    def prepare(self, case, beams=None):
        self.case = case

    def optimize(self, objectives):
        rx = self.case.prescription.rx_max
        ptv = primary(self.case, Role.PTV).mask.to_full()
        gy = np.where(ptv, rx, 0.2 * rx)
        for o in objectives:
            if o.structure in ("Bladder", "Rectum"):
                k = round(math.log(2 * o.weight) / math.log(1.65))
                organ = self.case.structure(o.structure).mask.to_full() & ~ptv
                gy = np.where(organ, rx * max(0.0, 1.0 - 0.1 * k), gy)
        return Dose(self.case.grid, gy.astype(np.float32))


def test_no_dose_normalised_to_d95_beats_the_floor():
    case = apply_rules(make_case("prostate", 2, population="v2"), "prostate")
    ptv = primary(case, Role.PTV).mask.to_full()
    rectum = case.structure("Rectum").mask.to_full()
    rx = case.prescription.rx_max
    # the best a plan can do for the rectum: Rx on the PTV but 0 on as much of the overlap as D95 allows
    cold = np.flatnonzero((ptv & rectum).ravel())[: int(0.05 * np.count_nonzero(ptv))]
    gy = np.where(ptv, rx, 0.0).ravel()
    gy[cold] = 0.0
    value = {c.name: c.value for c in proknow9.score(gy.reshape(ptv.shape), case).criteria}
    floors = {f.name: f for f in geometric_floor(case)}
    assert set(floors) == {"Bladder V94.3%", "Bladder V88.1%", "Bladder V81.2%",
                           "Rectum V94.3%", "Rectum V88.1%", "Rectum V81.2%", "Rectum V75.5%"}
    assert floors["Rectum V94.3%"].floor > 0
    assert math.isclose(floors["Rectum V94.3%"].floor, value["Rectum V94.3%"], abs_tol=100 / np.count_nonzero(rectum))
    assert not floors["Rectum V94.3%"].unreachable  # 14 % of this rectum in the PTV: the floor is under 20 %


def test_beam_search_finds_the_weights_that_spare_both_organs():
    env = ProstateEnv(WeightTPS(), case_seeds=(0,), population="v2")
    result = beam_search(env, 0, depth=6, width=2)
    assert result.start_psi < 9 and result.best_psi == 9
    # rectum V75.5% < 55 % needs k = 3 (0.7 Rx), the bladder's criteria k = 2 (0.8 Rx)
    assert sorted(result.actions) == ["lam_bla+", "lam_bla+", "lam_rec+", "lam_rec+", "lam_rec+"]
    assert result.failed == ()
    assert math.isclose(result.parameters["lam_bla"], 1.65 ** 2) and math.isclose(result.parameters["lam_rec"], 1.65 ** 3)
    assert result.plans <= 5 * 2 * 17 + 17  # each TPP planned once


def test_beam_search_stops_at_its_plan_budget():
    env = ProstateEnv(WeightTPS(), case_seeds=(0,), population="v2")
    result = beam_search(env, 0, depth=6, width=2, max_plans=5)
    assert result.plans == 5 and result.best_psi < 9
