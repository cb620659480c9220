"""The DICOM node end to end: dcmtk storescu → node → plan → C-STORE to a dcmtk storescp.

The node binds port 0 and plans with a coarse in-house engine in 2 steps. Tests wait on the
node's outcome event (``Node.wait_for``, with a deadline), never on a fixed sleep: an outcome is
recorded only after the plan was sent, and storescp writes a file before it answers Success.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import json
import ssl
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, RTStructureSetStorage, Verification

import rtautoplan.node as node_module
from conftest import require_tool
from dicom_peers import HOST, echo, free_port, orthanc_peer, send_with_storescu
from rtautoplan.adapters.inhouse import InHousePhoton
from rtautoplan.access import Access, Tls
from rtautoplan.errors import InputError
from rtautoplan.folder import PlanOptions, is_finished
from rtautoplan.node_config import load_config
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


# --- malformed inputs over the network -------------------------------------------------------------

_BAD_UIDS = ["1." + "2" * 63, "1.02.3", "1.2.a", "1..2", "1.2.", ".1.2", "../../etc/passwd", "1.2/3", "1.2\\3",
             "1.2 3", "", "1.2\x003", "0.1.2.3.04"]
_OTHER_CLASSES = ["1.2.840.10008.5.1.4.1.1.481.5", "1.2.840.10008.5.1.4.1.1.481.2", "1.2.840.10008.5.1.4.1.1.4",
                  "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.481.8",
                  "1.2.840.10008.5.1.4.1.1.66", "1.2.840.10008.5.1.4.1.1.88.11"]


def _raw(folder: Path, name: str, sop_class: str, sop: str, body: bytes) -> Path:
    """A DICOM file whose meta claims ``sop_class``/``sop`` and whose dataset is ``body``, byte for byte
    (pynetdicom sends a file's dataset as it is, without decoding it)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop
    meta.TransferSyntaxUID, meta.ImplementationClassUID = ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
    path = folder / f"{name}.dcm"
    with path.open("wb") as f:
        f.write(b"\0" * 128 + b"DICM")
        fp = DicomFileLike(f)
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_file_meta_info(fp, meta)
        f.write(body)
    return path


def malformed_inputs(folder: Path, study: str) -> list[tuple[str, Path | Dataset]]:
    """≥ 100 (name, file or dataset) inputs a node must refuse: truncated, garbage, other SOP classes,
    bad or inconsistent UIDs, path characters, missing content, oversize (> 3 MB, the test's limit)."""
    folder.mkdir(parents=True, exist_ok=True)
    ct = pydicom.dcmread(SAMPLE / "CT_0.dcm")
    ct.StudyInstanceUID = study
    rs = pydicom.dcmread(SAMPLE / "RTSTRUCT.dcm")
    rs.StudyInstanceUID = study
    cases: list[tuple[str, Path | Dataset]] = []

    def variant(base, name, **changes):
        ds = copy.deepcopy(base)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword, value in changes.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        cases.append((name, ds))
        return ds

    body = encode(ct, False, True)
    rs_body = encode(rs, False, True)
    for i, cut in enumerate([4, 8, 9, 15, 60, 200, 400, 800, len(body) // 3, len(body) // 2, len(body) - 1000,
                             len(body) - 2, len(body) - 1]):
        cases.append((f"truncated CT at {cut}", _raw(folder, f"trunc{i}", CTImageStorage, generate_uid(), body[:cut])))
    for i, cut in enumerate([10, 100, len(rs_body) // 4, len(rs_body) // 2, len(rs_body) - 3]):
        cases.append((f"truncated RTSTRUCT at {cut}",
                      _raw(folder, f"rstrunc{i}", RTStructureSetStorage, generate_uid(), rs_body[:cut])))
    rng = np.random.default_rng(14)
    for i, n in enumerate([1, 7, 64, 1000, 100_000, 1_000_000]):
        cases.append((f"garbage {n} bytes", _raw(folder, f"garbage{i}", CTImageStorage, generate_uid(),
                                                 rng.integers(0, 256, n, dtype=np.uint8).tobytes())))
    cases.append(("a huge element length", _raw(folder, "hugelen", CTImageStorage, generate_uid(),
                                                 b"\x08\x00\x18\x00UI\xff\xff" + b"1.2.3")))
    cases.append(("undefined-length sequence, garbage items",
                  _raw(folder, "seq", CTImageStorage, generate_uid(),
                       b"\x08\x00\x05\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\x99" * 40)))
    for sop_class in _OTHER_CLASSES:
        ds = copy.deepcopy(ct)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        cases.append((f"SOP class {sop_class}", ds))
    for bad in _BAD_UIDS:
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            variant(ct, f"{keyword} {bad!r}", **{keyword: bad})
        variant(rs, f"RTSTRUCT StudyInstanceUID {bad!r}", StudyInstanceUID=bad)
        if bad and not set(bad) & {"\x00", "\\"} and len(bad) <= 64:  # what pynetdicom will put in a request
            ds = copy.deepcopy(ct)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = bad
            cases.append((f"SOPInstanceUID {bad!r}", ds))
    for i in range(4):  # the dataset's SOPInstanceUID is not the request's
        cases.append((f"UID mismatch {i}", _raw(folder, f"mismatch{i}", CTImageStorage, generate_uid(), body)))
    cases.append(("SOP class mismatch", _raw(folder, "classmismatch", RTStructureSetStorage,
                                             str(ct.SOPInstanceUID), body)))
    for keyword in ("PixelData", "Rows", "BitsAllocated", "ImagePositionPatient", "PixelSpacing", "StudyInstanceUID",
                    "SeriesInstanceUID", "SOPInstanceUID"):
        variant(ct, f"CT without {keyword}", **{keyword: None})
    variant(ct, "CT with half its pixels", PixelData=ct.PixelData[: len(ct.PixelData) // 2])
    variant(ct, "CT with Rows larger than its pixels", Rows=int(ct.Rows) * 2)
    variant(rs, "RTSTRUCT without ROIs", StructureSetROISequence=None)
    for i in range(3):
        big = variant(ct, f"oversize {i}")
        big.add_new(0x00091010, "OB", bytes(4 << 20))
    as_files = []  # sent byte for byte: pynetdicom would not send a dataset without its UIDs
    for i, (name, item) in enumerate(cases):
        if isinstance(item, Dataset):
            meta = item.file_meta
            item = _raw(folder, f"ds{i}", meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID,
                        encode(item, False, True))
        as_files.append((name, item))
    return as_files


@pytest.mark.tools
def test_malformed_inputs_are_refused_and_the_node_keeps_answering(tmp_path, monkeypatch):
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)  # send files as they are
    study = generate_uid()
    cases = malformed_inputs(tmp_path / "bad", study)
    assert len(cases) >= 100
    before = sorted(p for p in tmp_path.rglob("*"))
    with _running(_config(tmp_path, max_bytes_per_study=3 << 20)) as node:
        outcomes = []
        for name, item in cases:
            answer = _send(node.port, [item], contexts=_OTHER_CLASSES)
            outcomes.append((name, answer))
            assert answer and answer[0][0] not in (0x0000, 0xB000, 0xB006, 0xB007), (name, answer)
            assert _echo(node.port), f"no C-ECHO answer after {name}"
        assert not node.journal.objects(study, current_only=False) and not node.journal.studies()
        good = pydicom.dcmread(SAMPLE / "CT_0.dcm")
        assert _send(node.port, [good]) == [(0, "")]  # still storing
    statuses = {s for _, a in outcomes for s, _ in a}
    assert {0x0122, 0xA900, 0xC210, 0xA700} <= statuses, statuses
    assert all(comment for _, a in outcomes for _, comment in a), "every failure carries an ErrorComment"
    after = sorted(p for p in tmp_path.rglob("*") if not p.is_relative_to(tmp_path / "node"))
    assert after == before  # nothing written outside the workdir
    assert [p.name for p in (tmp_path / "node" / "incoming").rglob("*.dcm")] == [f"{good.SOPInstanceUID}.dcm"]


@pytest.mark.tools
def test_a_real_pacs_sends_the_study_and_gets_the_plan_back(tmp_path):
    """Orthanc as the clinic's PACS: the study is uploaded over REST, Orthanc C-STOREs it to the node
    (a DicomModality), the node plans and C-STOREs RTPLAN, RTDOSE and RTSTRUCT back to Orthanc."""
    binary = require_tool("/usr/sbin/Orthanc")
    node_port = free_port()
    modalities = {"rtautoplan": [AET, HOST, node_port]}
    with orthanc_peer(tmp_path / "orthanc", binary, modalities=modalities) as pacs:
        config = _config(tmp_path, port=node_port, dest=Destination(pacs.host, pacs.port, pacs.aet),
                         send_unacceptable=True, access=Access(calling_aets=(pacs.aet,), hosts=(HOST,)))
        study, paths = _study_copy(tmp_path / "study")
        for path in paths:
            pacs.rest("/instances", path.read_bytes())
        orthanc_study = pacs.rest("/tools/lookup", study.encode())[0]["ID"]
        with _running(config) as node:
            pacs.rest("/modalities/rtautoplan/store", orthanc_study.encode(), timeout_s=120)
            outcome = node.wait_for(study, PLAN_TIMEOUT_S)
            assert outcome.sent, outcome
        modalities_back = sorted(pacs.rest(f"/series/{s}")["MainDicomTags"].get("Modality", "")
                                 for s in pacs.rest(f"/studies/{orthanc_study}")["Series"])
        assert modalities_back == ["CT", "RTDOSE", "RTPLAN", "RTSTRUCT", "RTSTRUCT"], modalities_back


@pytest.mark.slow
@pytest.mark.tools
def test_eight_concurrent_associations_of_two_studies_each_are_planned_once_unmixed(tmp_path):
    studies = [_study_copy(tmp_path / f"s{i}") for i in range(16)]  # same SOP Instance UIDs, other studies
    with _running(_config(tmp_path, quiet_s=0.5)) as node:
        def send(pair):
            return _send(node.port, [p for _, paths in pair for p in paths], calling=f"MODALITY{len(pair)}")

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, [studies[2 * i: 2 * i + 2] for i in range(8)]))
        assert all(a and all(s == 0 for s, _ in a) for a in answers)
        outcomes = {study: node.wait_for(study, 20 * PLAN_TIMEOUT_S) for study, _ in studies}
        for study, paths in studies:
            assert outcomes[study].status in ("ok", "unacceptable"), outcomes[study]
            row = node.journal.study(study)
            assert row.plans == 1 and len(node.journal.objects(study)) == len(paths)
            for output in (node.outbox / study).glob("*.dcm"):
                assert pydicom.dcmread(output, stop_before_pixels=True).StudyInstanceUID == study


def _chaos(kills: int, studies: int, folder: Path, max_delay_s: float) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import chaos_node
    finally:
        sys.path.pop(0)
    return chaos_node.run(kills, studies, folder, seed=kills, max_delay_s=max_delay_s)


@pytest.mark.tools
def test_chaos_a_few_kills(tmp_path):
    """kill -9 twice at random moments (benchmarks/chaos_node.py): nothing acknowledged is lost, the
    study is planned and sent once, nothing half-written is left."""
    summary = _chaos(2, 1, tmp_path, 6.0)
    assert summary["ok"] and summary["objects_lost"] == 0, summary


@pytest.mark.slow
@pytest.mark.tools
def test_chaos_many_kills(tmp_path):
    summary = _chaos(10, 4, tmp_path, 8.0)
    assert summary["ok"] and summary["objects_lost"] == 0, summary


def test_the_documented_configuration_loads_and_typos_are_errors(tmp_path):
    config = NodeConfig(**load_config(Path(__file__).resolve().parents[1] / "deploy" / "node.toml"))
    assert config.dest == Destination("10.0.0.5", 104, "TPS") and config.access.calling_aets == ("CT_SIM", "PACS")
    assert config.min_free_bytes == 1024 << 20 and config.send_attempts == 5 and config.retention_days == 30
    (tmp_path / "bad.json").write_text(json.dumps({"aet": "X", "acess": {}}))
    with pytest.raises(InputError, match="'acess'"):
        load_config(tmp_path / "bad.json")
    assert NodeConfig().host == "127.0.0.1"  # loopback unless configured
