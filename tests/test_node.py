"""The DICOM node end to end: dcmtk storescu → node → plan → C-STORE to a dcmtk storescp.

The node binds port 0 and plans with a coarse in-house engine in 2 steps. Tests wait on the
node's outcome event (``Node.wait_for``, with a deadline), never on a fixed sleep: an outcome is
recorded only after the plan was sent, and storescp writes a file before it answers Success.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

import rtautoplan.node as node_module
from dicom_peers import HOST, echo, send_with_storescu
from rtautoplan.adapters.inhouse import InHousePhoton
from rtautoplan.folder import PlanOptions
from rtautoplan.node import ERROR_FILE, Destination, Node, NodeConfig

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "prostate01"
AET = "RTAP-NODE"
PLAN_TIMEOUT_S = 120.0


def _study_copy(folder: Path, drop: tuple[str, ...] = ()) -> tuple[str, list[Path]]:
    """prostate01 as a new study (a new StudyInstanceUID), without the files named in ``drop``."""
    study = generate_uid()
    folder.mkdir(parents=True)
    paths = []
    for source in sorted(SAMPLE.glob("*.dcm")):
        if source.name in drop:
            continue
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID = study
        ds.save_as(folder / source.name)
        paths.append(folder / source.name)
    return study, paths


def _modalities(folder: Path) -> list[str]:
    return sorted(str(pydicom.dcmread(p, stop_before_pixels=True).Modality) for p in folder.iterdir())


def _fast_options(cache: Path) -> PlanOptions:
    def tps():
        return InHousePhoton(n_beams=5, dose_grid_factor=(2, 4, 4), max_iter=30, cache_dir=cache)

    return PlanOptions(site="prostate", max_steps=2, tps=tps)


@pytest.fixture
def node(tmp_path, storescp):
    config = NodeConfig(aet=AET, host=HOST, port=0, workdir=tmp_path / "node", plan=_fast_options(tmp_path / "dij"),
                        dest=Destination(storescp.host, storescp.port, storescp.aet), send_unacceptable=True,
                        quiet_s=0.2)
    running = Node(config)
    running.start()
    yield running
    running.stop()


@pytest.mark.tools
def test_node_plans_sends_and_survives_a_broken_study(node, storescp, tool, tmp_path):
    storescu = tool("/usr/bin/storescu")
    first, paths = _study_copy(tmp_path / "first")
    send_with_storescu(paths, HOST, node.port, called_aet=AET, binary=storescu)
    assert sorted(p.name for p in (node.incoming / first).iterdir()) == sorted(
        f"{pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID}.dcm" for p in paths)
    outcome = node.wait_for(first, PLAN_TIMEOUT_S)
    assert outcome.status in ("ok", "unacceptable") and outcome.sent, outcome  # send_unacceptable: sent either way
    assert _modalities(storescp.folder) == ["RTDOSE", "RTPLAN", "RTSTRUCT"]
    assert (node.outbox / first / "report.html").is_file()

    broken, paths = _study_copy(tmp_path / "broken", drop=("CT_10.dcm",))
    send_with_storescu(paths, HOST, node.port, called_aet=AET, binary=storescu)
    outcome = node.wait_for(broken, PLAN_TIMEOUT_S)
    assert outcome.status == "error" and "slices missing" in outcome.message
    error = json.loads((node.incoming / broken / ERROR_FILE).read_text())
    assert error["kind"] == "input" and error["error"] == outcome.message and "\n" not in error["error"]
    assert len(list((node.incoming / broken).glob("*.dcm"))) == len(paths)  # the input is kept

    assert echo(HOST, node.port, AET)
    third, paths = _study_copy(tmp_path / "third")
    send_with_storescu(paths, HOST, node.port, called_aet=AET, binary=storescu)
    assert node.wait_for(third, PLAN_TIMEOUT_S).sent
    assert _modalities(storescp.folder) == ["RTDOSE", "RTDOSE", "RTPLAN", "RTPLAN", "RTSTRUCT", "RTSTRUCT"]


def _store(port: int, ds: Dataset) -> int:
    ae = AE(ae_title="RTAP-TEST")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(HOST, port, ae_title=AET)
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds).Status
    finally:
        assoc.release()


@pytest.mark.tools
def test_handler_failures_are_statuses_and_the_node_keeps_serving(node, monkeypatch):
    ds = pydicom.dcmread(SAMPLE / "CT_0.dcm")
    no_study = pydicom.dcmread(SAMPLE / "CT_0.dcm")
    del no_study.StudyInstanceUID
    assert _store(node.port, no_study) == 0xA900

    def broken_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(node_module.os, "fsync", broken_disk)
    assert _store(node.port, ds) == 0xA700

    def bug(fd):
        raise RuntimeError("a bug in the handler")

    monkeypatch.setattr(node_module.os, "fsync", bug)
    assert _store(node.port, ds) == 0xC211
    assert not list(node.incoming.rglob("*.dcm"))
    assert echo(HOST, node.port, AET)
    monkeypatch.undo()
    assert _store(node.port, ds) == 0x0000


@pytest.mark.tools
def test_a_plan_failing_the_gate_is_held_unsent_by_default(tmp_path, storescp, tool):
    """The node's default: a plan that fails the clinical gate stays in the outbox with held.json."""
    storescu = tool("/usr/bin/storescu")
    config = NodeConfig(aet=AET, host=HOST, port=0, workdir=tmp_path / "node", plan=_fast_options(tmp_path / "dij"),
                        dest=Destination(storescp.host, storescp.port, storescp.aet), quiet_s=0.2)
    running = Node(config)
    running.start()
    try:
        study, paths = _study_copy(tmp_path / "study")
        send_with_storescu(paths, HOST, running.port, called_aet=AET, binary=storescu)
        outcome = running.wait_for(study, PLAN_TIMEOUT_S)
    finally:
        running.stop()
    held = running.outbox / study / "held.json"
    log = json.loads((running.outbox / study / "plan_log.json").read_text())
    assert outcome.status == ("ok" if log["acceptable"] else "unacceptable")
    assert outcome.sent is log["acceptable"] and held.is_file() is (not log["acceptable"])
    if held.is_file():
        assert json.loads(held.read_text())["reasons"] == log["reasons"]
