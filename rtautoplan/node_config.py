"""How a node is set up: ``NodeConfig``, and reading it from a TOML or JSON file (``--config``).

What: one frozen data class with every setting of the node (addresses, destination, access,
TLS, limits, retention, retries) and ``load_config(path)``, which turns a configuration file into
the keyword arguments of ``NodeConfig`` (unknown keys are an InputError naming them, so a typo is
not silently ignored). Why: a node a clinic leaves running is configured once, in a file that is
reviewed and versioned, not in a command line in a unit file.

File (TOML; JSON with the same structure works too)::

    aet = "RTAUTOPLAN"
    host = "127.0.0.1"              # bind address; 0.0.0.0 for every interface
    port = 11112
    workdir = "/var/lib/rtautoplan"
    quiet_s = 10                    # wait after the last object of a released study
    send_unacceptable = false
    retention_days = 30             # remove finished studies' incoming/ and outbox/ after
    [dest]                          # where plans go (leave out: outbox only)
    host = "10.0.0.5"
    port = 104
    aet = "TPS"
    [access]                        # empty lists: anyone
    calling_aets = ["CT_SIM", "TPS"]
    hosts = ["10.0.0.0/24", "127.0.0.1"]
    [tls]                           # leave out: no TLS
    cert = "/etc/rtautoplan/node.pem"
    key = "/etc/rtautoplan/node.key"
    ca = "/etc/rtautoplan/ca.pem"
    [limits]
    max_objects_per_study = 5000
    max_study_mb = 4096
    min_free_mb = 2048              # below this free disk, stores get 0xA700
    [send]
    attempts = 5
    backoff_s = 5                   # doubles per attempt
"""

from __future__ import annotations

import json

try:
    import tomllib
except ImportError:  # Python 3.10: JSON configuration files only
    tomllib = None
from dataclasses import dataclass, field, fields
from pathlib import Path

from rtautoplan.access import Access, Tls
from rtautoplan.errors import InputError
from rtautoplan.folder import PlanOptions


@dataclass(frozen=True)
class Destination:
    """Where plans are sent: a storage SCP's host, port and AE title (``tls``: send over TLS)."""

    host: str
    port: int
    aet: str
    tls: bool = False


@dataclass(frozen=True)
class NodeConfig:
    """aet/host/port: how the node is called (port 0: any free port, see ``Node.port``; host: the bind
    address, loopback by default); workdir holds journal.sqlite, incoming/ and outbox/; dest: where plans
    go (None: outbox only); plan: PlanOptions; require_called_aet: reject associations not addressed
    to ``aet``; send_unacceptable: also send plans that fail the clinical gate (default: hold them).
    quiet_s: a released study is planned when no object arrived for that long; replan_unchanged:
    plan (and send) a re-sent unchanged study again. access/tls: who may connect. Limits: objects
    and bytes per study, free disk below which stores are refused. retention_days: finished studies
    older than that are removed (0: kept). send_attempts/send_backoff_s: C-STORE retries (the wait
    doubles each time); max_plan_attempts: planning interrupted this often (a crash loop) fails."""

    aet: str = "RTAUTOPLAN"
    host: str = "127.0.0.1"
    port: int = 11112
    workdir: Path = Path("rtautoplan-node")
    dest: Destination | None = None
    plan: PlanOptions = field(default_factory=PlanOptions)
    require_called_aet: bool = True
    stop_timeout_s: float = 30.0
    send_unacceptable: bool = False
    quiet_s: float = 10.0
    replan_unchanged: bool = False
    access: Access = field(default_factory=Access)
    tls: Tls | None = None
    max_objects_per_study: int = 5000
    max_bytes_per_study: int = 4 << 30
    min_free_bytes: int = 1 << 30
    retention_days: float = 0.0
    send_attempts: int = 5
    send_backoff_s: float = 5.0
    max_plan_attempts: int = 3


_SECTIONS = {
    "dest": lambda v: Destination(str(v["host"]), int(v["port"]), str(v["aet"]), bool(v.get("tls", False))),
    "access": lambda v: Access(tuple(v.get("calling_aets", ())), tuple(v.get("hosts", ()))),
    "tls": lambda v: Tls(Path(v["cert"]), Path(v["key"]), Path(v["ca"]), bool(v.get("require_client_cert", True))),
}
_LIMITS = {"max_objects_per_study": ("max_objects_per_study", 1), "max_study_mb": ("max_bytes_per_study", 2**20),
           "min_free_mb": ("min_free_bytes", 2**20)}
_SEND = {"attempts": "send_attempts", "backoff_s": "send_backoff_s"}


def load_config(path: str | Path) -> dict:
    """The NodeConfig keyword arguments a TOML (``.toml``) or JSON file gives (module docstring)."""
    path = Path(path)
    try:
        text = path.read_text()
        if path.suffix != ".json" and tomllib is None:
            raise ValueError("TOML needs Python 3.11; give a .json file")
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as error:
        raise InputError(f"--config {path}", f"cannot be read ({error})", "Give a TOML or JSON node configuration") \
            from None
    plain = {f.name for f in fields(NodeConfig)} - {"plan", "dest", "access", "tls"}
    out: dict = {}
    try:
        for key, value in raw.items():
            if key in _SECTIONS:
                out[key] = _SECTIONS[key](value)
            elif key == "limits":
                for name, amount in value.items():
                    target, unit = _LIMITS[name]
                    out[target] = int(float(amount) * unit)
            elif key == "send":
                for name, amount in value.items():
                    out[_SEND[name]] = type(getattr(NodeConfig, _SEND[name]))(amount)
            elif key in plain:
                default = getattr(NodeConfig, key)
                out[key] = Path(value) if key == "workdir" else type(default)(value)
            else:
                raise KeyError(key)
    except KeyError as error:
        raise InputError(f"--config {path}", f"unknown or missing key {error}", "See docs/node.md for the keys") \
            from None
    except (TypeError, ValueError) as error:
        raise InputError(f"--config {path}", f"a value is wrong ({error})", "See docs/node.md for the keys") from None
    return out
