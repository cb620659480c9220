"""The TPS scripting hook: plan a case folder from a TPS script, as a Python call or as JSON Lines.

A TPS script exports the case (CT series + RTSTRUCT) to a folder, asks for a plan and imports the
DICOM that comes back. Two ways in, one behaviour:

* Python: ``run_request(request) -> response``.
* A process: ``rtautoplan hook`` reads one request per line on stdin and writes one response per
  line on stdout (JSON Lines), in order, until stdin ends; it exits 0. Blank lines are ignored.
  A line that is not JSON, not an object, or not a valid request gets an error response and the
  hook goes on with the next line. stdout carries nothing but responses; progress and logs go to
  stderr. Whatever a line holds (nesting deep enough to exhaust the recursion limit, a line too long
  to hold, bytes that are not UTF-8), it gets exactly one response: every exception while handling a
  line becomes an error response. Lines longer than ``MAX_LINE_BYTES`` are answered unread.

Request (a JSON object; paths relative to the hook's working directory)::

    {"case": "export/pat1", "output": "plans/pat1",              required: folders
     "site": "prostate", "modality": "photon", "adapter": "inhouse-photon",
     "policy": "rule-based", "max_steps": 20, "seed": 0}          optional: as ``rtautoplan plan``

Suggest mode (``rtautoplan.suggest``; the protocol's JSON Schema, versioned: ``docs/hook.schema.json``)::

    {"mode": "suggest", "case": …, "output": …, "k": 3}           open a session → {"status": "suggest",
                                                                  "session": id, "suggestions": [...], …}
    {"session": id, "decision": "accept" | "edit" | "reject", "index": 0, "action": "t_rec-"}
    {"session": id, "decision": "finish"}                         → the plan response below, with "overrides"

Responses::

    {"status": "ok", "files": {"rtstruct": path, "plan": path, "rtdose": path, "report": path,
     "log": path}, "score": {"system": "proknow9", "initial": 5.0, "final": 8.0}, "steps": 20,
     "acceptable": true, "reasons": [], "warnings": [...], "goals": [{"roi": …, "metric": …, "value": …, "met": …}]}
    {"status": "unacceptable", ...the same keys, "acceptable": false, "reasons": ["goal SpinalCord D0.03cc ≤ 50 Gy
     not met: 51.20", ...]}   the plan was written but fails the clinical gate (``rtautoplan.gate``)
    {"status": "error", "error": "<one line: where, what, the fix>", "kind": "input" | "internal"}

``kind`` is "input" when the request or the case is wrong (the message says what to change; this
includes file-system and encoding problems: an output folder that cannot be written or is a file,
a file name that cannot be encoded) and "internal" for a fault of ours (report it; the traceback is logged to stderr with ``--debug``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

from rtautoplan.folder import PlanOptions, plan_folder
from rtautoplan.errors import InputError
from rtautoplan.plan import Step

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 1 << 20  # a request is a few hundred bytes; a longer line is answered without parsing it

# request key → (accepted JSON type, required); bool is rejected where a number is asked for
REQUEST_KEYS: dict[str, tuple[type, bool]] = {
    "case": (str, True), "output": (str, True), "site": (str, False), "modality": (str, False),
    "adapter": (str, False), "policy": (str, False), "max_steps": (int, False), "seed": (int, False),
    "unknown_rois": (str, False), "conservative": (int, False), "mode": (str, False), "k": (int, False),
}
MODES = ("autonomous", "suggest")  # "suggest": rtautoplan.suggest (its follow-ups carry "session" instead)
_TYPE_NAMES = {str: "a non-empty string", int: "an integer"}


def _parse(request: object, defaults: PlanOptions) -> tuple[str, str, PlanOptions]:
    """(case folder, output folder, options) from a request, or an InputError naming the key."""
    allowed = ", ".join(REQUEST_KEYS)
    if not isinstance(request, dict):
        raise InputError("request", f"is {type(request).__name__}, not a JSON object",
                         f'Send an object such as {{"case": "...", "output": "..."}} (keys: {allowed})')
    unknown = sorted(set(request) - set(REQUEST_KEYS))
    if unknown:
        raise InputError("request", f"unknown key(s) {', '.join(map(repr, unknown))}", f"Use only: {allowed}")
    for key, (kind, required) in REQUEST_KEYS.items():
        value = request.get(key)
        if value is None:
            if required:
                raise InputError("request", f"{key!r} is missing", f"Give {key!r} as a folder path")
            continue
        if not isinstance(value, kind) or isinstance(value, bool) or value == "":
            raise InputError(f"request key {key!r}", f"{value!r} is not {_TYPE_NAMES[kind]}",
                             f"Give {key!r} as {_TYPE_NAMES[kind]}")
    for key in ("case", "output"):
        if "\x00" in request[key] or len(request[key]) > 4096:
            raise InputError(f"request key {key!r}", "is not a usable path (a NUL character, or too long)",
                             f"Give {key!r} as a folder path")
    if Path(request["output"]).resolve().is_relative_to(Path(request["case"]).resolve()):
        raise InputError("request key 'output'", "is the case folder or inside it (the outputs would become part "
                         "of the case)", "Give an output folder outside the case folder")
    if request.get("mode", "autonomous") not in MODES:
        raise InputError("request key 'mode'", f"{request['mode']!r} is not a mode", f"Use one of {', '.join(MODES)}")
    if "k" in request and request.get("mode") != "suggest":
        raise InputError("request key 'k'", "is for suggest mode only", 'Add "mode": "suggest", or leave "k" out')
    given = {k: v for k, v in request.items() if k not in ("case", "output", "mode", "k") and v is not None}
    try:
        options = replace(defaults, **given)
    except InputError as error:
        raise InputError(f"request key {error.where!r}", error.problem, error.fix) from None
    return request["case"], request["output"], options


def _log_step(step: Step) -> None:
    log.info("step %d: %s → score %.4g%s", step.step, step.action, step.score,
             "" if step.accepted else f" (rejected: {step.reason})")


def _error(message: str, kind: str) -> dict:
    return {"status": "error", "error": " ".join(message.split()), "kind": kind}


def run_request(request: dict, defaults: PlanOptions | None = None) -> dict:
    """Plan the request's case into its output folder; never raises for a bad request or case.
    ``defaults``: options (and the TPS factory) for whatever the request leaves out. A request with
    ``"mode": "suggest"``, or a follow-up naming a ``"session"``, is suggest mode (``rtautoplan.suggest``)."""
    defaults = defaults or PlanOptions()
    if isinstance(request, dict) and (request.get("mode") == "suggest" or "session" in request):
        from rtautoplan import suggest

        return _guarded(lambda: suggest.answer(request, defaults, lambda r: _parse(r, defaults)), request)

    def plan() -> dict:
        case, output, options = _parse(request, defaults)
        log.info("planning %s → %s", case, output)
        planned = plan_folder(case, output, options, on_step=_log_step)
        return response(planned.result, planned.files)

    return _guarded(plan, request)


def _guarded(work: Callable[[], dict], request) -> dict:
    """``work()``, with every failure turned into an error response (never raises for a bad request)."""
    try:
        return work()
    except InputError as error:
        return _error(str(error), "input")
    except (OSError, UnicodeError) as error:  # the file system or a file name: the request's paths
        where = getattr(error, "filename", None) or "a path of the request"
        return _error(f"{where}: {type(error).__name__}: {getattr(error, 'strerror', None) or error}. Give folders "
                      "that exist and may be written, with names the file system can hold", "input")
    except Exception as error:  # hook boundary: a fault becomes an error response, never a dead hook
        log.debug("internal error on request %r", request, exc_info=True)
        log.error("internal error: %s: %s", type(error).__name__, error)
        return _error(f"{type(error).__name__}: {error}", "internal")


def response(r, files: dict) -> dict:
    """The response for a written plan (``Result``, name → path): ok or unacceptable, with the gate's goals."""
    gate = r.gate.as_json()
    return {"status": "ok" if r.acceptable else "unacceptable",
            "files": {name: str(path) for name, path in files.items()},
            "score": {"system": r.score.system, "initial": float(r.initial_score.total), "final": float(r.score.total)},
            "steps": r.n_steps, "acceptable": gate["acceptable"], "reasons": gate["reasons"],
            "warnings": gate["warnings"], "goals": gate["goals"]}


