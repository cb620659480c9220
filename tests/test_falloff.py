"""Normal-tissue dose fall-off (``structures.falloff``): shells outside the targets with a maximum dose
that falls with distance, as Eclipse's NTO (an environment option, ``ProtonHNEnv(falloff=True)``)."""

from __future__ import annotations

import numpy as np
import pytest

from rtautoplan.case import Role
from rtautoplan.plan import ObjectiveKind as K
from rtautoplan.structures.falloff import (F_END, F_START, PREFIX, X_START_MM, band_edges, falloff_objectives,
                                          falloff_regions, limit_fraction)
from rtautoplan.structures.margins import distance_mm
from rtautoplan.structures.objectives import HOTSPOT_AIM


def test_the_limit_falls_from_the_start_dose_to_the_end_dose():
    assert limit_fraction(X_START_MM) == pytest.approx(F_START)
    assert limit_fraction(200.0) == pytest.approx(F_END)
    edges = band_edges()
    limits = [limit_fraction(x) for x in edges]
    assert all(a > b for a, b in zip(limits, limits[1:])) and limits[-1] == pytest.approx(F_END)


def test_shells_lie_outside_the_targets_inside_the_body_at_their_distance(small_case):
    case = falloff_regions(small_case, HOTSPOT_AIM)
    shells = [s for s in case.structures if s.name.startswith(PREFIX)]
    assert shells and all(s.role is Role.CONTROL and s.rx_gy is None for s in shells)
    ctv = small_case.structure("CTV_6000").mask.to_full()
    body = small_case.external.mask.to_full()
    distance = distance_mm(ctv, small_case.grid.spacing)
    seen = np.zeros(ctv.shape, int)
    for s in shells:
        m = s.mask.to_full()
        lo = float(s.name[len(PREFIX):-2])
        assert not (m & ctv).any() and not (m & ~body).any()
        assert distance[m].min() > lo and limit_fraction(lo) < HOTSPOT_AIM
        seen += m
    assert seen.max() == 1  # disjoint
    assert (seen.astype(bool) == (body & (distance > band_edges()[1]))).all()  # the first shell is the Gap's
    objectives = falloff_objectives(case)
    assert [o.kind for o in objectives] == [K.DMAX] * len(shells)
    doses = [o.dose_gy for o in objectives]
    assert all(a > b for a, b in zip(doses, doses[1:])) and doses[-1] == pytest.approx(F_END * 60.0)
    again = falloff_regions(case, HOTSPOT_AIM)  # a previous run's shells are replaced, not doubled
    assert [s.name for s in again.structures] == [s.name for s in case.structures]
