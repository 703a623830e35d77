"""REGISTER decisions: RFC 3261 §10.3 with RFC 8599 push, RFC 5626/5627 and Path.

One job: given a REGISTER, where it came from, the AOR's current bindings
and the time, decide the answer and the binding changes. No I/O: the
caller reads the bindings from the store, calls `Registrar.decide`,
applies `upserts`/`removal_keys` atomically and sends `response()`.

Choices the RFCs leave open, and what sipushd does:
- Request-URI domain not served: 403 (we never forward REGISTER, §10.3 step 1).
- To not a SIP/SIPS URI: 400 (the UAC broke §10.2's MUST); To outside the
  served domains or without a user part: 404 (§10.3 step 5).
- Stale CSeq on the same Call-ID: 500 "Out of Order" (§10.3 steps 6 and 7
  only say the request fails; 500 is what it says to do on a failed update).
- Bindings are keyed by `+sip.instance` (RFC 5626 §4.1) else by Contact
  address (`contact_key`). Several reg-ids of one instance collapse to the
  latest flow, so one device never rings twice.
- A binding that carries a push token another binding of the AOR holds
  replaces that binding (a reinstalled app gets a new instance id).
- More than `max_contacts_per_aor`: the least recently refreshed bindings
  not named in this REGISTER are evicted; a REGISTER that alone names
  more is refused with 403.
- RFC 8599 §4.1.5 capability query (pn-provider, no pn-prid): a normal
  binding without push; the 2xx lists the asked provider (all supported
  ones when pn-provider has no value) in Feature-Caps.
- `+sip.pnsreg` (RFC 8599 §4.1.4): the UA can refresh on its own; the 2xx
  tells it to do so `pnsreg_interval` seconds before expiry (more than 120,
  as in OpenSIPS' default of 130). Bindings without it get a
  binding-refresh push instead (RFC 8599 §5.5; done by the runtime).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from sipushd.core.binding import (
    Binding,
    contact_key,
    drop_dead_token,
    gruu_instance,
    normalise_instance,
)
from sipushd.core.pushparams import (
    PushParamError,
    PushTarget,
    UnsupportedProviderError,
    is_capability_query,
    parse_push_target,
)
from sipushd.sip import Endpoint, NameAddr, Request, Response, SipParseError, make_response

__all__ = [
    "RegisterDecision",
    "Registrar",
    "RegistrarSettings",
    "Removal",
    "RemovalCause",
    "drop_dead_token",
    "gruu_instance",
]

# Option tags a REGISTER may Require (RFC 3261 §8.2.2.3): Path (RFC 3327), GRUU (RFC 5627).
SUPPORTED_OPTIONS = frozenset({"path", "gruu"})
# RFC 3261 §10.2.1.1: an expires above 2**32-1 is taken as 2**32-1.
_MAX_DELTA = 2**32 - 1
_UNSAFE_REASON = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True, slots=True)
class RegistrarSettings:
    """Registrar limits (config `registrar:`), in seconds."""

    min_expires: int = 60
    max_expires: int = 604800
    default_expires: int = 3600
    max_contacts_per_aor: int = 12
    pnsreg_interval: int = 130

    def __post_init__(self) -> None:
        if not 0 < self.min_expires <= self.default_expires <= self.max_expires:
            raise ValueError("need 0 < min_expires <= default_expires <= max_expires")
        if self.max_contacts_per_aor < 1:
            raise ValueError("max_contacts_per_aor must be at least 1")
        if self.pnsreg_interval <= 120:
            raise ValueError("pnsreg_interval must be more than 120 s (RFC 8599 §4.1.4)")


class RemovalCause(Enum):
    """Why a binding leaves the location service."""

    UNREGISTERED = "unregistered"  # expires=0 or Contact: * (RFC 3261 §10.2.2)
    REPLACED = "replaced"  # another binding registered the same push token
    EVICTED = "evicted"  # max_contacts_per_aor reached


@dataclass(frozen=True, slots=True)
class Removal:
    """A binding the decision removes, and why."""

    binding: Binding
    cause: RemovalCause


class RegisterDecision:
    """The answer to one REGISTER and the binding changes that go with it.

    Apply `upserts` and `removal_keys` atomically before sending
    `response()`; if that fails, answer 500 instead (RFC 3261 §10.3 step 7).
    """

    # A plain class with Final attributes rather than a frozen dataclass: one is built
    # for every REGISTER, and compiled code builds it without a generated __init__.
    __slots__ = ("aor", "bindings", "headers", "reason", "removals", "status", "upserts")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: tuple[tuple[str, str], ...] = (),
        *,
        aor: str | None = None,
        upserts: tuple[Binding, ...] = (),
        removals: tuple[Removal, ...] = (),
        bindings: tuple[Binding, ...] = (),
    ) -> None:
        self.status: Final = status
        self.reason: Final = reason
        self.headers: Final = headers
        self.aor: Final = aor
        self.upserts: Final = upserts
        self.removals: Final = removals
        self.bindings: Final = bindings

    def __repr__(self) -> str:
        return f"RegisterDecision({self.status} {self.reason!r}, aor={self.aor!r})"

    @property
    def ok(self) -> bool:
        """True for a 2xx."""
        return 200 <= self.status < 300

    @property
    def registered(self) -> tuple[Binding, ...]:
        """Bindings added or refreshed: each is a "binding registered" event."""
        return self.upserts

    @property
    def removal_keys(self) -> tuple[str, ...]:
        """Keys of the bindings to remove from `aor`."""
        return tuple(r.binding.key for r in self.removals)

    def response(self, request: Request, *, to_tag: str | None = None) -> Response:
        """The SIP response to send for `request`."""
        return make_response(request, self.status, self.reason, to_tag=to_tag, headers=self.headers)


class _Reject(Exception):
    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(reason)
        self.decision = RegisterDecision(status, _clean_reason(reason), headers)


class _Wanted:
    """One Contact of the REGISTER, checked."""

    __slots__ = ("caps", "contact", "expires", "instance", "key", "pnsreg", "push", "q", "reg_id")

    def __init__(
        self,
        key: str,
        contact: NameAddr,
        expires: int,
        q: float | None,
        instance: str | None,
        reg_id: int | None,
        push: PushTarget | None,
        pnsreg: bool,
        caps: tuple[str, ...],  # provider labels this Contact asks about (RFC 8599 §5.6.1)
    ) -> None:
        self.key: Final = key
        self.contact: Final = contact
        self.expires: Final = expires
        self.q: Final = q
        self.instance: Final = instance
        self.reg_id: Final = reg_id
        self.push: Final = push
        self.pnsreg: Final = pnsreg
        self.caps: Final = caps


class _Context:
    """What every step of one REGISTER's decision needs."""

    __slots__ = ("aor", "now", "request", "source", "supported")

    def __init__(
        self, request: Request, source: Endpoint, aor: str, now: float, supported: frozenset[str]
    ) -> None:
        self.request: Final = request
        self.source: Final = source
        self.aor: Final = aor
        self.now: Final = now
        self.supported: Final = supported


