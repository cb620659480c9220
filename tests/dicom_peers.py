"""Real DICOM peers for the network tests: dcmtk ``storescp`` and Orthanc on free loopback ports.

Each peer runs as a child process with its own folder; ``storescp_peer`` / ``orthanc_peer`` are
context managers that start it, wait until it answers a C-ECHO (polled against a deadline, never a
fixed sleep) and terminate it on exit (terminate → wait → kill). A port picked free can be taken by
someone else before the peer binds it, so a peer that dies at start is retried on a new port.

``send_with_storescu`` sends any DICOM files with dcmtk ``storescu``. It always passes ``-R``
(propose only the presentation contexts the files need): without it storescu proposes its fixed
list of common storage SOP classes, which (128 contexts at most) leaves out RT Ion Plan and other
newer classes, and the association then has no context for them.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Sequence

from pynetdicom import AE
from pynetdicom.sop_class import Verification

HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0
START_ATTEMPTS = 3


@dataclass(frozen=True)
class Peer:
    """A running storage SCP: where to reach it, where it stores, and its log file."""

    host: str
    port: int
    aet: str
    folder: Path
    log: Path
    process: subprocess.Popen
    http_port: int | None = None  # Orthanc's REST API

    def rest(self, path: str, data: bytes | None = None, timeout_s: float = 10.0):
        """GET ``path`` from Orthanc's REST API (POST ``data`` when given) and decode the JSON answer."""
        url = f"http://{self.host}:{self.http_port}{path}"
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout_s) as answer:
            return json.loads(answer.read())


class PeerError(RuntimeError):
    """A peer would not start or a transfer failed; the message carries the tool's output."""


def free_port() -> int:
    """A TCP port on the loopback interface that was free a moment ago (the OS picks it: bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def echo(host: str, port: int, called_aet: str = "ANY-SCP", timeout_s: float = 2.0) -> bool:
    """True when a C-ECHO to ``host:port`` succeeds."""
    ae = AE(ae_title="RTAP-PROBE")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0x0000
    finally:
        assoc.release()


def stop(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Terminate ``process``, wait for it, kill it if it does not exit."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)


def _wait_ready(peer: Peer, ready: Callable[[], bool], deadline_s: float) -> bool:
    """Poll ``ready`` until it holds (True), the process exits or the deadline passes (False)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if peer.process.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def _run(start: Callable[[int], Peer], ready: Callable[[Peer], bool], what: str) -> Iterator[Peer]:
    """Start a peer on a free port (retrying on a new port if it dies at start), yield it, stop it."""
    for _attempt in range(START_ATTEMPTS):
        peer = start(free_port())
        if _wait_ready(peer, lambda: ready(peer), START_TIMEOUT_S):
            break
        died = peer.process.poll() is not None
        stop(peer.process)
        if not died:
            raise PeerError(f"{what} did not answer a C-ECHO within {START_TIMEOUT_S} s:\n{peer.log.read_text()}")
    else:
        raise PeerError(f"{what} exited at start {START_ATTEMPTS} times:\n{peer.log.read_text()}")
    try:
        yield peer
    finally:
        stop(peer.process)


def storescp_peer(folder: Path, binary: str = "/usr/bin/storescp", aet: str = "STORESCP") -> ContextManager[Peer]:
    """dcmtk storescp storing every object it receives (any storage SOP class, any transfer syntax)
    in ``folder``/received."""
    received = Path(folder) / "received"
    received.mkdir(parents=True, exist_ok=True)
    log = Path(folder) / "storescp.log"

    def start(port: int) -> Peer:
        command = [binary, "--verbose", "--aetitle", aet, "--promiscuous", "--accept-all",
                   "--output-directory", str(received), "--disable-host-lookup", str(port)]
        with log.open("w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return Peer(HOST, port, aet, received, log, process)

    return _run(start, lambda p: echo(p.host, p.port, p.aet), "storescp")


def orthanc_config(folder: Path, dicom_port: int, http_port: int, aet: str, modalities: dict | None = None) -> dict:
    """An Orthanc configuration of its own: loopback-only REST API without authentication, storage
    and index in ``folder``, no plugins, and any called AE title accepted; ``modalities``: name →
    [AET, host, port] of the peers Orthanc may send to."""
    return {
        "Name": "rtautoplan-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "DicomCheckCalledAet": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "DicomModalities": modalities or {},
        "OrthancPeers": {},
    }


def orthanc_peer(folder: Path, binary: str = "/usr/sbin/Orthanc", aet: str = "ORTHANC",
                 modalities: dict | None = None) -> ContextManager[Peer]:
    """Orthanc with its own configuration, ports and folders (independent of any system service)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "orthanc.log"

    def start(dicom_port: int) -> Peer:
        http_port = free_port()
        config = folder / "orthanc.json"
        config.write_text(json.dumps(orthanc_config(folder, dicom_port, http_port, aet, modalities), indent=1))
        with log.open("w") as out:
            process = subprocess.Popen([binary, str(config)], stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd=folder)
        return Peer(HOST, dicom_port, aet, folder / "storage", log, process, http_port)

    def ready(peer: Peer) -> bool:
        try:
            peer.rest("/system")
        except OSError:  # URLError, connection refused: not listening yet
            return False
        return echo(peer.host, peer.port, peer.aet)

    return _run(start, ready, "Orthanc")


def send_with_storescu(paths: Sequence[Path], host: str, port: int, aet: str = "RTAUTOPLAN",
                       called_aet: str = "ANY-SCP", binary: str = "/usr/bin/storescu",
                       timeout_s: float = 60.0) -> str:
    """C-STORE every file in ``paths`` with dcmtk storescu in one association; returns its log.

    Raises PeerError unless storescu exits 0 and reports one successful store response per file.
    """
    paths = [str(p) for p in paths]
    command = [binary, "--verbose", "--required", "--aetitle", aet, "--call", called_aet,
               "--timeout", "10", "--acse-timeout", "10", "--dimse-timeout", "30", host, str(port), *paths]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    output = result.stdout + result.stderr
    successes = len(re.findall(r"Received Store Response \(Success\)", output))
    if result.returncode != 0 or successes != len(paths):
        raise PeerError(f"storescu exit {result.returncode}, {successes}/{len(paths)} stored:\n{output}")
    return output
