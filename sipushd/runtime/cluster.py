"""Several nodes on one shared binding store: reach a phone through the node holding its flow.

The node a phone registered with writes itself as the first Path entry of the binding
(`sipushd.core.cluster`, done by the Redis store). Another node forks to that binding
through the entry like through any Path (RFC 3327 §5.3). This module is the holding
node's side: `relay_to_flow` forwards such a request over the phone's own flow, as an
RFC 5626 edge proxy does, and Record-Routes so the dialog's later requests, its 2xx and
the ACK take the same way back. The request's server transaction and response context
are the proxy's, so CANCEL, Timer C and the best response work as for any branch.

`advertised_address` picks the address peers use: `storage.redis.advertise`, else the
first listener bound to a concrete address.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog

from sipushd.core.proxy import (
    ForwardTarget,
    LocalAddress,
    ProxyIdentity,
    forward_request,
    new_branch,
)
from sipushd.runtime.forking import ForwardContext
from sipushd.sip import Endpoint

log = structlog.get_logger("sipushd.cluster")

# §16.6 step 4: the dialog-creating methods the proxy stays on the path of.
RECORD_ROUTED = frozenset({"INVITE", "SUBSCRIBE", "REFER"})
_WILDCARDS = frozenset({"0.0.0.0", "::"})


def relay_to_flow(
    context: ForwardContext,
    flow: Endpoint | None,
    identity: ProxyIdentity,
    flow_alive: Callable[[Endpoint], bool],
) -> None:
    """Forward `context`'s request (our Path entry removed) over the phone's flow."""
    request = context.request
    if flow is None or (flow.reliable and not flow_alive(flow)):
        # RFC 5626 §5.3: the connection is gone (or belonged to an earlier process of
        # this node); the node that forked learns it and keeps waiting for a REGISTER.
        log.info("path flow gone", call_id=request.call_id, method=request.method)
        context.finish(context.reply(430, "Flow Failed"))
        return
    forwarded = forward_request(
        request,
        ForwardTarget(request.uri, flow),
        identity,
        branch=new_branch(request),
        source=context.source,
        record_route=request.method in RECORD_ROUTED,
    )
    log.debug(
        "relaying over flow",
        call_id=request.call_id,
        method=request.method,
        via=f"{flow.transport}:{flow.host}:{flow.port}/{flow.flow}",
    )
    context.fork(forwarded, flow)


def advertised_address(
    configured: LocalAddress | None, listeners: Sequence[Endpoint]
) -> LocalAddress | None:
    """The address other nodes reach this one at; None when no listener has a usable one."""
    if configured is not None:
        return configured
    for endpoint in listeners:
        if endpoint.host not in _WILDCARDS:
            return LocalAddress(endpoint.transport, endpoint.host, endpoint.port)
    return None
