"""Via-based addressing at the transport edge, without I/O.

- `stamp_via`: the server transport's duty on every received request (RFC 3261 §18.2.1,
  RFC 3581 §4): add `received` and fill an empty `rport` in the top Via.
- `response_destination`: where a response goes (RFC 3261 §18.2.2, RFC 3581 §4).
"""

from __future__ import annotations

import ipaddress
import socket

from sipushd.sip import Endpoint, Headers, Request, Response

DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}


def unbracket(host: str) -> str:
    """Strip the [] around an IPv6 reference (RFC 3261 §25.1 `IPv6reference`)."""
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def family_of(host: str) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 literal, else AF_INET (IPv4 literal or host name)."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def normalize_host(host: str) -> str:
    """Canonical text of an IP literal (brackets removed), or the name lowercased."""
    host = unbracket(host)
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host.lower()


def same_ip(sent_by: str, source: str) -> bool:
    """True when the Via sent-by host is the same IP address as the packet source."""
    sent_by = unbracket(sent_by)
    if sent_by == source:
        return True
    try:
        return ipaddress.ip_address(sent_by) == ipaddress.ip_address(source.partition("%")[0])
    except ValueError:
        # A domain name in sent-by never matches (RFC 3261 §18.2.1).
        return False


def stamp_via(request: Request, host: str, port: int) -> Request:
    """Add received/rport to the top Via for a request that arrived from host:port.

    RFC 3261 §18.2.1: `received` when sent-by differs from the source address.
    RFC 3581 §4: an empty `rport` gets the source port, and then `received` is added even
    when it equals sent-by. Returns the request itself when nothing changes.
    Raises SipParseError when the request has no usable Via.
    """
    top = request.top_via
    empty_rport = top.rport == ""
    if not empty_rport and same_ip(top.host, host):
        return request
    stamped = top.with_param("received", host)
    if empty_rport:
        stamped = stamped.with_param("rport", str(port))
    return request.replace(headers=replace_top_via(request.headers, str(stamped)))


def replace_top_via(headers: Headers, top: str) -> Headers:
    """Headers with the first Via value replaced by `top`, everything else as it was."""
    items = list(headers)
    for index, (name, value) in enumerate(items):
        if name.lower() != "via":
            continue
        if "," in value:
            # RFC 3261 §7.3.1: one field may carry several comma-separated Via values.
            rest = Headers([("Via", value)]).values("Via")[1:]
            items[index] = (name, ", ".join([top, *rest]))
        else:
            items[index] = (name, top)
        break
    return Headers(items)


def response_destination(response: Response, source: Endpoint | None = None) -> Endpoint:
    """Where to send `response` (RFC 3261 §18.2.2 with RFC 3581 §4).

    `source` is the Endpoint the request arrived from (as given to on_message). Reliable
    transports keep `source.flow` so send() uses that connection while it is alive, and
    otherwise connects to `received` (or the sent-by host) at the sent-by port. Unreliable:
    maddr, else received + rport (or sent-by port), else sent-by; port defaults to 5060.
    Raises SipParseError when the response has no usable Via.
    """
    via = response.top_via
    transport = source.transport if source is not None else via.transport.lower()
    default_port = DEFAULT_PORTS.get(transport, 5060)
    sent_by_port = via.port if via.port is not None else default_port
    received = via.received
    if transport != "udp":
        host = received if received else unbracket(via.host)
        flow = source.flow if source is not None else None
        return Endpoint(transport, host, sent_by_port, flow)
    maddr = via.param("maddr")
    if maddr:
        return Endpoint(transport, unbracket(maddr), sent_by_port)
    if received:
        rport = via.rport
        port = int(rport) if rport and rport.isdigit() else sent_by_port
        return Endpoint(transport, unbracket(received), port)
    return Endpoint(transport, unbracket(via.host), sent_by_port)
