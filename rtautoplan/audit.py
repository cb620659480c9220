"""The audit trail of a plan (SPEC §5.7) and its check: ``rtautoplan audit PLAN_LOG``.

``plan_log.json`` (``outputs.write_outputs``) carries, beside the decisions step by step:

* ``inputs``: the case folder and the SHA-256 of every file in it (``input_files``), and
  ``input_sha256``, the hash of the case as planned (``outputs.case_hash``);
* ``weights``: the trained planner's weights file, its SHA-256, its version (the file's name and the
  first 12 hex digits of its hash) and its training record (``weights_record``), for every ensemble
  member too;
* per step: the observation, the action as taken, μ(a|s), the uncertainty, the optimiser's
  convergence report, the safety verdict and its rule, and the clinician's override (suggest mode);
* ``log_sha256``: the SHA-256 of the log's own content without this key (``seal``), so an edit of
  the trail is detected.

``verify(log_path, case_dir=None)`` re-hashes the log, the input files (the logged folder, or
``case_dir`` when the case has moved) and the weights, and returns what differs; the command prints the
decision trail and exits 4 on any mismatch (``EXIT_MISMATCH``).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtautoplan.errors import InputError

EXIT_MISMATCH = 4
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # where the committed weights' relative paths start


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def jsonable(value: Any, digits: int = 6) -> Any:
    """An observation or action as JSON: arrays as (nested) lists rounded to ``digits``, dicts per key."""
    if isinstance(value, dict):
        return {str(k): jsonable(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, digits) for v in value]
    if value is None or isinstance(value, (str, bool)):
        return value
    array = np.asarray(value)
    if array.dtype.kind in "iub":
        return array.tolist()
    if array.dtype.kind == "f":
        return np.round(array.astype(float), digits).tolist() if array.ndim else _finite(round(float(array), digits))
    return str(value)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _relative(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(PACKAGE_ROOT)) if path.is_relative_to(PACKAGE_ROOT) else str(path)


def weights_record(policy) -> dict | None:
    """The weights a trained planner was loaded from (``weights_path``): file, SHA-256, version and
    its training record's hash; None for a planner without weights (rule-based, random)."""
    path = getattr(policy, "weights_path", None)
    if path is None:
        return None
    path = Path(path)
    digest = sha256_file(path)
    record = path.with_suffix(".json")
    return {"policy": getattr(policy, "name", ""), "file": _relative(path), "sha256": digest,
            "version": f"{path.stem}@{digest[:12]}",
            "record": _relative(record) if record.exists() else None,
            "record_sha256": sha256_file(record) if record.exists() else None}


def input_files(case_dir: str | Path) -> dict:
    """The case folder (absolute) and the SHA-256 of every file below it (relative path → hash)."""
    root = Path(case_dir).resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {"folder": str(root), "files": {str(p.relative_to(root)): sha256_file(p) for p in files}}


def _digest(log: dict) -> str:
    body = {k: v for k, v in log.items() if k != "log_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal(log: dict) -> dict:
    """``log`` with ``log_sha256``: the hash of its own content (canonical JSON, without this key)."""
    return {**log, "log_sha256": _digest(log)}


@dataclass(frozen=True)
class Check:
    """One verified item: what, whether it matches, and the detail (expected vs found)."""

    item: str
    ok: bool
    detail: str = ""


def read_log(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "plan_log.json"
    try:
        log = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(str(path), "does not exist", "Give the plan_log.json of a plan (or its output folder)")
    except (OSError, ValueError) as error:
        raise InputError(str(path), f"is not a readable JSON plan log ({type(error).__name__})",
                         "Give the plan_log.json written by rtautoplan plan") from None
    if not isinstance(log, dict) or "steps" not in log:
        raise InputError(str(path), "is not a plan log (no \"steps\")", "Give the plan_log.json written by rtautoplan")
    return log


def verify(log_path: str | Path, case_dir: str | Path | None = None) -> tuple[dict, list[Check]]:
    """(the log, its checks): the log's own hash, every input file, every weights file."""
    log = read_log(log_path)
    checks = []
    if "log_sha256" in log:
        checks.append(Check("plan log content", log["log_sha256"] == _digest(log),
                            "" if log["log_sha256"] == _digest(log) else "edited after it was written"))
    else:
        checks.append(Check("plan log content", False, "no log_sha256: written by an older rtautoplan or edited"))
    inputs = log.get("inputs") or {}
    folder = Path(case_dir) if case_dir is not None else Path(inputs.get("folder", ""))
    logged = inputs.get("files", {})
    if not logged:
        checks.append(Check("input files", False, "the log lists no input files"))
    elif not folder.is_dir():
        checks.append(Check(f"input folder {folder}", False, "not found; give the case folder with --case"))
    else:
        found = input_files(folder)["files"]
        differ = []
        for name in sorted(set(logged) | set(found)):
            expected, now = logged.get(name), found.get(name)
            detail = "missing" if now is None else "not in the log (added)" if expected is None else \
                "" if now == expected else f"SHA-256 {now[:12]}…, logged {expected[:12]}…"
            if detail:
                differ.append(Check(f"input {name}", False, detail))
        checks.extend(differ or [Check(f"input files ({len(logged)} in {folder})", True)])
    for w in log.get("weights") or []:
        path = Path(w["file"]) if Path(w["file"]).is_absolute() else PACKAGE_ROOT / w["file"]
        if not path.is_file():
            checks.append(Check(f"weights {w['file']}", False, "missing"))
            continue
        now = sha256_file(path)
        checks.append(Check(f"weights {w['file']} ({w['version']})", now == w["sha256"],
                            "" if now == w["sha256"] else f"SHA-256 {now[:12]}…, logged {w['sha256'][:12]}…"))
    return log, checks


def trail(log: dict) -> list[str]:
    """The decision trail, one line per attempt: step, action, μ, verdict (rule), score, flags, override."""
    lines = [f"case {log.get('case')}: policy {log.get('policy')}, {log.get('scoring')} "
             f"{log.get('initial score')} → {log.get('final score')} (best step {log.get('best step')})"]
    for s in log["steps"]:
        verdict = "accepted" if s.get("accepted") else f"REJECTED [{s.get('rule') or 'rule'}] {s.get('reason', '')}"
        mu = s.get("mu")
        flags = (s.get("uncertainty") or {}).get("flags") or []
        conv = s.get("convergence") or {}
        lines.append(f"  step {s['step']:>2}: {s['action']:<14} μ={'–' if mu is None else f'{mu:.3f}'} "
                     f"score {s.get('score', float('nan')):.4g}  {verdict}"
                     + (f"  [{', '.join(flags)}]" if flags else "")
                     + (f"  optimiser {conv.get('iterations')} it{'' if conv.get('converged') else ', not converged'}"
                        if conv else "")
                     + (f"  clinician: {s['override']}" if s.get("override") else ""))
    safety = log.get("safety") or {}
    if safety:
        lines.append(f"safety: {safety.get('rejected', 0)} of {safety.get('attempts', 0)} attempts rejected "
                     f"(rate {safety.get('rate', 0):.1%})")
    return lines