class TooLong(str):
    """A line longer than ``MAX_LINE_BYTES``, not read (what ``_bounded_lines`` yields in its place)."""


def answer(line: str | bytes, defaults: PlanOptions | None = None) -> dict:
    """The response to one line of the JSON Lines protocol; never raises."""
    if isinstance(line, TooLong):
        return _error(f"request: the line is longer than {MAX_LINE_BYTES} bytes. Send one short JSON object per "
                      "line", "input")
    try:
        request = json.loads(line)
    except (ValueError, RecursionError, MemoryError) as error:  # JSONDecodeError, UnicodeDecodeError, deep nesting
        detail = "nested too deeply" if isinstance(error, RecursionError) else str(error)[:200]
        return _error(f"request: not JSON ({type(error).__name__}: {detail}). Send one JSON object per line", "input")
    except Exception as error:  # protocol boundary: any line gets a response
        return _error(f"request: not readable ({type(error).__name__}). Send one JSON object per line", "input")
    try:
        return run_request(request, defaults)
    except BaseException as error:  # RecursionError/MemoryError escaping run_request's own handlers
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        return _error(f"{type(error).__name__} while handling the request", "internal")


def serve(lines: Iterable[str], write: Callable[[str], None], defaults: PlanOptions | None = None) -> int:
    """Answer every non-blank line of ``lines`` with one JSON line passed to ``write``; returns
    how many requests were answered."""
    answered = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            response = json.dumps(answer(line, defaults))
        except Exception as error:  # a response that cannot be encoded still answers the line
            response = json.dumps(_error(f"{type(error).__name__} while encoding the response", "internal"))
        write(response + "\n")
        answered += 1
    return answered


def _bounded_lines(stream: io.BufferedIOBase) -> Iterable[str]:
    """The lines of a byte stream decoded as UTF-8 (bad bytes replaced); a line over
    ``MAX_LINE_BYTES`` is skipped to its end and yielded as ``TooLong``, so no line exhausts memory."""
    while True:
        raw = stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while (rest := stream.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
            yield TooLong("x")
            continue
        yield raw.decode("utf-8", errors="replace")


def serve_stdio(defaults: PlanOptions | None = None) -> int:
    """``serve`` on this process's stdin and stdout until stdin ends. stdout's file descriptor is kept
    for the responses and fd 1 pointed at stderr meanwhile, so nothing else (a library, a C
    extension) can write to stdout and break the protocol."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with os.fdopen(os.dup(saved), "w", encoding="utf-8") as responses:
            def write(line: str) -> None:
                responses.write(line)
                responses.flush()

            return serve(_bounded_lines(sys.stdin.buffer), write, defaults)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
