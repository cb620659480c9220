"""DICOM unique identifiers: new ones, and completing the identities of a case written from scratch."""

from __future__ import annotations

from dataclasses import replace

from pydicom.uid import generate_uid

from rtautoplan.case import DicomRefs


def new_uid(seed: str | None = None) -> str:
    """A new UID under pydicom's root. With ``seed`` the UID is a hash of it (the same seed, the same UID);
    without, it is random."""
    return str(generate_uid(entropy_srcs=None if seed is None else [seed]))


def complete_refs(refs: DicomRefs, n_slices: int, seed: str | None = None) -> DicomRefs:
    """``refs`` with every missing UID filled in (study, frame of reference, CT series, one SOP instance
    per slice). Existing UIDs are kept; a seed makes the new ones reproducible."""

    def make(what: str) -> str:
        return new_uid(None if seed is None else f"{seed}/{what}")

    sops = refs.ct_sop_instance_uids
    if len(sops) != n_slices:
        sops = tuple(make(f"ct/{k}") for k in range(n_slices))
    return replace(
        refs,
        study_instance_uid=refs.study_instance_uid or make("study"),
        frame_of_reference_uid=refs.frame_of_reference_uid or make("frame-of-reference"),
        ct_series_instance_uid=refs.ct_series_instance_uid or make("ct-series"),
        ct_sop_instance_uids=sops,
    )


def check_refs(refs: DicomRefs, n_slices: int) -> None:
    """Raise ValueError if ``refs`` lacks a UID the written objects must carry (a programming error:
    call ``complete_refs`` first)."""
    missing = [name for name in ("study_instance_uid", "frame_of_reference_uid", "ct_series_instance_uid")
               if not getattr(refs, name)]
    if len(refs.ct_sop_instance_uids) != n_slices:
        missing.append(f"ct_sop_instance_uids (has {len(refs.ct_sop_instance_uids)}, needs {n_slices})")
    if missing:
        raise ValueError(f"case.refs lacks {', '.join(missing)}; fill them with rtautoplan.dicom.uid.complete_refs")