class Registrar:
    """Pure REGISTER logic; one instance serves every request."""

    def __init__(self, settings: RegistrarSettings) -> None:
        self.settings = settings

    def decide(
        self,
        request: Request,
        source: Endpoint,
        current: Sequence[Binding],
        now: float,
        *,
        domains: Collection[str],
        supported_providers: Collection[str],
    ) -> RegisterDecision:
        """Decide the answer to `request` given the AOR's `current` bindings at `now`."""
        if request.method != "REGISTER":
            raise ValueError(f"not a REGISTER: {request.method}")
        try:
            aor = _check_target(request, {d.lower() for d in domains})
            ctx = _Context(
                request, source, aor, now, frozenset(p.lower() for p in supported_providers)
            )
            live = [b for b in current if not b.expired(now)]
            return self._decide(ctx, live)
        except _Reject as reject:
            return reject.decision
        except SipParseError as exc:
            return _Reject(400, f"Bad Request ({exc})").decision

    def _decide(self, ctx: _Context, live: list[Binding]) -> RegisterDecision:
        request = ctx.request
        values = request.headers.values("Contact")
        if any(v.strip() == "*" for v in values):
            return self._wildcard(ctx, live, len(values))
        contacts = request.contacts
        if not contacts:
            # RFC 3261 §10.3 step 8: a REGISTER without Contact is a query.
            return self._answer(ctx, live, {}, {}, ())
        header_expires = request.expires
        wanted: dict[str, _Wanted] = {}
        for contact in contacts:
            item = self._check_contact(ctx, contact, header_expires)
            wanted.pop(item.key, None)  # §10.3 step 7: Contacts apply in order; last wins
            wanted[item.key] = item
        if sum(1 for w in wanted.values() if w.expires) > self.settings.max_contacts_per_aor:
            raise _Reject(403, "Too Many Contacts")
        upserts, removals = self._update(ctx, live, wanted)
        feature_caps = self._feature_caps(wanted.values())
        return self._answer(ctx, live, upserts, removals, feature_caps)

    def _feature_caps(self, wanted: Iterable[_Wanted]) -> tuple[str, ...]:
        """`*;+sip.pns="apns"` per provider (RFC 8599 §5.6.1), `+sip.pnsreg` if asked (§4.1.4)."""
        labels: dict[str, bool] = {}
        for item in wanted:
            for label in item.caps:
                labels[label] = labels.get(label, False) or item.pnsreg
        interval = self.settings.pnsreg_interval
        return tuple(
            f'*;+sip.pns="{label}"' + (f';+sip.pnsreg="{interval}"' if pnsreg else "")
            for label, pnsreg in labels.items()
        )

    def _wildcard(self, ctx: _Context, live: list[Binding], n_values: int) -> RegisterDecision:
        # RFC 3261 §10.3 step 6: "*" only alone and only with Expires: 0.
        if n_values != 1 or ctx.request.expires != 0:
            raise _Reject(400, "Contact: * needs Expires: 0 and no other Contact")
        call_id, cseq = ctx.request.call_id, ctx.request.cseq.seq
        removals: dict[str, Removal] = {}
        for binding in live:
            if binding.call_id == call_id and cseq <= binding.cseq:
                raise _Reject(500, "Out of Order")
            removals[binding.key] = Removal(binding, RemovalCause.UNREGISTERED)
        return self._answer(ctx, live, {}, removals, ())

    def _check_contact(
        self, ctx: _Context, contact: NameAddr, header_expires: int | None
    ) -> _Wanted:
        """Validate one Contact: URI scheme, expires, q and push parameters."""
        uri = contact.uri
        if uri.scheme not in ("sip", "sips"):
            raise _Reject(400, "Contact URI must be sip or sips")
        expires = self._expires(contact, header_expires)
        try:
            q = contact.q
        except ValueError as exc:
            raise _Reject(400, "Invalid q-value") from exc
        if q is not None and not 0.0 <= q <= 1.0:
            raise _Reject(400, "Invalid q-value")
        try:
            reg_id = contact.reg_id
        except ValueError as exc:
            raise _Reject(400, "Invalid reg-id") from exc
        instance = normalise_instance(contact.instance)
        key = instance or contact_key(uri)
        pnsreg = any(name == "+sip.pnsreg" for name, _ in contact.params)
        if expires == 0:
            # RFC 8599 §4.1.2: a de-registration carries no pn-prid; nothing to check.
            return _Wanted(key, contact, 0, q, instance, reg_id, None, pnsreg, ())
        push, caps = _check_push(dict(uri.params), ctx.supported)
        if push is not None:
            caps = (push.provider_label,)
        return _Wanted(key, contact, expires, q, instance, reg_id, push, pnsreg, caps)

    def _expires(self, contact: NameAddr, header_expires: int | None) -> int:
        """RFC 3261 §10.3 step 6: expires param, else Expires header, else the default."""
        try:
            asked = contact.expires
        except ValueError as exc:
            raise _Reject(400, "Invalid expires parameter") from exc
        if asked is None:
            asked = header_expires
        if asked is None:
            asked = self.settings.default_expires
        if asked < 0:
            raise _Reject(400, "Invalid expires value")
        asked = min(asked, _MAX_DELTA)
        if 0 < asked < self.settings.min_expires:
            # RFC 3261 §10.3 step 6 / §20.23: 423 with the minimum we accept.
            min_expires = (("Min-Expires", str(self.settings.min_expires)),)
            raise _Reject(423, "Interval Too Brief", min_expires)
        return min(asked, self.settings.max_expires)

    def _update(
        self, ctx: _Context, live: list[Binding], wanted: dict[str, _Wanted]
    ) -> tuple[dict[str, Binding], dict[str, Removal]]:
        """RFC 3261 §10.3 step 7, then same-token replacement and the contact limit."""
        by_key = {b.key: b for b in live}
        call_id, cseq = ctx.request.call_id, ctx.request.cseq.seq
        upserts: dict[str, Binding] = {}
        removals: dict[str, Removal] = {}
        for key, item in wanted.items():
            old = by_key.get(key)
            if old is not None and old.call_id == call_id and cseq <= old.cseq:
                raise _Reject(500, "Out of Order")
            if item.expires:
                upserts[key] = self._binding(ctx, item, old)
            elif old is not None:
                removals[key] = Removal(old, RemovalCause.UNREGISTERED)
        for binding in upserts.values():
            for other in live:
                if other.key in upserts or other.key in removals:
                    continue
                if binding.tokens & other.tokens:
                    removals[other.key] = Removal(other, RemovalCause.REPLACED)
        kept = [b for b in live if b.key not in upserts and b.key not in removals]
        excess = len(kept) + len(upserts) - self.settings.max_contacts_per_aor
        if excess > 0:
            oldest = sorted(kept, key=lambda b: (b.updated_at, b.registered_at, b.key))
            for binding in oldest[:excess]:
                removals[binding.key] = Removal(binding, RemovalCause.EVICTED)
        return upserts, removals

    def _binding(self, ctx: _Context, item: _Wanted, old: Binding | None) -> Binding:
        request = ctx.request
        return Binding(
            aor=ctx.aor,
            key=item.key,
            contact=str(item.contact.uri),
            expires_at=ctx.now + item.expires,
            call_id=request.call_id,
            cseq=request.cseq.seq,
            flow=ctx.source,
            registered_at=old.registered_at if old is not None else ctx.now,
            updated_at=ctx.now,
            instance=item.instance,
            reg_id=item.reg_id,
            q=item.q,
            # RFC 3327 §5.3: the Path of the REGISTER is stored with each of its bindings.
            path=tuple(str(p) for p in request.paths) if "Path" in request.headers else (),
            push=item.push,
            pnsreg=item.pnsreg,
            user_agent=request.headers.get("User-Agent"),
        )

    def _answer(
        self,
        ctx: _Context,
        live: list[Binding],
        upserts: dict[str, Binding],
        removals: dict[str, Removal],
        feature_caps: tuple[str, ...],
    ) -> RegisterDecision:
        """The 200 OK: every remaining binding with its expires (RFC 3261 §10.3 step 8)."""
        kept = [b for b in live if b.key not in upserts and b.key not in removals]
        final = sorted([*kept, *upserts.values()], key=lambda b: (b.registered_at, b.key))
        gruu = any(tag.lower() == "gruu" for tag in ctx.request.supported)
        headers: list[tuple[str, str]] = [
            ("Contact", _contact_value(b, ctx.now, gruu=gruu)) for b in final
        ]
        # RFC 3327 §5.3: the registrar returns the Path it stored, in order.
        headers += [("Path", value) for value in ctx.request.headers.get_all("Path")]
        # RFC 8599 §5.6.1 / RFC 6809: one Feature-Caps per push provider.
        headers += [("Feature-Caps", value) for value in feature_caps]
        return RegisterDecision(
            200,
            "OK",
            tuple(headers),
            aor=ctx.aor,
            upserts=tuple(upserts.values()),
            removals=tuple(removals.values()),
            bindings=tuple(final),
        )


