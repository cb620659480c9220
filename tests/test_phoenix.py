"""The PHOENIX simulator (adapters/phoenix_api) and its TPS adapter (adapters/phoenix.py)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from rtautoplan.adapters import check_tps
from rtautoplan.adapters.phoenix import PhoenixAdapter
from rtautoplan.adapters.phoenix_api import FieldSpec, PhoenixError, PhoenixServer
from rtautoplan.case import Case, DoseLevel, Grid, Prescription, Role, Structure
from rtautoplan.plan import Objective, ObjectiveKind as K


def box_case(shape=(30, 60, 60), spacing=(3.0, 2.0, 2.0), radius=22.0, cube=False) -> Case:
    """A water box (HU 0) in air: a CTV at the centre (a sphere, or a cube of half-side ``radius``)
    and a cord-like OAR behind it; 60 Gy(RBE) in 20 fractions."""
    grid = Grid((0.0, 0.0, 0.0), spacing, shape)
    x, y, z = grid.centres()
    half = [(n - 1) * s / 2 for n, s in zip(shape[::-1], spacing[::-1])]
    x, y, z = np.broadcast_arrays(x - half[0], y - half[1], z - half[2])
    body = (np.abs(x) < half[0] - 4) & (np.abs(y) < half[1] - 4) & (np.abs(z) < half[2] - 1)
    if cube:
        ctv = (np.abs(x) <= radius) & (np.abs(y) <= radius) & (np.abs(z) <= radius)
    else:
        ctv = x**2 + y**2 + z**2 <= radius**2
    oar = (np.abs(x) <= 6) & (y > radius + 4) & (y < radius + 16) & (np.abs(z) < 20)
    structures = (Structure("External", body, Role.EXTERNAL), Structure("CTV", ctv, Role.CTV, rx_gy=60.0),
                  Structure("Cord", oar, Role.OAR))
    return Case("box", grid, np.where(body, 0, -1000).astype(np.int16), structures,
                Prescription((DoseLevel("CTV", 60.0),), 20))


def seed003_objectives(ctv: str, rx: float, oars=(("SpinalCord", 30.0), ("Esophagus", 30.0))) -> list[Objective]:
    """The CTV rows of Table A1 (Max, Min, Uniform, DVHmin) and one Max per OAR."""
    return [Objective(ctv, K.DMIN, 0.98 * rx, 10.0, adjustable=False),
            Objective(ctv, K.DMAX, 1.05 * rx, 10.0, adjustable=False),
            Objective(ctv, K.UNIFORM, rx, 1.0, adjustable=False),
            Objective(ctv, K.DVH_MIN, rx, 5.0, volume=0.95, adjustable=False),
            *(Objective(name, K.DMAX, dose, 1.0) for name, dose in oars)]


def add_box_objectives(session, plan):
    session.add_objective(plan, "CTV", "Min", obj_value=59.0, weight=10.0)
    session.add_objective(plan, "CTV", "Max", obj_value=62.0, weight=10.0)
    return session.add_objective(plan, "Cord", "Max", obj_value=20.0, weight=1.0)


@pytest.fixture(scope="module")
def server():
    with PhoenixServer(workers=2) as srv:
        yield srv


@pytest.fixture(scope="module")
def box_plan(server):
    """A session and a box-phantom plan with objectives (not yet optimised)."""
    s = server.connect("tester")
    plan = s.create_plan(s.import_patient(box_case()), "box")
    add_box_objectives(s, plan)
    return s, plan


# ---------------------------------------------------------------------------- the adapter


def test_phoenix_adapter_conforms(make_small_case, server):
    case = make_small_case()
    tps = PhoenixAdapter(server=server, max_iterations=150)
    check_tps(tps, case, seed003_objectives("CTV_6000", 60.0))
    plan = tps.plan()
    assert plan.dose.kind == "EFFECTIVE" and plan.modality.value == "carbon"
    assert [b.gantry_deg for b in plan.beams] == [45.0, 315.0]  # seed 003 default fields
    assert all(w.size > 0 for w in plan.weights)
    ctv = case.structure("CTV_6000").voxels
    dvh = tps.session.export_dvh(tps.plan_id, "CTV_6000")
    assert dvh[0] == (0.0, 100.0) and all(a[1] >= b[1] for a, b in zip(dvh, dvh[1:]))
    assert 55.0 < float(np.median(plan.dose.gy[ctv])) < 65.0


def test_adapter_translates_objectives_and_errors(make_small_case, server):
    case = make_small_case()
    tps = PhoenixAdapter(server=server, max_iterations=30)
    tps.prepare(case)
    with pytest.raises(ValueError, match="Dmean .*not in the PHOENIX catalogue"):
        tps.optimize([Objective("SpinalCord", K.DMEAN, 10.0)])
    with pytest.raises(ValueError, match="PHX-2101"):  # the vendor code survives the translation
        tps.optimize([Objective("NoSuchOrgan", K.DMAX, 10.0)])
    with pytest.raises(ValueError, match="PHX-2103"):
        tps.optimize([Objective("CTV_6000", K.DMIN, -5.0)])
    # DMEAN mapped to Max on request; the catalogue then has Min (CTV) and Max (cord)
    tps = PhoenixAdapter(server=server, max_iterations=30, unsupported="max")
    tps.prepare(case)
    tps.optimize([Objective("CTV_6000", K.DMIN, 59.0, 10.0), Objective("SpinalCord", K.DMEAN, 10.0)])
    assert [o.type for o in tps.session.list_objectives(tps.plan_id)] == ["Min", "Max"]


# ---------------------------------------------------------------------------- the API


def test_dicom_import_and_rois(small_case, server, tmp_path):
    from rtautoplan.dicom.read import write_case

    write_case(small_case, tmp_path / "case")
    s = server.connect("importer")
    uid = s.import_patient(tmp_path / "case")
    assert {r.name for r in s.list_rois(uid)} >= {"CTV_6000", "SpinalCord"}
    with pytest.raises(PhoenixError) as err:
        s.import_patient(tmp_path / "missing")
    assert err.value.code == "PHX-1101"
    s.close()
    with pytest.raises(PhoenixError) as err:
        s.list_rois(uid)
    assert err.value.code == "PHX-1001"


def test_parameter_validation(box_plan):
    s, plan = box_plan

    def code(call, *args, **kw):
        with pytest.raises(PhoenixError) as err:
            call(*args, **kw)
        return err.value.code

    assert code(s.add_objective, plan, "CTV", "Max", obj_value=-1.0, weight=1.0) == "PHX-2103"
    assert code(s.add_objective, plan, "CTV", "Max", obj_value=60.0, weight=1e6) == "PHX-2103"
    assert code(s.add_objective, plan, "CTV", "DVHmin", Dose=60.0, Volume=120.0, weight=1.0) == "PHX-2103"
    assert code(s.add_objective, plan, "CTV", "Max", obj_value=float("nan"), weight=1.0) == "PHX-2103"
    assert code(s.add_objective, plan, "Liver", "Max", obj_value=10.0, weight=1.0) == "PHX-2101"
    assert code(s.add_objective, plan, "CTV", "Mean", obj_value=10.0, weight=1.0) == "PHX-2102"
    assert code(s.add_objective, plan, "CTV", "Max", obj_value=10.0) == "PHX-2104"  # weight missing
    obj = s.list_objectives(plan)[-1].obj_id
    assert code(s.set_objective_parameter, obj, "obj_value", 1e4) == "PHX-2103"
    assert code(s.set_objective_parameter, obj, "Volume", 50.0) == "PHX-2104"  # not a Max parameter
    assert code(s.set_objective_parameter, "OBJ-nope", "weight", 1.0) == "PHX-2104"
    assert code(s.create_plan, s.plan_info(plan).patient_uid, "x", rbe_model="MKM") == "PHX-2002"
    assert code(s.get_dose, "PLN-nope") == "PHX-2001"
    assert code(s.job_status, "JOB-nope") == "PHX-3001"
    # a valid change is accepted and listed
    s.set_objective_parameter(obj, "obj_value", 18.0)
    assert s.list_objectives(plan)[-1].parameters == {"obj_value": 18.0, "weight": 1.0}


def test_job_timeout_lock_and_cancel(box_plan):
    s, plan = box_plan
    job = s.submit_optimization(plan, max_iterations=50_000, tolerance=0)
    with pytest.raises(PhoenixError) as err:
        s.wait(job, timeout_s=0.2)
    assert err.value.code == "PHX-3003"
    status = s.job_status(job)
    assert status.state in ("QUEUED", "RUNNING") and 0.0 <= status.progress < 1.0
    obj = s.list_objectives(plan)[0].obj_id
    for call, args in ((s.set_objective_parameter, (obj, "weight", 2.0)), (s.submit_optimization, (plan,))):
        with pytest.raises(PhoenixError) as err:
            call(*args)
        assert err.value.code == "PHX-2201"
    s.cancel(job)
    with pytest.raises(PhoenixError) as err:
        s.wait(job, timeout_s=30)
    assert err.value.code == "PHX-3004"
    assert s.job_status(job).state == "CANCELLED"
    s.set_objective_parameter(obj, "weight", 10.0)  # unlocked again


def test_a_failing_job_reports_its_error(tmp_path):
    """A job that raises inside the worker (here: the dose engine's data was damaged) is FAILED with
    the error; wait() raises PHX-3002."""
    with PhoenixServer(workers=1, store_dir=tmp_path) as srv:
        s = srv.connect("tester")
        plan = s.create_plan(s.import_patient(box_case(shape=(20, 40, 40), radius=12.0)), "broken")
        add_box_objectives(s, plan)
        for f in tmp_path.glob("dij-*.npz"):
            f.write_bytes(b"not a matrix")
        job = s.submit_optimization(plan, max_iterations=10)
        with pytest.raises(PhoenixError) as err:
            s.wait(job, timeout_s=60)
        assert err.value.code == "PHX-3002" and "corrupt" in err.value.message
        status = s.job_status(job)
        assert status.state == "FAILED" and "corrupt" in status.error and status.error_code == "PHX-3002"
        with pytest.raises(PhoenixError) as err:
            s.get_dose(plan)
        assert err.value.code == "PHX-2301"  # no dose, and the plan is unlocked
        s.set_objective_parameter(s.list_objectives(plan)[0].obj_id, "weight", 1.0)


# ---------------------------------------------------------------------------- physics


def test_carbon_sobp_rbe_exceeds_physical_and_rises_distally():
    """One anterior field (gantry 0, HFS: the beam runs along +y) on a cubic CTV in water, optimised
    to a uniform RBE-weighted dose: RBE-weighted > physical dose in the target, and the ratio rises
    from the proximal to the distal edge (the physical dose falls)."""
    case = box_case(shape=(24, 50, 30), spacing=(2.5, 2.0, 2.0), radius=12.0, cube=True)
    with PhoenixServer(workers=1) as srv:
        s = srv.connect("physicist")
        plan = s.create_plan(s.import_patient(case), "sobp", fields=[FieldSpec(0.0)])
        s.add_objective(plan, "CTV", "Uniform", obj_value=60.0, weight=1.0)
        s.wait(s.submit_optimization(plan, max_iterations=300), timeout_s=120)
        rbe_dose, phys = s.get_dose(plan, "RBE"), s.get_dose(plan, "PHYSICAL")
    ctv = case.structure("CTV").mask
    assert np.all(rbe_dose[ctv] > phys[ctv])
    rows = np.flatnonzero(ctv.any(axis=(0, 2)))  # j (y) rows crossing the CTV, proximal first
    inner = ctv[:, rows[0]]  # a y-slab of the cube

    def slab(array, j, margin=2):
        sel = inner.copy()
        sel[:margin], sel[-margin:] = False, False
        return array[:, j][sel & (np.abs(np.indices(sel.shape)[1] - sel.shape[1] / 2) < 4)].mean()

    ratio = [slab(rbe_dose, j) / slab(phys, j) for j in rows[1:-1]]
    assert 1.0 < ratio[0] < ratio[len(ratio) // 2] < ratio[-1]
    assert slab(phys, rows[-2]) < slab(phys, rows[1])  # the physical dose falls towards the distal edge
    assert np.median(rbe_dose[ctv]) == pytest.approx(60.0, rel=0.05)


def sib_case(shape=(24, 50, 50), spacing=(3.0, 2.0, 2.0)) -> Case:
    """A water box in air with two nested target levels, CTV_6000 (r 9 mm) inside CTV_5000 (r 17 mm),
    and a spinal cord behind them; 60 / 50 Gy(RBE) in 25 fractions."""
    grid = Grid((0.0, 0.0, 0.0), spacing, shape)
    x, y, z = grid.centres()
    half = [(n - 1) * s / 2 for n, s in zip(shape[::-1], spacing[::-1])]
    x, y, z = np.broadcast_arrays(x - half[0], y - half[1], z - half[2])
    body = (np.abs(x) < half[0] - 3) & (np.abs(y) < half[1] - 3) & (np.abs(z) < half[2] - 1)
    r2 = x**2 + (y + 4) ** 2 + z**2
    cord = (x**2 + (y - 26) ** 2 <= 5**2) & (np.abs(z) < 25)
    structures = (Structure("External", body, Role.EXTERNAL), Structure("CTV_6000", r2 <= 9.0**2, Role.CTV, rx_gy=60.0),
                  Structure("CTV_5000", r2 <= 17.0**2, Role.CTV, rx_gy=50.0), Structure("SpinalCord", cord, Role.OAR))
    return Case("sib", grid, np.where(body, 0, -1000).astype(np.int16), structures,
                Prescription((DoseLevel("CTV_6000", 60.0), DoseLevel("CTV_5000", 50.0)), 25))


def normalised(gy: np.ndarray, case: Case) -> np.ndarray:
    """The dose scaled so the highest-Rx CTV has D95 = Rx (the clinical normalisation of issue 12)."""
    from rtautoplan.dvh import d_percent

    top = max(case.by_role(Role.CTV), key=lambda s: s.rx_gy)
    return gy * top.rx_gy / d_percent(gy, top.mask, 95.0)


def test_carbon_sib_water_phantom_covers_every_level():
    """Seed 003's environment on two nested levels: spots over both CTVs, objectives at each level's
    Rx, and the first plan (midpoint parameters) already gives D98 ≥ 95 % of Rx on each CTV as
    drawn and nothing outside the targets above 107 % of Rx_max."""
    from rtautoplan.dvh import d98
    from rtautoplan.policies.env_carbon import CarbonHNEnv

    with PhoenixServer(workers=1) as srv:
        env = CarbonHNEnv(lambda: PhoenixAdapter(server=srv), case=sib_case(), max_steps=1)
        env.reset(seed=0)
        assert srv.connect("check").plan_info(env.tps.plan_id).target_rois == ("CTV_6000", "CTV_5000")
        case, gy = env.case, normalised(env.last_dose.gy, env.case)
    uniform = {o.structure: o.dose_gy for o in env.objectives if o.kind is K.UNIFORM}
    assert uniform == pytest.approx({"CTV_6000": 60.0, "CTV_5000": 50.0})
    for name in ("CTV_6000", "CTV_5000"):
        s = case.structure(name)
        assert d98(gy, s.mask) >= 0.95 * s.rx_gy, name
    targets = np.logical_or.reduce([s.mask for s in case.by_role(Role.CTV, Role.PTV)])
    assert gy[~targets].max() <= 1.07 * 60.0


def test_carbon_objective_points_see_the_reported_dose():
    """The optimiser's dose at a ROI's points is the dose ``get_dose`` reports on its CT voxels (every
    voxel, edges included: points at dose-grid centres left a carbon CTV's edge at 38 of 70 Gy(RBE)),
    and its gradient is that of its value."""
    from rtautoplan.adapters.phoenix_api import engine

    case = box_case(shape=(20, 40, 40), radius=10.0)
    model = engine.DoseGridModel.from_case(case, "CTV", 5.0)
    influence = engine.build_influence(model, [(45.0, 0.0), (315.0, 0.0)])
    terms = [engine.ObjectiveTerm("CTV", "Min", (("obj_value", 59.0), ("weight", 10.0))),
             engine.ObjectiveTerm("CTV", "DVHmin", (("Dose", 60.0), ("Volume", 95.0), ("weight", 5.0))),
             engine.ObjectiveTerm("Cord", "Max", (("obj_value", 5.0), ("weight", 1.0)))]
    problem = engine.Problem(influence, model.rois, terms, 20, 60.0)
    assert problem.slices["CTV"].stop == np.count_nonzero(case.structure("CTV").mask)  # every CT voxel
    rng = np.random.default_rng(0)
    w0 = engine.initial_weights(influence, model.rois["CTV"], 20, 60.0)
    w = w0 * rng.uniform(0.5, 1.5, w0.size)
    rbe_ct, _ = model.dose_on_ct((influence.d @ w).astype(np.float32), (influence.h @ w).astype(np.float32), 20)
    np.testing.assert_allclose(problem.rbe_dose(w)[problem.slices["CTV"]], rbe_ct.ravel()[model.rois["CTV"].flat],
                               rtol=1e-4)
    value, grad = problem(w)
    v = rng.normal(size=w.size) * w0
    numeric = (problem(w + 1e-4 * v)[0] - problem(w - 1e-4 * v)[0]) / 2e-4
    assert grad @ v == pytest.approx(numeric, rel=1e-5)


# ---------------------------------------------------------------------------- parallel


def test_parallel_jobs_match_serial(server):
    """Two plans with the same objectives, optimised at once, give the dose of a serial run."""
    s = server.connect("parallel")
    patient = s.import_patient(box_case(shape=(20, 40, 40), radius=12.0))
    plans = [s.create_plan(patient, f"p{i}") for i in range(3)]
    for p in plans:
        add_box_objectives(s, p)
    s.wait(s.submit_optimization(plans[0], max_iterations=60), timeout_s=120)
    jobs = [s.submit_optimization(p, max_iterations=60) for p in plans[1:]]
    for j in jobs:
        assert s.wait(j, timeout_s=120).state == "DONE"
    ref = s.get_dose(plans[0])
    for p in plans[1:]:
        np.testing.assert_allclose(s.get_dose(p), ref, rtol=1e-5, atol=1e-4)


def _spin(n=3_000_000):
    s = 0
    for i in range(n):
        s += i * i


def _two_cores_free() -> float:
    """Speed-up of 2 forked processes of pure Python over 1 (≈ 2 on an idle 2-core machine)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    times = []
    for n in (1, 2):
        t0 = time.perf_counter()
        procs = [ctx.Process(target=_spin) for _ in range(n)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        times.append(time.perf_counter() - t0)
    return 2.0 * times[0] / times[1]


@pytest.mark.slow  # a wall-time ratio: a benchmark's claim, kept out of the default run (flaky under load)
def test_four_jobs_in_parallel_beat_serial():
    """4 optimisations (each ≥ 0.2 s) submitted together on a 2-worker pool take < 0.8 × the time of
    the same 4 one after another. Skipped when the machine cannot run two processes at once right
    now (a pure-Python control gains < 1.6×: the wall time would measure the other load)."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs ≥ 2 cores")
    speedup = _two_cores_free()
    if speedup < 1.6:
        pytest.skip(f"machine busy: 2 pure-Python processes run only {speedup:.2f}× faster than 1")
    with PhoenixServer(workers=2) as srv:
        s = srv.connect("timer")
        patient = s.import_patient(box_case())
        plans = [s.create_plan(patient, f"p{i}") for i in range(8)]
        for p in plans:
            add_box_objectives(s, p)
        # warm up both workers (fork, first load of the dose data)
        for j in [s.submit_optimization(p, max_iterations=2) for p in plans[:2]]:
            s.wait(j, timeout_s=60)
        t0 = time.perf_counter()
        for p in plans[:4]:
            s.wait(s.submit_optimization(p, max_iterations=400, tolerance=0), timeout_s=300)
        serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        jobs = [s.submit_optimization(p, max_iterations=400, tolerance=0) for p in plans[4:]]
        for j in jobs:
            s.wait(j, timeout_s=300)
        parallel = time.perf_counter() - t0
    assert serial / 4 >= 0.2, f"jobs too short to time ({serial / 4:.2f} s)"
    assert parallel < 0.8 * serial, f"parallel {parallel:.1f} s vs serial {serial:.1f} s"
