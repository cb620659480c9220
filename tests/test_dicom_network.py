"""Our objects over the network: dcmtk storescu → storescp and → Orthanc, and pynetdicom → storescp.

The peers run on free loopback ports with their own folders (``dicom_peers``). What arrived is read
back from the peer itself: the files storescp wrote, or Orthanc's REST API. The objects are the real
outputs of a plan on ``small_case``: CT, RTSTRUCT, the leaf-sequenced photon RTPLAN with its RTDOSE
(``write_result``), and a proton RT Ion Plan — the SOP class storescu's default proposal leaves out.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from conftest import build_small_case
from dicom_peers import send_with_storescu
from rtautoplan.adapters.inhouse import InHousePhoton
from rtautoplan.adapters.inhouse_proton import InHouseProton
from rtautoplan.dicom.read import write_case
from rtautoplan.dicom.rtionplan import write_rtionplan
from rtautoplan.dicom.write import write_result
from rtautoplan.physics.sequencing import sequence_plan
from rtautoplan.plan import Result
from rtautoplan.structures.objectives import objectives_for
from rtautoplan.structures.rules import apply_rules

pytestmark = pytest.mark.tools


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> dict[str, Path]:
    """One of each object we send, from plans on ``small_case``: name → file."""
    tmp = tmp_path_factory.mktemp("objects")
    case = apply_rules(build_small_case(), "hn")
    objectives = objectives_for(case, np.random.default_rng(0))
    photon = InHousePhoton(n_beams=5, dose_grid_factor=1, cache_dir=tmp / "dij", max_iter=40)
    photon.prepare(case)
    photon.optimize(objectives)
    sequenced = sequence_plan(photon.plan())
    weights = tuple(s.delivered for s in sequenced)
    plan = replace(photon.plan(), weights=weights, dose=photon.dose_of(weights))
    written = write_result(case, Result(plan, None, None, (), "test", delivery=sequenced), tmp, uid_seed="network")
    proton = InHouseProton(n_beams=2, dose_grid_factor=1, spot_spacing_mm=8.0, max_iter=20, cache_dir=tmp / "dij")
    proton.prepare(case)
    proton.optimize(objectives)
    structure_set = str(pydicom.dcmread(written["rtstruct"], stop_before_pixels=True).SOPInstanceUID)
    ion = write_rtionplan(case, proton.plan(), tmp / "RTIONPLAN.dcm", structure_set_uid=structure_set,
                          uid_seed="network/ion")
    ct = write_case(case, tmp / "case", uid_seed="network")[0]
    return {"CT": ct, "RTSTRUCT": written["rtstruct"], "RTPLAN": written["plan"], "RTDOSE": written["rtdose"],
            "RT Ion Plan": ion}


def _uids(paths) -> dict[str, str]:
    """SOPInstanceUID → SOPClassUID of each file."""
    out = {}
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = str(ds.SOPClassUID)
    return out


def test_storescu_to_storescp(objects, storescp, tool):
    send_with_storescu(objects.values(), storescp.host, storescp.port, called_aet=storescp.aet,
                       binary=tool("/usr/bin/storescu"))
    received = sorted(storescp.folder.iterdir())
    assert _uids(received) == _uids(objects.values())
    sent = pydicom.dcmread(objects["RTDOSE"])
    (back,) = [pydicom.dcmread(p) for p in received if p.name.startswith("RD")]
    assert back.DoseGridScaling == sent.DoseGridScaling and back.PixelData == sent.PixelData


def test_storescu_to_orthanc(objects, orthanc, tool):
    assert orthanc.rest("/instances") == []
    send_with_storescu(objects.values(), orthanc.host, orthanc.port, called_aet="ANY-SCP",
                       binary=tool("/usr/bin/storescu"))
    stored = {}
    for instance in orthanc.rest("/instances"):
        tags = orthanc.rest(f"/instances/{instance}/simplified-tags")
        stored[tags["SOPInstanceUID"]] = tags["SOPClassUID"]
    assert stored == _uids(objects.values())
    study_uids = {orthanc.rest(f"/studies/{s}")["MainDicomTags"]["StudyInstanceUID"] for s in orthanc.rest("/studies")}
    assert len(study_uids) == 1  # every object on the CT's study


def test_pynetdicom_to_storescp(objects, storescp):
    datasets = [pydicom.dcmread(p) for p in objects.values()]
    ae = AE(ae_title="RTAUTOPLAN")
    for sop_class in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate(storescp.host, storescp.port, ae_title=storescp.aet)
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_store(ds) for ds in datasets]
    finally:
        assoc.release()
    assert [s.Status for s in statuses] == [0x0000] * len(datasets)
    assert _uids(storescp.folder.iterdir()) == _uids(objects.values())
