"""The DICOM node end to end: dcmtk storescu → node → plan → C-STORE to a dcmtk storescp.

The node binds port 0 and plans with a coarse in-house engine in 2 steps. Tests wait on the
node's outcome event (``Node.wait_for``, with a deadline), never on a fixed sleep: an outcome is
recorded only after the plan was sent, and storescp writes a file before it answers Success.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, RTStructureSetStorage, Verification

import rtautoplan.node as node_module
from conftest import require_tool
from dicom_peers import HOST, echo, free_port, send_with_storescu
from rtautoplan.adapters.inhouse import InHousePhoton
from rtautoplan.access import Access, Tls
from rtautoplan.folder import PlanOptions, is_finished
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


# --- a node a clinic can leave running (issue 14) -----------------------------------------------


def _config(tmp_path: Path, **changes) -> NodeConfig:
    base = dict(aet=AET, host=HOST, port=0, workdir=tmp_path / "node", plan=_fast_options(tmp_path / "dij"),
                quiet_s=0.2, send_backoff_s=0.05, min_free_bytes=0)
    return NodeConfig(**{**base, **changes})


@contextlib.contextmanager
def _running(config: NodeConfig):
    running = Node(config)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _associate(port: int, calling: str = "RTAP-TEST", called: str = AET, tls_args=None, contexts=()):
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 10
    ae.add_requested_context(Verification)
    for sop_class in (CTImageStorage, RTStructureSetStorage, *contexts):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    return ae.associate(HOST, port, ae_title=called, tls_args=tls_args)


def _send(port: int, items, **kwargs) -> list[tuple[int, str]]:
    """C-STORE datasets or files in one association: [(status, ErrorComment)]; [] if not associated."""
    assoc = _associate(port, **kwargs)
    if not assoc.is_established:
        return []
    try:
        answers = [assoc.send_c_store(item) for item in items]
        return [(int(getattr(a, "Status", -1)), str(a.get("ErrorComment", ""))) for a in answers]
    finally:
        assoc.release()


def _echo(port: int, **kwargs) -> bool:
    assoc = _associate(port, **kwargs)
    if not assoc.is_established:
        return False
    try:
        return getattr(assoc.send_c_echo(), "Status", None) == 0x0000
    finally:
        assoc.release()


def _uids(folder: Path, modality: str) -> list[str]:
    return sorted(str(d.SOPInstanceUID) for d in (pydicom.dcmread(p, stop_before_pixels=True)
                                                  for p in folder.iterdir()) if d.Modality == modality)


@pytest.mark.tools
def test_unchanged_resend_is_not_replanned_and_a_newer_rtstruct_replaces_the_old(tmp_path, storescp):
    study, paths = _study_copy(tmp_path / "study")
    with _running(_config(tmp_path, dest=Destination(storescp.host, storescp.port, storescp.aet),
                          send_unacceptable=True)) as node:
        assert all(s == 0 for s, _ in _send(node.port, paths))
        first = node.wait_for(study, PLAN_TIMEOUT_S)
        assert first.sent and not first.unchanged
        plans = _uids(storescp.folder, "RTPLAN")
        assert _send(node.port, paths) == [(0, "")] * len(paths)  # the same study again
        again = node.wait_for(study, PLAN_TIMEOUT_S)
        assert again.unchanged and again.sent and _uids(storescp.folder, "RTPLAN") == plans  # nothing new sent
        assert node.journal.study(study).plans == 1

        rs = pydicom.dcmread(next(p for p in paths if p.name.startswith("RTSTRUCT")))
        old_rs = str(rs.SOPInstanceUID)
        rs.SOPInstanceUID = rs.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        rs.StructureSetDate, rs.StructureSetTime = "20991231", "235959"  # corrected later
        assert _send(node.port, [rs]) == [(0, "")]
        corrected = node.wait_for(study, PLAN_TIMEOUT_S)
        assert corrected.status in ("ok", "unacceptable") and corrected.sent, corrected  # not "2 RTSTRUCTs"
        current = {o.sop for o in node.journal.objects(study)}
        assert str(rs.SOPInstanceUID) in current and old_rs not in current
        assert len(node.journal.objects(study, current_only=False)) == len(paths) + 1  # the old one is kept
        assert len(_uids(storescp.folder, "RTPLAN")) == 2 and node.journal.study(study).plans == 2


@pytest.mark.tools
def test_a_study_left_waiting_by_a_stop_is_planned_after_restart(tmp_path):
    study, paths = _study_copy(tmp_path / "study")
    with _running(_config(tmp_path, quiet_s=3600)) as node:  # SIGTERM long before the quiet period ends
        assert all(s == 0 for s, _ in _send(node.port, paths))
    stale = tmp_path / "node" / "outbox" / f".{study}.partial-1-abcd"  # what a kill -9 while writing leaves
    stale.mkdir(parents=True)
    with _running(_config(tmp_path)) as node:
        outcome = node.wait_for(study, PLAN_TIMEOUT_S)
        assert outcome.status in ("ok", "unacceptable") and not stale.exists()
        assert node.journal.study(study).state in ("planned", "held") and is_finished(node.outbox / study)


@pytest.mark.tools
def test_a_failed_send_is_retried_then_marked_failed(tmp_path):
    study, paths = _study_copy(tmp_path / "study")
    nobody = Destination(HOST, free_port(), "NOBODY")
    with _running(_config(tmp_path, dest=nobody, send_unacceptable=True, send_attempts=3)) as node:
        _send(node.port, paths)
        outcome = node.wait_for(study, PLAN_TIMEOUT_S)
        row = node.journal.study(study)
    assert not outcome.sent and row.state == "failed" and row.kind == "send" and row.send_attempts == 3
    assert json.loads((node.outbox / study / "send_error.json").read_text())["attempts"] == 3


@pytest.mark.tools
def test_strangers_are_refused(tmp_path):
    study, paths = _study_copy(tmp_path / "study")
    with _running(_config(tmp_path, access=Access(calling_aets=("CT-SIM",)))) as node:
        assert _echo(node.port, calling="CT-SIM")
        assert not _echo(node.port, calling="STRANGER")
        assert _send(node.port, paths[:1], calling="STRANGER") == []
    with _running(_config(tmp_path, access=Access(hosts=("10.99.0.0/16",)))) as node:
        assert not _echo(node.port)
    assert not (tmp_path / "node" / "incoming" / study).exists()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN={name}")
    return cert, key


def _signed(folder: Path, name: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    key, csr, cert, ext = (folder / f"{name}{s}" for s in (".key", ".csr", ".pem", ".ext"))
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return cert, key


def _client(ca: Path, cert: tuple[Path, Path] | None) -> tuple:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context, HOST


@pytest.mark.tools
def test_tls_accepts_our_certificates_and_refuses_others(tmp_path):
    require_tool("/usr/bin/openssl")
    ca, rogue = _ca(tmp_path, "clinic-ca"), _ca(tmp_path, "rogue-ca")
    server, client = _signed(tmp_path, "node", ca), _signed(tmp_path, "ct-sim", ca)
    impostor = _signed(tmp_path, "impostor", rogue)
    with _running(_config(tmp_path, tls=Tls(server[0], server[1], ca[0]))) as node:
        assert _echo(node.port, tls_args=_client(ca[0], client))
        assert not _echo(node.port, tls_args=_client(ca[0], impostor))  # a certificate our CA did not sign
        assert not _echo(node.port, tls_args=_client(ca[0], None))  # no certificate
        assert not _echo(node.port)  # no TLS at all
        assert _echo(node.port, tls_args=_client(ca[0], client))  # and it still serves