def _check_target(request: Request, domains: set[str]) -> str:
    """RFC 3261 §10.3 steps 1, 2 and 5: domain, Require, and the AOR from To."""
    ruri = request.uri
    if ruri.scheme not in ("sip", "sips") or ruri.host.lower() not in domains:
        raise _Reject(403, "Domain Not Served Here")
    unsupported = [tag for tag in request.require if tag.lower() not in SUPPORTED_OPTIONS]
    if unsupported:
        raise _Reject(420, "Bad Extension", (("Unsupported", ", ".join(unsupported)),))
    to = request.to.uri
    if to.scheme not in ("sip", "sips"):
        raise _Reject(400, "To Must Be a SIP or SIPS URI")
    if not to.user or to.host.lower() not in domains:
        raise _Reject(404, "Not Found")
    return to.aor


def _check_push(
    params: dict[str, str | None], supported: frozenset[str]
) -> tuple[PushTarget | None, tuple[str, ...]]:
    """Parse RFC 8599 push params: (target, provider labels to answer in Feature-Caps)."""
    if is_capability_query(params):
        asked = next((v for k, v in params.items() if k.lower() == "pn-provider"), None)
        label = (asked or "").strip().lower()
        if not label:
            return None, tuple(sorted(supported))  # RFC 8599 §4.1.5: "which do you have?"
        if label not in supported:
            raise _Reject(555, "Push Notification Service Not Supported")
        return None, (label,)
    try:
        push = parse_push_target(params)
    except UnsupportedProviderError as unsupported:
        raise _Reject(555, "Push Notification Service Not Supported") from unsupported
    except PushParamError as bad:
        raise _Reject(400, f"Bad Push Parameters: {bad.reason}") from bad
    if push is not None and push.provider_label not in supported:
        # RFC 8599 §5.6.1: no credentials for this provider, we cannot push to it.
        raise _Reject(555, "Push Notification Service Not Supported")
    return push, ()


def _contact_value(binding: Binding, now: float, *, gruu: bool) -> str:
    """One Contact of the 2xx: URI, remaining expires, q, instance, reg-id, pub-gruu."""
    value = f"<{binding.contact}>;expires={binding.remaining(now)}"
    if binding.q is not None:
        value += f";q={_format_q(binding.q)}"
    if binding.instance is not None:
        value += f';+sip.instance="{binding.instance}"'
        if binding.reg_id is not None:
            value += f";reg-id={binding.reg_id}"
        if gruu and binding.pub_gruu:
            # RFC 5627 §5.1: pub-gruu for each Contact with an instance when asked.
            value += f';pub-gruu="{binding.pub_gruu}"'
    return value


def _format_q(q: float) -> str:
    """RFC 3261 §20.10 qvalue: at most three decimals."""
    return f"{q:.3f}".rstrip("0").rstrip(".") or "0"


def _clean_reason(reason: str) -> str:
    """A reason phrase safe to put on a status line."""
    return _UNSAFE_REASON.sub(" ", reason).strip()[:160] or "Error"
