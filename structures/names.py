"""TG-263 structure names: the canonical organ list, aliases, and target names with dose levels.

Every OAR the planning rules know is one row of ``ORGANS``: its TG-263 name, its priority
level (SPEC §2.4) and whether rule 9 gives it a Dmax or a Dmean objective (SPEC §2.5).
Lateral organs are listed once as ``Name_L``/``Name_R``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rtautoplan.case import Role


@dataclass(frozen=True)
class Organ:
    """An OAR as the planning rules see it. objective: "Dmax" or "Dmean" (rule 9)."""

    name: str
    level: int
    objective: str


_LATERAL = "_L/_R"

# (TG-263 name, priority level SPEC §2.4, rule-9 objective, aliases). Aliases are matched after
# normalisation (upper case, spaces/dashes to underscores, Left/Right/Lt/Rt/Li/Re to _L/_R).
_TABLE: tuple[tuple[str, int, str, tuple[str, ...]], ...] = (
    # level 1 (SPEC §2.4): critical serial organs, ranked above targets
    ("Brainstem", 1, "Dmax", ("BRAIN_STEM", "BRAINSTEM")),
    ("Brainstem_Core", 1, "Dmax", ("BRAINSTEM_CORE", "BRAIN_STEM_CORE")),
    ("SpinalCord", 1, "Dmax", ("SPINAL_CORD", "CORD", "MEDULLA", "MYELON", "MARK")),
    ("OpticChiasm", 1, "Dmax", ("CHIASM", "OPTIC_CHIASM", "CHIASMA", "CHIASMA_OPTICUM")),
    ("OpticNrv" + _LATERAL, 1, "Dmax", ("OPTIC_NERVE", "OPTICNERVE", "OPT", "N_OPTICUS", "OPTIC_N")),
    # level 3 (SPEC §2.4), Dmax by rule 9
    ("Bone_Mandible", 3, "Dmax", ("MANDIBLE", "MANDIBULA", "BONE_MANDIBLE")),
    ("BrachialPlex" + _LATERAL, 3, "Dmax", ("BRACHIAL_PLEXUS", "BRACHIALPLEXUS", "PLEXUS")),
    ("Brain", 3, "Dmax", ("BRAIN", "CEREBRUM", "GEHIRN")),
    ("Cochlea" + _LATERAL, 3, "Dmax", ("COCHLEA", "INNER_EAR", "INNEREAR", "EAR_INNER", "EAR_INTERNAL")),
    ("SpinalCanal", 3, "Dmax", ("SPINAL_CANAL", "CANAL_SPINAL")),
    ("Skin", 3, "Dmax", ("SKIN", "HAUT")),
    ("Eye" + _LATERAL, 3, "Dmax", ("EYE", "GLOBE", "BULBUS", "AUGE")),
    ("Pituitary", 3, "Dmax", ("PITUITARY", "HYPOPHYSIS", "HYPOPHYSE")),
    ("Lobe_Temporal" + _LATERAL, 3, "Dmax", ("TEMPORAL_LOBE", "TEMPORALLOBE", "LOBE_TEMPORAL", "TEMPLOBE")),
    ("Retina" + _LATERAL, 3, "Dmax", ("RETINA",)),
    ("Glottis", 3, "Dmax", ("VOCAL_CORDS", "VOCALCORDS", "CORDS_VOCAL", "GLOTTIS")),
    ("A_Carotid" + _LATERAL, 3, "Dmax", ("CAROTID", "A_CAROTID", "CAROTID_ARTERY")),
    # level 3, Dmean by rule 9 ("all the other OARs")
    ("Cavity_Oral", 3, "Dmean", ("ORAL_CAVITY", "ORALCAVITY", "CAVITY_ORAL", "MUNDHOEHLE")),
    ("Ear_IntMid" + _LATERAL, 3, "Dmean", ("EAR_INTMID", "MIDDLE_EAR", "EAR_MIDDLE")),
    ("Esophagus", 3, "Dmean", ("ESOPHAGUS", "OESOPHAGUS", "OESOPHAGUS_CERVICAL")),
    ("Glnd_Submand" + _LATERAL, 3, "Dmean", ("SUBMANDIBULAR", "SUBMANDIBULAR_GLAND", "GLAND_SUBMANDIBULAR", "SMG")),
    ("Glnd_Thyroid", 3, "Dmean", ("THYROID", "THYROID_GLAND", "GLAND_THYROID")),
    ("Larynx", 3, "Dmean", ("LARYNX", "LARYNX_GLOTTIC")),
    ("Lips", 3, "Dmean", ("LIPS", "LIP")),
    ("Lungs", 3, "Dmean", ("LUNGS", "LUNG_TOTAL", "LUNG")),
    ("Lung" + _LATERAL, 3, "Dmean", ("LUNG", "PULMO", "LUNGE")),
    ("Musc_Constrict", 3, "Dmean", ("CONSTRICTORS", "PHARYNGEAL_CONSTRICTORS", "MUSC_CONSTRICTOR", "PCM")),
    ("Parotid" + _LATERAL, 3, "Dmean", ("PAROTID", "PAROTIS", "PAROTID_GLAND")),
    ("Oropharynx", 3, "Dmean", ("OROPHARYNX",)),
    ("Glnd_Lacrimal" + _LATERAL, 3, "Dmean", ("LACRIMAL", "LACRIMAL_GLAND", "GLAND_LACRIMAL")),
    ("Lens" + _LATERAL, 3, "Dmean", ("LENS", "LINSE")),
    ("Cornea" + _LATERAL, 3, "Dmean", ("CORNEA",)),
    ("Nasopharynx", 3, "Dmean", ("NASOPHARYNX",)),
    ("Joint_TM" + _LATERAL, 3, "Dmean", ("TMJ", "TEMPOROMANDIBULAR_JOINT", "JOINT_TM")),
    # pelvis (seed 000) and liver (seed 002 §2.15): not in the H&N table, level 3, rule-9 default Dmean
    ("Bladder", 3, "Dmean", ("BLADDER", "BLASE", "URINARY_BLADDER")),
    ("Rectum", 3, "Dmean", ("RECTUM", "REKTUM")),
    ("Femur_Head" + _LATERAL, 3, "Dmean", ("FEMORAL_HEAD", "FEMUR_HEAD", "FEMURHEAD", "HEAD_FEMUR", "FEMUR")),
    ("Bowel", 3, "Dmean", ("BOWEL", "BOWEL_BAG", "BOWELBAG", "SMALL_BOWEL")),
    ("Liver", 3, "Dmean", ("LIVER", "LEBER")),
    ("Heart", 3, "Dmean", ("HEART", "HERZ")),
    ("Kidney" + _LATERAL, 3, "Dmean", ("KIDNEY", "NIERE")),
)

EXTERNAL_NAMES = ("EXTERNAL", "BODY", "OUTLINE", "PATIENT", "SKIN_SURFACE", "KOERPER", "AUSSENKONTUR")
EXTERNAL = "External"

# Names of ROIs that are not anatomy: kept and written back as Role.OTHER, never planned on.
NON_ANATOMICAL = ("COUCH", "COUCH_SURFACE", "COUCH_INTERIOR", "TABLE", "MARKER", "MARKERS", "BOLUS", "ISO",
                  "ISOCENTER", "ARTIFACT", "ARTEFACT", "REF_POINT", "FIDUCIAL", "FIDUCIALS", "CLIPS", "MASK")


# RTROIInterpretedType (PS3.3 C.8.8.8) → role. Anatomy types leave the structure to the name (many
# systems type every ROI ORGAN by default); the target types, EXTERNAL and every non-anatomical type
# decide the role. An empty or unlisted type says nothing.
ANATOMY_TYPES = frozenset({"ORGAN", "AVOIDANCE", "CAVITY"})
_TYPE_ROLES = {"EXTERNAL": Role.EXTERNAL, "PTV": Role.PTV, "CTV": Role.CTV, "GTV": Role.GTV,
               **{t: Role.OAR for t in ANATOMY_TYPES},
               **{t: Role.OTHER for t in ("TREATED_VOLUME", "IRRAD_VOLUME", "DOSE_REGION", "CONTROL", "SUPPORT",
                                          "FIXATION", "MARKER", "REGISTRATION", "ISOCENTER", "CONTRAST_AGENT",
                                          "BOLUS", "BRACHY_CHANNEL", "BRACHY_ACCESSORY", "BRACHY_SRC_APP",
                                          "BRACHY_CHNL_SHLD", "DOSE_MEASUREMENT")}}


def role_of_type(interpreted_type: str) -> Role | None:
    """The role an RTROIInterpretedType gives a ROI; None when it is empty or not a defined term."""
    return _TYPE_ROLES.get(interpreted_type.strip().upper())


def _expand() -> dict[str, Organ]:
    organs = {}
    for name, level, objective, _ in _TABLE:
        if name.endswith(_LATERAL):
            stem = name[: -len(_LATERAL)]
            for side in ("_L", "_R"):
                organs[stem + side] = Organ(stem + side, level, objective)
        else:
            organs[name] = Organ(name, level, objective)
    return organs


ORGANS: dict[str, Organ] = _expand()

_SIDE = re.compile(r"(?:^|_)(L|R|LT|RT|LEFT|RIGHT|LI|RE|LINKS|RECHTS|SIN|DX)$")
_SIDE_FIRST = re.compile(r"^(L|R|LT|RT|LEFT|RIGHT)_(?=.)")  # Eclipse's "Lt Lung", "Rt Kidney"
_SIDE_WORD = {"L": "_L", "LT": "_L", "LEFT": "_L", "LI": "_L", "LINKS": "_L", "SIN": "_L",
              "R": "_R", "RT": "_R", "RIGHT": "_R", "RE": "_R", "RECHTS": "_R", "DX": "_R"}


def _key(name: str) -> str:
    """Upper case, separators as single underscores."""
    return re.sub(r"[\s\-\.]+", "_", name.strip()).upper().strip("_")


def _aliases() -> dict[str, str]:
    table: dict[str, str] = {}
    for name, _, _, aliases in _TABLE:
        lateral = name.endswith(_LATERAL)
        stem = name[: -len(_LATERAL)] if lateral else name
        for alias in aliases + (_key(stem), _key(stem).replace("_", "")):
            if lateral:
                for side in ("_L", "_R"):
                    table[alias + side] = stem + side
            else:
                table[alias] = stem
    return table


_ALIASES = _aliases()

_TARGET = re.compile(r"^(GTV|CTV|ITV|PTV)(?:[_\s\-]*([A-Za-z]*?))?[_\s\-]*(\d+(?:[.,]\d+)?)?\s*(GY|CGY)?$", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedName:
    """What a ROI name means. dose_gy: the dose level read from a target name, if any."""

    name: str
    role: Role
    dose_gy: float | None = None


def target_dose_gy(number: str, unit: str | None) -> float:
    """Dose (Gy) written in a target name: ``7000``/``7000cGy`` are cGy, ``70``/``70Gy``/``59.4`` are Gy.

    Without a unit, numbers ≥ 200 are read as cGy (no course prescribes 200 Gy), smaller as Gy.
    """
    value = float(number.replace(",", "."))
    if unit is not None:
        return value / 100.0 if unit.upper() == "CGY" else value
    return value / 100.0 if value >= 200 else value


def target_name(role: Role, dose_gy: float | None, suffix: str = "") -> str:
    """TG-263 target name: ``CTV_7000`` (dose in cGy), or ``CTV`` with no dose level."""
    name = role.value
    if suffix:
        name += "_" + suffix
    if dose_gy is not None:
        name += f"_{round(dose_gy * 100):d}"
    return name


_PLANNING_ONLY = {Role.GAP: "zGap", Role.RING: "zRing"}


def planning_name(role: Role, dose_gy: float) -> str:
    """TG-263 name of a generated planning-only structure of one dose level: ``zGap_7000``,
    ``zRing_7000`` (dose in cGy; the ``z`` prefix marks a structure that is not anatomy)."""
    return f"{_PLANNING_ONLY[role]}_{round(dose_gy * 100):d}"


def parse(roi_name: str) -> ParsedName | None:
    """Canonical name and role of a ROI name, or None if it is not recognised."""
    key = _key(roi_name)
    if key in EXTERNAL_NAMES:
        return ParsedName(EXTERNAL, Role.EXTERNAL)
    match = _TARGET.match(key.replace("_", " ").strip()) or _TARGET.match(key)
    if match:
        kind, suffix, number, unit = match.groups()
        role = Role.CTV if kind.upper() == "ITV" else Role(kind.upper())
        dose = target_dose_gy(number, unit) if number else None
        return ParsedName(target_name(role, dose, (suffix or "").capitalize() if not number else ""), role, dose)
    if roi_name.startswith(("z", "Z", "_")) or key in NON_ANATOMICAL or key.rstrip("_0123456789") in NON_ANATOMICAL:
        return ParsedName(roi_name, Role.OTHER)
    candidates = [key]
    for side in (_SIDE.search(key), _SIDE_FIRST.match(key)):
        if side:
            stem = (key[: side.start()] + key[side.end():]).strip("_")
            candidates += [stem + _SIDE_WORD[side.group(1)], stem.replace("_", "") + _SIDE_WORD[side.group(1)]]
    candidates.append(key.replace("_", ""))
    for candidate in candidates:
        if candidate in _ALIASES:
            return ParsedName(_ALIASES[candidate], Role.OAR)
    return None


_SUGGEST_SIDE = re.compile(r"(?:^|_)(L|R|LT|RT|LFT|RGT|LEFT|RIGHT|LI|RE|LINKS|RECHTS|SIN|DX)$")
_SUGGEST_SIDE_FIRST = re.compile(r"^(L|R|LT|RT|LFT|RGT|LEFT|RIGHT)_")
_SUGGEST_SIDE_WORD = {**_SIDE_WORD, "LFT": "_L", "RGT": "_R"}
_TARGET_LIKE = re.compile(r"PTV|CTV|GTV|ITV|TARGET|BOOST")
MIN_SUGGEST_LENGTH = 6  # shorter names are one letter away from another organ (Core/Cord, Lips/Lids)


def looks_like_target(roi_name: str) -> bool:
    """Whether a ROI name reads as a target (PTV, CTV, GTV, ITV, target, boost anywhere in it)."""
    return bool(_TARGET_LIKE.search(_key(roi_name)))


def is_itv(roi_name: str) -> bool:
    """Whether a ROI name is an ITV's (parsed as a CTV; its RTROIInterpretedType may say CTV or PTV)."""
    return _key(roi_name).startswith("ITV")


