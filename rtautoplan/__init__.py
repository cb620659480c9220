"""rtautoplan: automatic radiotherapy treatment planning, DICOM-RT in and out.

The pipeline, one module per step::

    case = rtautoplan.dicom.read.read_case(folder)                 # CT + RTSTRUCT (+ prescription)
    case = rtautoplan.structures.rules.apply_rules(case, "hn")     # PTV / Gap / Ring, overlap rules
    objectives = rtautoplan.structures.objectives.objectives_for(case, rng)
    dij = rtautoplan.physics.dij.dij_cached(case, beams)            # dose influence, sparse
    x = rtautoplan.optimize.lbfgs.solve_lbfgs(plan_objective(...), x0).x
"""

from importlib import metadata

try:
    __version__ = metadata.version("rtautoplan")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
