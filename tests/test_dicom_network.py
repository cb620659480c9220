"""Our objects over the network: dcmtk storescu → storescp and → Orthanc, and pynetdicom → storescp.

The peers run on free loopback ports with their own folders (``dicom_peers``). What arrived is read
back from the peer itself: the files storescp wrote, or Orthanc's REST API. The RT Ion Plan here is a
transport stub (patient/study/series/SOP common only) standing in until ``rtautoplan.dicom.rtionplan``
lands: it proves that the SOP class, which storescu's default proposal leaves out, gets through.
RTPLAN and the real RT Ion Plan are one more entry each in ``objects``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, RTIonPlanStorage
from pynetdicom import AE

from dicom_peers import orthanc_peer, send_with_storescu, storescp_peer
from rtautoplan.dicom import modules
from rtautoplan.dicom.read import write_case
from rtautoplan.dicom.rtdose import write_rtdose
from rtautoplan.dicom.rtstruct import write_rtstruct
from rtautoplan.dicom.uid import new_uid
from rtautoplan.plan import Dose

pytestmark = pytest.mark.tools


def _ion_plan_stub(case, path: Path) -> Path:
    """An RT Ion Plan with only the modules every object shares (not a valid plan: transport only)."""
    ds = modules.new_dataset(RTIonPlanStorage, new_uid("network/rtionplan"))
    modules.add_patient(ds, case.refs)
    modules.add_general_study(ds, case.refs)
    modules.add_rt_series(ds, "RTPLAN", new_uid("network/rtionplan-series"), 4, description="transport stub")
    modules.add_frame_of_reference(ds, case.refs)
    modules.add_general_equipment(ds)
    return modules.save(ds, path)


@pytest.fixture
def objects(tmp_path, small_case) -> dict[str, Path]:
    """One of each object we send, written from ``small_case``: name → file."""
    paths = write_case(small_case, tmp_path / "case", uid_seed="network")
    gy = np.zeros(small_case.grid.shape)
    gy[small_case.structure("CTV_6000").mask] = 60.0
    dose = write_rtdose(small_case, Dose(small_case.grid, gy), tmp_path / "RTDOSE.dcm",
                        plan_sop_instance_uid=new_uid("network/rtplan"), uid_seed="network")
    return {"CT": paths[0], "RTSTRUCT": write_rtstruct(small_case, tmp_path / "RTSTRUCT.dcm", uid_seed="network"),
            "RTDOSE": dose, "RT Ion Plan": _ion_plan_stub(small_case, tmp_path / "RTIONPLAN.dcm")}


def _uids(paths) -> dict[str, str]:
    """SOPInstanceUID → SOPClassUID of each file."""
    out = {}
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = str(ds.SOPClassUID)
    return out


@pytest.fixture
def storescp(tmp_path, tool):
    with storescp_peer(tmp_path / "storescp", tool("/usr/bin/storescp")) as peer:
        yield peer


@pytest.fixture
def orthanc(tmp_path, tool):
    with orthanc_peer(tmp_path / "orthanc", tool("/usr/sbin/Orthanc")) as peer:
        yield peer


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
