"""JSON encodings of the PHOENIX wire API (``docs/phoenix_api.md``): arrays, patients and records.

* **array**: ``{"dtype": "float32", "shape": [k, j, i], "zlib_b64": …}``: the C-order bytes
  (little-endian), zlib-compressed, base64. Boolean masks travel as ``"bool"`` arrays packed 8 per
  byte (``np.packbits``).
* **patient**: the in-memory Case a client imports: grid, HU, every ROI with its mask (and the
  planning mask its objectives act on, when it differs), the prescription levels and fractions.
  Goals, normalisation and DICOM references stay with the client: the TPS plans, it does not report.

Decoding checks every field and raises ``PhoenixError(PHX-4002)`` naming the field, never
KeyError / TypeError.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import zlib

import numpy as np

from rtautoplan.adapters.phoenix_api import errors as E
from rtautoplan.adapters.phoenix_api.errors import PhoenixError
from rtautoplan.adapters.phoenix_api.records import FieldSpec
from rtautoplan.case import Case, DoseLevel, Grid, Prescription, Role, Structure

DTYPES = ("bool", "int16", "float32", "float64")
MAX_VOXELS = 512 * 512 * 400  # one CT of 400 slices of 512²


def bad(field: str, problem: str) -> PhoenixError:
    return PhoenixError(E.MALFORMED_REQUEST, f"{field}: {problem}")


def take(body, name: str, kind, where: str = "body", default=dataclasses.MISSING):
    """``body[name]`` checked to be of ``kind`` (a type or tuple; bool is never a number)."""
    if not isinstance(body, dict):
        raise bad(where, f"must be a JSON object, got {type(body).__name__}")
    if name not in body or body[name] is None:
        if default is not dataclasses.MISSING:
            return default
        raise bad(f"{where}.{name}", "required")
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    numeric = any(k in (int, float) for k in kinds)
    if (numeric and isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise bad(f"{where}.{name}", f"must be {names}, got {type(value).__name__} {value!r:.60}")
    if isinstance(value, float) and not np.isfinite(value):
        raise bad(f"{where}.{name}", "must be finite")
    return value


def encode_array(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    dtype = "bool" if a.dtype == bool else a.dtype.name
    if dtype not in DTYPES:
        raise ValueError(f"cannot encode dtype {a.dtype}")
    raw = np.packbits(a.ravel()).tobytes() if dtype == "bool" else a.astype(a.dtype.newbyteorder("<")).tobytes()
    return {"dtype": dtype, "shape": list(a.shape), "zlib_b64": base64.b64encode(zlib.compress(raw, 1)).decode()}


def decode_array(blob, where: str) -> np.ndarray:
    dtype = take(blob, "dtype", str, where)
    shape = take(blob, "shape", list, where)
    data = take(blob, "zlib_b64", str, where)
    if dtype not in DTYPES:
        raise bad(f"{where}.dtype", f"must be one of {list(DTYPES)}, got {dtype!r}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape) or len(shape) > 4:
        raise bad(f"{where}.shape", f"must be ≤ 4 non-negative integers, got {shape!r:.80}")
    n = int(np.prod(shape, dtype=np.int64))
    if n > MAX_VOXELS:
        raise bad(f"{where}.shape", f"{n} elements exceed the limit {MAX_VOXELS}")
    try:
        raw = zlib.decompress(base64.b64decode(data, validate=True), bufsize=n * 8 + 16)
    except (binascii.Error, ValueError, zlib.error) as error:
        raise bad(f"{where}.zlib_b64", f"not base64 zlib data ({error})") from None
    if dtype == "bool":
        if len(raw) != (n + 7) // 8:
            raise bad(where, f"{len(raw)} bytes for {n} packed booleans")
        return np.unpackbits(np.frombuffer(raw, np.uint8), count=n).astype(bool).reshape(shape)
    item = np.dtype(dtype).newbyteorder("<")
    if len(raw) != n * item.itemsize:
        raise bad(where, f"{len(raw)} bytes for {n} × {dtype}")
    return np.frombuffer(raw, item).astype(dtype).reshape(shape)


def encode_case(case: Case) -> dict:
    g = case.grid
    return {"case_id": case.case_id,
            "grid": {"origin": list(g.origin), "spacing": list(g.spacing), "shape": list(g.shape),
                     "orientation": list(g.orientation)},
            "hu": encode_array(case.hu.astype(np.int16)),
            "rois": [{"name": s.name, "role": s.role.value, "level": s.level, "rx_gy": s.rx_gy, "roi_name": s.roi_name,
                      "color": list(s.color), "mask": encode_array(s.mask),
                      "planning_mask": None if s.planning_mask is None else encode_array(s.planning_mask)}
                     for s in case.structures],
            "prescription": {"levels": [{"target": lv.target, "dose_gy": lv.dose_gy} for lv in case.prescription.levels],
                             "fractions": case.prescription.fractions}}


def _numbers(body, name: str, n: int, where: str) -> tuple[float, ...]:
    values = take(body, name, list, where)
    if len(values) != n or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                                   for v in values):
        raise bad(f"{where}.{name}", f"must be {n} finite numbers, got {values!r:.80}")
    return tuple(float(v) for v in values)


def decode_case(body) -> Case:
    where = "patient"
    gb = take(body, "grid", dict, where)
    shape = tuple(int(v) for v in _numbers(gb, "shape", 3, "patient.grid"))
    spacing = _numbers(gb, "spacing", 3, "patient.grid")
    if min(shape) < 1 or min(spacing) <= 0:
        raise bad("patient.grid", f"shape {shape} and spacing {spacing} must be positive")
    grid = Grid(_numbers(gb, "origin", 3, "patient.grid"), spacing, shape,
                _numbers(gb, "orientation", 6, "patient.grid") if "orientation" in gb else Grid.orientation)

    def volume(blob, name, dtype):
        a = decode_array(blob, name)
        if a.shape != shape or a.dtype != dtype:
            raise bad(name, f"must be a {dtype} array of the grid's shape {list(shape)}, got {a.dtype} {list(a.shape)}")
        return a

    hu = volume(take(body, "hu", dict, where), "patient.hu", np.int16)
    structures = []
    for i, r in enumerate(take(body, "rois", list, where)):
        at = f"patient.rois[{i}]"
        role = take(r, "role", str, at)
        if role not in Role.__members__:
            raise bad(f"{at}.role", f"must be one of {list(Role.__members__)}, got {role!r}")
        color = take(r, "color", list, at, [255, 0, 0])
        planning = r.get("planning_mask")
        structures.append(Structure(take(r, "name", str, at), volume(take(r, "mask", dict, at), f"{at}.mask", bool),
                                    Role(role), take(r, "level", int, at, None), take(r, "rx_gy", (int, float), at, None),
                                    take(r, "roi_name", str, at, ""), tuple(int(c) for c in color[:3]),
                                    None if planning is None else volume(planning, f"{at}.planning_mask", bool)))
    names = [s.name for s in structures]
    if len(set(names)) != len(names):
        raise bad("patient.rois", f"ROI names must be unique, got {names}")
    pb = take(body, "prescription", dict, where)
    levels = []
    for i, lv in enumerate(take(pb, "levels", list, "patient.prescription")):
        at = f"patient.prescription.levels[{i}]"
        levels.append(DoseLevel(take(lv, "target", str, at), float(take(lv, "dose_gy", (int, float), at))))
    if not levels:
        raise bad("patient.prescription.levels", "at least one level is required")
    fractions = take(pb, "fractions", int, "patient.prescription")
    return Case(take(body, "case_id", str, where, "imported"), grid, hu, tuple(structures),
                Prescription(tuple(levels), fractions))


def encode_field(f: FieldSpec) -> dict:
    return {"gantry_deg": f.gantry_deg, "couch_deg": f.couch_deg, "name": f.name}


def decode_fields(body, where: str = "body.fields") -> list[FieldSpec] | None:
    if body is None:
        return None
    if not isinstance(body, list):
        raise bad(where, f"must be a list of fields, got {type(body).__name__}")
    return [FieldSpec(float(take(f, "gantry_deg", (int, float), f"{where}[{i}]")),
                      float(take(f, "couch_deg", (int, float), f"{where}[{i}]", 0.0)),
                      take(f, "name", str, f"{where}[{i}]", ""))
            for i, f in enumerate(body)]


def record(obj) -> dict:
    """A frozen API record (``records``) as JSON (FieldSpec tuples as lists of objects)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, tuple) and v and isinstance(v[0], FieldSpec):
            v = [encode_field(x) for x in v]
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out
