"""One case folder in, one output folder out: the unit every shell (``plan``, batch, hook, node) runs.

``plan_folder(case_dir, out, options)`` is ``read_case → plan_case → write_outputs``.

Outputs are whole-folder atomic (``write_folder``): everything is written into a hidden sibling
``.<name>.partial-<pid>-<token>``, the completion marker ``.rtautoplan-complete.json`` last, every
file and the folder are fsynced, then the folder is renamed into place (an old output is renamed
aside to ``.<name>.old-…`` first, then removed). So ``out`` is either the old output, the new one,
or absent, never a mix of both; ``is_finished(out)`` (the marker) is the only test of a finished
output. Temporary folders left by a crash are removed by the next write next to them
(``clean_stale``). Result UIDs are derived from the input content and the options
(``uid_seed``): the same input planned with the same options gives the same UIDs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

from rtautoplan.adapters import ADAPTERS
from rtautoplan.audit import input_files
from rtautoplan.case import Case
from rtautoplan.dicom.read import read_case
from rtautoplan.errors import InputError
from rtautoplan.outputs import LOG_FILE, case_hash, write_outputs
from rtautoplan.pipeline import MODALITIES, SITES, choose_site, plan_case, setup_for, tps_with_options
from rtautoplan.plan import Result, Step
from rtautoplan.policies import POLICIES

log = logging.getLogger(__name__)

MARKER = ".rtautoplan-complete.json"  # written last inside the temporary folder: the output is finished
_TEMP = re.compile(r"\.(?P<name>.+)\.(?:partial|old)-(?P<pid>\d+)-(?P<token>[0-9a-f]+)")
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]  # a pid means something on its own host only


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
    conservative: int | None = None  # K of conservative mode (rtautoplan.oversight); None: off

    def __post_init__(self):
        checks = (("site", self.site is None or self.site in SITES, ", ".join(SITES)),
                  ("modality", self.modality in MODALITIES, ", ".join(MODALITIES)),
                  ("adapter", self.adapter is None or self.adapter in ADAPTERS, ", ".join(sorted(ADAPTERS))),
                  ("policy", self.policy is None or self.policy in POLICIES, ", ".join(sorted(POLICIES))),
                  ("unknown_rois", self.unknown_rois in ("error", "keep"), "error, keep"))
        for name, ok, known in checks:
            if not ok:
                raise InputError(name, f"{getattr(self, name)!r} is not known", f"Use one of: {known}")
        if self.conservative is not None and self.conservative < 1:
            raise InputError("conservative", f"K = {self.conservative} allows no action", "Give K ≥ 1")
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


def options_fingerprint(options: PlanOptions) -> str:
    """The options that change a plan, as text (the TPS factory by its name): part of the UID seed."""
    values = {f.name: getattr(options, f.name) for f in fields(options) if f.name != "tps"}
    tps = options.tps
    values["tps"] = None if tps is None else getattr(tps, "__qualname__", type(tps).__name__)
    return repr(sorted(values.items()))


def _site_setup(case, options: PlanOptions):
    """(site, how it was chosen, its setup). A site read from the ROIs that has no setup for the modality
    (a prostate for protons) falls back to generic, said in the reason; one the user named stops."""
    site, reason = choose_site(case, options.site)
    try:
        return site, reason, setup_for(site, options.modality, options.policy)
    except ValueError as error:
        if options.site or case.prescription.site or site == "generic":
            raise InputError("site/modality", str(error), "Choose a site and modality from that list") from None
    generic, _, setup = _site_setup(case, replace(options, site="generic"))
    return generic, f"{reason}, but {site} has no {options.modality} setup", setup


def plan_folder(case_dir: str | Path, out: str | Path, options: PlanOptions,
                on_step: Callable[[Step], None] | None = None, uid_seed: str | None = None,
                marker: dict | None = None) -> Planned:
    """read_case → plan_case → write_outputs for one folder; outputs land in ``out`` complete or not at all.

    ``uid_seed`` (default: a hash of the case's content, its DICOM identities and the options) makes the
    result UIDs reproducible; ``marker`` is added to the completion marker (the node stores its input hash)."""
    start = time.perf_counter()
    out = Path(out)
    check_output(out)
    case = read_case(case_dir, unknown_rois=options.unknown_rois)
    if uid_seed is None:
        uid_seed = hashlib.sha256(f"{case_hash(case)}|{case.refs!r}|{options_fingerprint(options)}".encode()).hexdigest()
    site, reason, setup = _site_setup(case, options)
    log.info("%s: site %s (%s)", case.case_id, site, reason)
    if options.tps is not None:
        tps = options.tps()
    elif options.adapter_options:
        tps = tps_with_options(setup, options.adapter, options.adapter_options, options.modality)
    else:
        tps = None
    planned, result = plan_case(case, site=site, modality=options.modality, adapter=options.adapter,
                                policy=options.policy, max_steps=options.max_steps, seed=options.seed, tps=tps,
                                on_step=on_step, conservative=options.conservative)
    extra = {"site": site, "site chosen by": reason, "seed": options.seed, "inputs": input_files(case_dir)}
    done = {"uid_seed": uid_seed, "acceptable": bool(result.acceptable), **(marker or {})}
    files = write_folder(out, lambda tmp: write_outputs(planned, result, tmp, extra=extra, uid_seed=uid_seed), done)
    return Planned(site, result, files, time.perf_counter() - start, reason, planned)


def check_output(out: Path) -> None:
    """An output folder we can create or replace, else an InputError naming it (before any planning): not
    a file, writable, and empty or an earlier output (never a folder of other files: it is replaced whole)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"output folder {out}", "is a file", "Give a folder path (or move the file away)")
    if out.is_dir() and not is_finished(out) and not (out / LOG_FILE).is_file() and any(out.iterdir()):
        raise InputError(f"output folder {out}", "holds other files (it is replaced as a whole by the new outputs)",
                         "Give a new or empty folder, or one holding an earlier plan")
    parent = next((p for p in (out, *out.parents) if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"output folder {out}", f"cannot be written ({parent} is not a writable folder)",
                         "Give an output folder you may write to")


def is_finished(out: str | Path) -> bool:
    """True when ``out`` is an output that was written completely (it holds the completion marker)."""
    return (Path(out) / MARKER).is_file()


def read_marker(out: str | Path) -> dict:
    """The completion marker of a finished output ({} if there is none or it is unreadable)."""
    try:
        return json.loads((Path(out) / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(parent: Path, everything: bool = False) -> list[Path]:
    """Remove the temporary folders a crashed writer left in ``parent`` (``.<name>.partial-<pid>-…``,
    ``.<name>.old-<pid>-…`` and the ``.partial-*`` folders of older versions inside outputs) whose
    process is gone, or all of them with ``everything`` (the node, which owns its outbox). A folder written
    on another host (its token starts with that host's id: outputs on shared storage, rtautoplan.cluster) is
    left alone: its pid says nothing here."""
    removed = []
    if not parent.is_dir():
        return removed
    for path in parent.iterdir():
        match = _TEMP.fullmatch(path.name)
        here = match and (len(match["token"]) != 16 or match["token"][:8] == _HOST)  # not another host's writer
        stale = match and (everything or here and int(match["pid"]) != os.getpid() and not _alive(int(match["pid"])))
        legacy = [p for p in path.glob(".partial-*")] if path.is_dir() and not path.name.startswith(".") else []
        for victim in ([path] if stale else []) + legacy:
            shutil.rmtree(victim, ignore_errors=True)
            removed.append(victim)
            log.warning("removed %s (left by an interrupted run)", victim)
    return removed


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: so a rename or a new entry in it is on disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for dirpath, _dirs, filenames in os.walk(folder):
        for name in filenames:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


def write_folder(out: Path, write: Callable[[Path], dict[str, Path]], marker: dict) -> dict[str, Path]:
    """``write(tmp)`` into a temporary sibling of ``out``, add the completion marker, fsync, rename into
    place (module docstring); returns ``write``'s name → path mapped into ``out``. A file-system
    failure (permissions, a full disk, ``out`` a file) is an InputError naming ``out``."""
    out = Path(out).absolute()
    token = f"{os.getpid()}-{_HOST}{secrets.token_hex(4)}"  # 16 hex digits: host id, then random
    tmp, aside = out.parent / f".{out.name}.partial-{token}", out.parent / f".{out.name}.old-{token}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(out.parent)
        tmp.mkdir()
    except OSError as error:
        raise _output_error(out, error) from None
    try:
        written = write(tmp)
        (tmp / MARKER).write_text(json.dumps({**marker, "files": sorted(p.name for p in written.values()),
                                              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1))
        _fsync_tree(tmp)
        if out.is_symlink() or out.exists():
            if not out.is_dir() or out.is_symlink():
                raise InputError(f"output folder {out}", "is a file", "Give a folder path (or move the file away)")
            os.rename(out, aside)
        os.rename(tmp, out)
        fsync_path(out.parent)
    except OSError as error:
        raise _output_error(out, error) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(aside, ignore_errors=True)
    return {name: out / path.relative_to(tmp) for name, path in written.items()}


def _output_error(out: Path, error: OSError) -> InputError:
    return InputError(f"output folder {out}", f"cannot be written ({error.strerror or error})",
                      "Give an output folder you may write to, on a disk with free space")
