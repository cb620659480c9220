"""PHOENIX-like carbon-ion TPS simulator with a vendor-style API (see README.md in this folder).

    from rtautoplan.adapters.phoenix_api import PhoenixServer, FieldSpec
    with PhoenixServer(workers=4) as server:
        s = server.connect("physicist")
        pat = s.import_patient("/data/HN01")
        plan = s.create_plan(pat, "IMCT", fields=[FieldSpec(45), FieldSpec(315)], prescription_gy=70, fractions=35)
        s.add_objective(plan, "CTV_7000", "Min", obj_value=69.0, weight=100)
        job = s.submit_optimization(plan, max_iterations=200)
        s.wait(job, timeout_s=600)
        rbe_dose = s.get_dose(plan, kind="RBE")
"""

from rtautoplan.adapters.phoenix_api.errors import CODES, PhoenixError
from rtautoplan.adapters.phoenix_api.records import (DEFAULT_FIELDS, FieldSpec, JobStatus, ObjectiveInfo, PlanInfo,
                                                     RoiInfo)
from rtautoplan.adapters.phoenix_api.server import PhoenixServer
from rtautoplan.adapters.phoenix_api.session import Session

__all__ = ["CODES", "DEFAULT_FIELDS", "FieldSpec", "JobStatus", "ObjectiveInfo", "PhoenixError", "PhoenixServer",
           "PlanInfo", "RoiInfo", "Session"]
