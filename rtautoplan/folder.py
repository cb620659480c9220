"""One case folder in, one output folder out: the unit every shell (``plan``, batch, hook, node) runs.

``plan_folder(case_dir, out, options)`` is ``read_case → plan_case → write_outputs``. Outputs are
written to a hidden partial folder and moved into place file by file with ``plan_log.json`` last,
so a crash never leaves a half-written output that looks finished.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rtautoplan.adapters import ADAPTERS
from rtautoplan.case import Case
from rtautoplan.dicom.read import read_case
from rtautoplan.errors import InputError
from rtautoplan.outputs import LOG_FILE, write_outputs
from rtautoplan.pipeline import MODALITIES, SITES, choose_site, plan_case, setup_for, tps_with_options
from rtautoplan.plan import Result, Step
from rtautoplan.policies import POLICIES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanOptions:
    """How a shell plans each case: the ``plan`` command's options, plus the TPS to use.

    ``tps`` is a zero-argument factory giving a fresh TPS per case (a TPS holds one case's state,
    so the shells never share an instance); tests pass a coarse in-house engine. Without it,
    ``adapter_options`` (e.g. ``{"dose_grid_factor": (2, 4, 4)}``) are passed to the adapter.
    """

    site: str | None = None  # None: prescription.json's, else from the ROIs (pipeline.choose_site)
    modality: str = "photon"
    adapter: str | None = None
    policy: str | None = None
    max_steps: int | None = None
    seed: int = 0
    tps: Callable[[], object] | None = None
    adapter_options: dict = field(default_factory=dict)
    unknown_rois: str = "error"  # read_case: "error" stops on a ROI name with no TG-263 match, "keep" keeps it unplanned

    def __post_init__(self):
        checks = (("site", self.site is None or self.site in SITES, ", ".join(SITES)),
                  ("modality", self.modality in MODALITIES, ", ".join(MODALITIES)),
                  ("adapter", self.adapter is None or self.adapter in ADAPTERS, ", ".join(sorted(ADAPTERS))),
                  ("policy", self.policy is None or self.policy in POLICIES, ", ".join(sorted(POLICIES))),
                  ("unknown_rois", self.unknown_rois in ("error", "keep"), "error, keep"))
        for name, ok, known in checks:
            if not ok:
                raise InputError(name, f"{getattr(self, name)!r} is not known", f"Use one of: {known}")
        if self.max_steps is not None and self.max_steps < 0:
            raise InputError("max_steps", f"{self.max_steps} is not a number of steps",
                             "Give 0 (the initial plan) or more")


@dataclass(frozen=True, eq=False)
class Planned:
    """One planned folder: the site used and why, the Result, the files written (name → path), wall
    time (s), and the planned case (with its planning structures)."""

    site: str
    result: Result
    files: dict[str, Path]
    seconds: float
    site_reason: str = ""
    case: Case | None = None

    @property
    def acceptable(self) -> bool:
        return self.result.acceptable


def plan_folder(case_dir: str | Path, out: str | Path, options: PlanOptions,
                on_step: Callable[[Step], None] | None = None) -> Planned:
    """read_case → plan_case → write_outputs for one folder; outputs land in ``out`` complete or not at all."""
    start = time.perf_counter()
    case = read_case(case_dir, unknown_rois=options.unknown_rois)
    site, reason = choose_site(case, options.site)
    log.info("%s: site %s (%s)", case.case_id, site, reason)
    try:
        setup = setup_for(site, options.modality, options.policy)
    except ValueError as error:
        raise InputError("site/modality", str(error), "Choose a site and modality from that list") from None
    if options.tps is not None:
        tps = options.tps()
    elif options.adapter_options:
        tps = tps_with_options(setup, options.adapter, options.adapter_options, options.modality)
    else:
        tps = None
    planned, result = plan_case(case, site=site, modality=options.modality, adapter=options.adapter,
                                policy=options.policy, max_steps=options.max_steps, seed=options.seed, tps=tps,
                                on_step=on_step)
    files = _write_into_place(planned, result, Path(out), {"site": site, "site chosen by": reason,
                                                           "seed": options.seed})
    return Planned(site, result, files, time.perf_counter() - start, reason, planned)


def _write_into_place(case, result: Result, out: Path, extra: dict) -> dict[str, Path]:
    """write_outputs into a hidden partial folder inside ``out``, then move each file into ``out``
    with the log (the marker of a finished output) last; the partial folder never outlives the call."""
    out.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
    try:
        written = write_outputs(case, result, partial, extra=extra)
        for path in sorted(partial.iterdir(), key=lambda p: p.name == LOG_FILE):
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return {name: out / path.name for name, path in written.items()}
