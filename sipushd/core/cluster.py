"""Reaching a phone through the node that holds its flow (RFC 3327 Path, RFC 5626 §5.3).

With a shared location service (`storage.backend: redis`) a phone's TCP/TLS connection,
or the UDP socket its NAT binding points at, lives in one node's process. That node
writes itself as the first Path entry of every binding it stores:

    <sip:TOKEN@ADDR:PORT;transport=T;lr>

ADDR:PORT;transport=T is the address the node advertises to its peers and TOKEN a flow
token in the Record-Route format (`encode_flow_token`) whose callee end is the flow the
REGISTER came on. Another node forking to the binding loose-routes through that entry
(RFC 3327 §5.3: the Path becomes the Route set); the holding node recognises its entry
(`ClusterPaths.hop`) and forwards over the flow. A node reading its own entry drops it
(`ClusterPaths.own`), so it never routes a request through itself.

Pure: no clock, no I/O. The token key is the process's own: a flow id names a connection
of one process, so an entry written by an earlier process must never decode into a
connection id that now belongs to another phone.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sipushd.core.binding import Binding
from sipushd.core.proxy import (
    DEFAULT_PORTS,
    DialogFlows,
    LocalAddress,
    decode_flow_token,
    encode_flow_token,
    is_in_dialog,
    same_endpoint,
)
from sipushd.sip import Endpoint, Headers, Request, SipParseError, SipUri
from sipushd.sip.headers import parse_name_addr

__all__ = ["ClusterPaths", "PathHop"]


@dataclass(frozen=True, slots=True)
class PathHop:
    """A request that reached us through our own Path entry, and the phone's flow."""

    request: Request  # our Route entry removed (§16.4)
    flow: Endpoint | None  # None: our entry, but not a flow of this process (430)


@dataclass(frozen=True, slots=True)
class ClusterPaths:
    """This node's Path entries: the address its peers reach it at and the token key."""

    address: LocalAddress
    secret: bytes

    @property
    def endpoint(self) -> Endpoint:
        """The advertised address as an Endpoint (the caller end of our Path tokens)."""
        return Endpoint(self.address.transport, _canonical(self.address.host), self.address.port)

    def entry(self, flow: Endpoint) -> str:
        """The Path value that leads a peer to `flow` through this node (RFC 3327 §4)."""
        token = encode_flow_token(DialogFlows(self.endpoint, flow), self.secret)
        address = self.address
        host = f"[{address.host}]" if ":" in address.host else address.host
        params = "" if address.transport == "udp" else f";transport={address.transport}"
        return f"<sip:{token}@{host}:{address.port}{params};lr>"

    def is_ours(self, uri: SipUri) -> bool:
        """True when `uri` names the advertised address (host, port and transport)."""
        address = self.address
        port = uri.port if uri.port is not None else DEFAULT_PORTS.get(uri.transport, 5060)
        return (
            uri.transport == address.transport
            and port == address.port
            and _canonical(uri.host) == _canonical(address.host)
        )

    def stamp(self, binding: Binding) -> Binding:
        """`binding` with this node as its first Path entry, in front of the UA's own Path.

        RFC 3327 §5.3: each hop towards the registrar prepends itself, and requests follow
        the Path in order; this node stands nearest the shared location service.
        """
        rest = self.own(binding).path
        return binding.replace(path=(self.entry(binding.flow), *rest))

    def own(self, binding: Binding) -> Binding:
        """`binding` as this node routes it: without our Path entry, if it leads the Path."""
        if not binding.path or not self._leads_here(binding.path[0]):
            return binding
        return binding.replace(path=binding.path[1:])

    def hop(self, request: Request) -> PathHop | None:
        """The flow an out-of-dialog request routed through our Path entry goes to, else None.

        In-dialog requests follow Record-Route entries (their tokens use the proxy's key),
        so only a request without a To tag is looked at.
        """
        try:
            if is_in_dialog(request):
                return None
            values = request.headers.values("Route")
            if not values:
                return None
            first = parse_name_addr(values[0]).uri
        except SipParseError:
            return None
        if not self.is_ours(first) or not first.user:
            return None
        flows = decode_flow_token(first.user, self.secret)
        flow = None
        if flows is not None and same_endpoint(flows.caller, self.endpoint):
            flow = flows.callee
        return PathHop(request.replace(headers=_drop_first_route(request.headers)), flow)

    def _leads_here(self, value: str) -> bool:
        try:
            return self.is_ours(parse_name_addr(value).uri)
        except SipParseError:
            return False


def _canonical(host: str) -> str:
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare).compressed
    except ValueError:
        return bare.lower()


def _drop_first_route(headers: Headers) -> Headers:
    """`headers` without the first Route value; the others stay where they were."""
    rest = headers.values("Route")[1:]
    items: list[tuple[str, str]] = []
    placed = False
    for name, value in headers:
        if name.lower() != "route":
            items.append((name, value))
        elif not placed:
            placed = True
            items += [("Route", v) for v in rest]
    return Headers(items)