def suggest(roi_name: str) -> str | None:
    """The TG-263 name an unrecognised ROI name is a misspelling of, for the error message; else None.

    Only spelling and laterality variants of one structure qualify (``Parotid Lft`` → Parotid_L,
    ``Brainstm`` → Brainstem, ``SpinalCrd`` → SpinalCord): the stem is at most one edit (two from
    10 letters) from a known name or alias, starts with the same letter and is at least 6 letters
    long; the side is kept. Never an organ for a target-like name, never a guess across organs:
    following a wrong suggestion would plan on the wrong structure."""
    if looks_like_target(roi_name):
        return None
    key = _key(roi_name)
    side = None
    for pattern in (_SUGGEST_SIDE, _SUGGEST_SIDE_FIRST):
        match = pattern.search(key)
        if match and len(key) > len(match.group(0)):
            side = _SUGGEST_SIDE_WORD[match.group(1)]
            key = (key[: match.start()] + key[match.end():]).strip("_")
            break
    stem = key.replace("_", "")
    if len(stem) < MIN_SUGGEST_LENGTH:
        return None
    limit = 2 if len(stem) >= 10 else 1
    found = {name for alias, name in _stems().items()
             if alias[0] == stem[0] and _edits(stem, alias) <= limit and name.endswith(_LATERAL) == (side is not None)}
    if len(found) != 1:
        return None
    name = found.pop()
    return name[: -len(_LATERAL)] + side if side else name


def _stems() -> dict[str, str]:
    """Every alias without separators and side → its TG-263 name (``Name_L/_R`` for lateral organs)."""
    stems = {}
    for name, _, _, aliases in _TABLE:
        bare = name[: -len(_LATERAL)] if name.endswith(_LATERAL) else name
        for alias in aliases + (_key(bare),):
            stems[alias.replace("_", "")] = name
    return stems


def _edits(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions, adjacent swaps."""
    previous2, previous = None, list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            if previous2 is not None and i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def organ(name: str) -> Organ:
    """The rule-table row of a canonical OAR name; unknown OARs (from a user mapping) default to level 3, Dmean."""
    return ORGANS.get(name, Organ(name, 3, "Dmean"))


def priority_level(name: str, role: Role) -> int | None:
    """Priority level of SPEC §2.4: the organ's row for OARs, 2 for targets, None for the rest."""
    if role is Role.OAR:
        return organ(name).level
    return 2 if role.is_target else None
