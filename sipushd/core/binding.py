"""The registrar's binding: one Contact registered for one address-of-record.

One job: the `Binding` value and its JSON-friendly form. A binding is keyed
inside its AOR by `+sip.instance` when the UA sent one (RFC 5626 §4.1,
RFC 5627) and else by its Contact address (see `contact_key`). Times are
absolute seconds on the caller's clock; nothing here reads a clock.

`flow.flow` (the stream connection id) only means something inside the
process that stored it; persistent stores clear it when they load bindings
written by an earlier process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from sipushd.core.pushparams import PushTarget
from sipushd.sip import Endpoint, SipUri
from sipushd.sip.value import Value

__all__ = [
    "Binding",
    "binding_from_json",
    "binding_to_json",
    "contact_key",
    "drop_dead_token",
    "gruu_instance",
    "normalise_instance",
    "push_from_json",
    "push_to_json",
]


class Binding(Value):
    """One registered Contact of an AOR, as the registrar stored it.

    `tokens` is derived from `push`.
    """

    _FIELDS = (
        "aor",
        "key",
        "contact",
        "expires_at",
        "call_id",
        "cseq",
        "flow",
        "registered_at",
        "updated_at",
        "instance",
        "reg_id",
        "q",
        "path",
        "push",
        "pnsreg",
        "user_agent",
    )
    __slots__ = _FIELDS

    def __init__(
        self,
        aor: str,
        key: str,
        contact: str,
        expires_at: float,
        call_id: str,
        cseq: int,
        flow: Endpoint,
        registered_at: float,
        updated_at: float,
        instance: str | None = None,
        reg_id: int | None = None,
        q: float | None = None,
        path: tuple[str, ...] = (),
        push: PushTarget | None = None,
        pnsreg: bool = False,
        user_agent: str | None = None,
    ) -> None:
        self.aor: Final = aor
        self.key: Final = key
        self.contact: Final = contact
        self.expires_at: Final = expires_at
        self.call_id: Final = call_id
        self.cseq: Final = cseq
        self.flow: Final = flow
        self.registered_at: Final = registered_at
        self.updated_at: Final = updated_at
        self.instance: Final = instance
        self.reg_id: Final = reg_id
        self.q: Final = q
        self.path: Final = path
        self.push: Final = push
        self.pnsreg: Final = pnsreg
        self.user_agent: Final = user_agent

    # Computed, not stored: a set per binding would be one more object, for the life of
    # the binding, for the garbage collector to scan.
    @property
    def tokens(self) -> frozenset[str]:
        """The push tokens, whatever their service."""
        push = self.push
        return frozenset([t for _, t in push.tokens]) if push is not None else frozenset()

    def remaining(self, now: float) -> int:
        """Whole seconds until expiry, never negative (the `expires` of a 2xx Contact)."""
        return max(0, math.ceil(self.expires_at - now))

    def expired(self, now: float) -> bool:
        """True once the binding's lifetime is over (RFC 3261 §10.2.1)."""
        return self.expires_at <= now

    @property
    def gr(self) -> str | None:
        """The GRUU `gr` value: the instance id without its angle brackets (RFC 5627 §3.1)."""
        if self.instance is None:
            return None
        return self.instance.strip().removeprefix("<").removesuffix(">")

    @property
    def pub_gruu(self) -> str | None:
        """The public GRUU, `AOR;gr=urn:uuid:...` (RFC 5627 §3.1), for instance bindings."""
        gr = self.gr
        return f"{self.aor};gr={gr}" if gr else None


def contact_key(uri: SipUri) -> str:
    """The key of a binding without `+sip.instance`: the Contact's address.

    RFC 3261 §10.3 step 7 matches Contacts by URI equality (§19.1.4).
    Push parameters are left out on purpose: RFC 8599 §4.1.2 has the UA drop
    `pn-prid` when it de-registers, and a rotated token must refresh the
    binding rather than add one. Kept: scheme, user, host, port, and the
    `transport`/`maddr` params that §19.1.4 always compares.
    """
    user = f"{uri.user}@" if uri.user is not None else ""
    port = f":{uri.port}" if uri.port is not None else ""
    key = f"{uri.scheme}:{user}{uri.host.lower()}{port}"
    for name in ("transport", "maddr"):
        value = uri.param(name)
        if value is not None:
            key += f";{name}={value.lower()}"
    return key


def normalise_instance(instance: str | None) -> str | None:
    """`<urn:uuid:...>` with brackets; UUID URNs compare case-insensitively (RFC 4122 §3)."""
    if instance is None:
        return None
    value = instance.strip().strip('"')
    if not value:
        return None
    if not value.startswith("<"):
        value = f"<{value}>"
    if value[:10].lower() == "<urn:uuid:":
        value = value.lower()
    return value


def gruu_instance(uri: SipUri) -> tuple[str, str] | None:
    """(AOR, instance) addressed by a public GRUU URI (RFC 5627 §3.1), else None."""
    gr = uri.param("gr")
    instance = normalise_instance(gr)
    if instance is None or uri.user is None or uri.scheme not in ("sip", "sips"):
        return None
    return uri.aor, instance


def drop_dead_token(binding: Binding, token: str) -> Binding:
    """`binding` without push `token` (any service); its push target goes when no token is left."""
    if binding.push is None or token not in binding.tokens:
        return binding
    left = tuple((service, t) for service, t in binding.push.tokens if t != token)
    return binding.replace(push=binding.push.replace(tokens=left) if left else None)


def push_to_json(push: PushTarget) -> dict[str, Any]:
    """A JSON-ready dict of a `PushTarget`."""
    return {name: _plain(value) for name, value in push.as_dict().items()}


def push_from_json(data: Mapping[str, Any]) -> PushTarget:
    """Rebuild a `PushTarget` written by `push_to_json`."""
    return PushTarget(**{k: _frozen(v) for k, v in data.items() if k in PushTarget._FIELDS})


def binding_to_json(binding: Binding) -> dict[str, Any]:
    """A JSON-ready dict of a `Binding` (for stores that keep documents)."""
    return {
        "aor": binding.aor,
        "key": binding.key,
        "contact": binding.contact,
        "expires_at": binding.expires_at,
        "call_id": binding.call_id,
        "cseq": binding.cseq,
        "flow": [binding.flow.transport, binding.flow.host, binding.flow.port, binding.flow.flow],
        "registered_at": binding.registered_at,
        "updated_at": binding.updated_at,
        "instance": binding.instance,
        "reg_id": binding.reg_id,
        "q": binding.q,
        "path": list(binding.path),
        "push": push_to_json(binding.push) if binding.push else None,
        "pnsreg": binding.pnsreg,
        "user_agent": binding.user_agent,
    }


def binding_from_json(data: Mapping[str, Any]) -> Binding:
    """Rebuild a `Binding` written by `binding_to_json`."""
    transport, host, port, flow = data["flow"]
    push = data.get("push")
    return Binding(
        aor=data["aor"],
        key=data["key"],
        contact=data["contact"],
        expires_at=float(data["expires_at"]),
        call_id=data["call_id"],
        cseq=int(data["cseq"]),
        flow=Endpoint(transport, host, int(port), flow),
        registered_at=float(data["registered_at"]),
        updated_at=float(data["updated_at"]),
        instance=data.get("instance"),
        reg_id=data.get("reg_id"),
        q=data.get("q"),
        path=tuple(data.get("path") or ()),
        push=push_from_json(push) if push else None,
        pnsreg=bool(data.get("pnsreg", False)),
        user_agent=data.get("user_agent"),
    )


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _frozen(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value
