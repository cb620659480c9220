"""Vendor-style error codes of the PHOENIX simulator.

Every failure the API reports is a ``PhoenixError`` carrying a stable code ``PHX-xxyy``: the
first two digits name the area (10 session, 11 patient, 20–23 plan, objectives and results, 30 jobs,
40 server and wire protocol), the last two the problem. Clients branch on ``error.code``, never on the message text.
"""

from __future__ import annotations

# code → short title (the README lists them with their meaning)
CODES: dict[str, str] = {
    "PHX-1001": "session closed",
    "PHX-1002": "unknown session",
    "PHX-1101": "patient import failed",
    "PHX-1102": "unknown patient",
    "PHX-2001": "unknown plan",
    "PHX-2002": "invalid plan definition",
    "PHX-2101": "unknown ROI",
    "PHX-2102": "unknown objective type",
    "PHX-2103": "parameter out of range",
    "PHX-2104": "unknown objective or parameter",
    "PHX-2201": "plan locked during optimisation",
    "PHX-2301": "no dose: the plan has not been optimised",
    "PHX-3001": "unknown job",
    "PHX-3002": "job failed",
    "PHX-3003": "timeout",
    "PHX-3004": "job cancelled",
    "PHX-3005": "worker process lost",
    "PHX-4001": "server shut down",
    "PHX-4002": "malformed request",
    "PHX-4003": "unknown endpoint",
    "PHX-4004": "internal server error",
}

SESSION_CLOSED = "PHX-1001"
UNKNOWN_SESSION = "PHX-1002"
IMPORT_FAILED = "PHX-1101"
UNKNOWN_PATIENT = "PHX-1102"
UNKNOWN_PLAN = "PHX-2001"
INVALID_PLAN = "PHX-2002"
UNKNOWN_ROI = "PHX-2101"
UNKNOWN_OBJECTIVE_TYPE = "PHX-2102"
OUT_OF_RANGE = "PHX-2103"
UNKNOWN_PARAMETER = "PHX-2104"
PLAN_LOCKED = "PHX-2201"
NO_DOSE = "PHX-2301"
UNKNOWN_JOB = "PHX-3001"
JOB_FAILED = "PHX-3002"
TIMEOUT = "PHX-3003"
CANCELLED = "PHX-3004"
WORKER_LOST = "PHX-3005"
SERVER_DOWN = "PHX-4001"
MALFORMED_REQUEST = "PHX-4002"
UNKNOWN_ENDPOINT = "PHX-4003"
INTERNAL_ERROR = "PHX-4004"

# codes that mean "the request was wrong" (a client maps them to ValueError); the rest are
# states of the system (RuntimeError)
REQUEST_ERRORS = frozenset({IMPORT_FAILED, UNKNOWN_PATIENT, UNKNOWN_PLAN, INVALID_PLAN, UNKNOWN_ROI,
                            UNKNOWN_OBJECTIVE_TYPE, OUT_OF_RANGE, UNKNOWN_PARAMETER, UNKNOWN_JOB,
                            UNKNOWN_SESSION, MALFORMED_REQUEST, UNKNOWN_ENDPOINT})


class PhoenixError(Exception):
    """A failure reported by the PHOENIX API: ``code`` (``PHX-xxyy``) and a message."""

    def __init__(self, code: str, message: str):
        if code not in CODES:
            raise ValueError(f"unknown PHOENIX error code {code!r}")
        self.code = code
        self.message = message
        super().__init__(f"{code} ({CODES[code]}): {message}")

    def __reduce__(self):  # picklable across the worker pool
        return (PhoenixError, (self.code, self.message))
