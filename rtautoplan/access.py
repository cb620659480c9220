"""Who may talk to the node: an allow-list of calling AE titles and peer addresses, and TLS.

What: ``Access`` (calling AE titles, addresses or networks; empty: anyone) and ``Tls`` (the node's
certificate and key, the CA its peers' certificates must chain to). ``GuardedAE`` is a pynetdicom AE
whose server drops a connection from an address not on the list before a byte of DICOM is read,
rejects a calling AE title not on the list (A-ASSOCIATE-RJ, pynetdicom's ``require_calling_aet``),
and does the TLS handshake in the connection's own thread with a deadline, so a stalled or hostile
peer can neither block the accept loop nor reach the node with a certificate the CA did not sign.

Why: the node receives patient data and sends plans on; a clinic's network holds many devices,
and a stranger must not be able to store into, or fill, the planning queue.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import ssl
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Access:
    """calling_aets: AE titles allowed to associate; hosts: addresses or networks ("10.1.2.0/24")
    allowed to connect. Empty: no restriction of that kind."""

    calling_aets: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()

    def __post_init__(self):
        for host in self.hosts:
            ipaddress.ip_network(host, strict=False)  # ValueError names a bad entry at start, not at the first call

    def allows_host(self, address: str) -> bool:
        if not self.hosts:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if getattr(ip, "ipv4_mapped", None):
            ip = ip.ipv4_mapped
        return any(ip in ipaddress.ip_network(h, strict=False) for h in self.hosts)


@dataclass(frozen=True)
class Tls:
    """The node's certificate and private key (PEM) and the CA file its peers' certificates are
    checked against; require_client_cert: refuse peers without a certificate (default)."""

    cert: Path
    key: Path
    ca: Path
    require_client_cert: bool = True

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert), str(self.key))
        context.load_verify_locations(cafile=str(self.ca))
        context.verify_mode = ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_OPTIONAL
        return context

    def client_context(self) -> ssl.SSLContext:
        """A context for sending (the node as client): our certificate, the peer's checked against the CA."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


class GuardedServer(ThreadedAssociationServer):
    """An association server that checks the peer's address and does TLS per connection thread."""

    def get_request(self):
        return socketserver.TCPServer.get_request(self)  # no handshake in the accept loop

    def verify_request(self, request, client_address) -> bool:
        access: Access = getattr(self.ae, "access", Access())
        if access.allows_host(str(client_address[0])):
            return True
        log.warning("connection from %s:%s refused: address not allowed", *client_address[:2])
        return False

    def process_request_thread(self, request, client_address) -> None:
        if self.ssl_context is not None:
            try:
                request.settimeout(HANDSHAKE_TIMEOUT_S)
                request = self.ssl_context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (OSError, ValueError) as error:  # ssl.SSLError, a timeout, a reset
                log.warning("TLS handshake with %s:%s failed: %s", *client_address[:2], error)
                try:
                    request.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                request.close()
                return
        super().process_request_thread(request, client_address)


class GuardedAE(AE):
    """An AE whose servers are ``GuardedServer``s checking ``self.access``."""

    access: Access = Access()

    def make_server(self, address, *args, server_class=None, **kwargs):
        return super().make_server(address, *args, server_class=GuardedServer, **kwargs)
