"""The admin API: what /metrics, /health and the JSON routes answer.

One job: map HTTP requests to questions about the running daemon. Rules:

- When `admin.token` is set every route needs `Authorization: Bearer <token>`
  (RFC 6750 §2.1), /metrics included (Prometheus sends it with
  `authorization: {credentials: ...}`). Only /health answers without it, and
  then only with its status, so load-balancer probes need no secret.
  The token is read from the daemon's current config, so a reload changes it.
- Push tokens never leave in full: binding tokens and `pn-prid`/`pn-tok` URI
  parameters are shortened with `redact_token`.
- An AOR in a path may be written `bob@example.org` or `sip:bob@example.org`
  (percent-encoded or not).
- Unknown path: 404; known path, wrong method: 405 with Allow; bad JSON: 400.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hmac
import inspect
import json
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import structlog

from sipushd import __version__, metrics
from sipushd.admin.http import HttpRequest, HttpResponse, HttpServer, json_response
from sipushd.config import Config
from sipushd.core.binding import Binding, binding_to_json, normalise_instance
from sipushd.core.payload import PushKind, PushRequest
from sipushd.logs import TOKEN_KEYS, redact_token
from sipushd.push.dispatcher import Dispatcher
from sipushd.pushtest import PUSH_TYPES
from sipushd.sip import Endpoint, SipParseError, parse_uri
from sipushd.sip.value import Value
from sipushd.store.base import BindingStore, StoreError
from sipushd.transport import TransportManager

__all__ = ["AdminApi", "AdminServer", "DaemonView", "parse_aor", "refresh_gauges"]

log = structlog.get_logger("sipushd.admin")

_HEALTH_TIMEOUT = 2.0
_MAX_PUSH_TTL = 300.0
# RFC 8599 §4.1: pn-prid carries the device token; legacy pn-tok likewise.
_URI_TOKEN = re.compile(r"(?i)(pn-(?:prid|tok)=)([^;>\s\"',?]+)")

Params = dict[str, str]
Route = Callable[[HttpRequest, Params], Awaitable[HttpResponse]]


class DaemonView(Protocol):
    """What the admin API reads from the daemon (`sipushd.app.Daemon`)."""

    @property
    def config(self) -> Config: ...
    @property
    def store(self) -> BindingStore | None: ...
    @property
    def transport(self) -> TransportManager | None: ...
    @property
    def dispatcher(self) -> Dispatcher | None: ...
    @property
    def listeners(self) -> list[Endpoint]: ...
    @property
    def stopping(self) -> bool: ...


class BadRequest(Exception):
    """The request is malformed; the message says how."""


def parse_aor(text: str) -> str:
    """The registrar key ("sip:user@host") of an AOR written with or without "sip:"."""
    text = text.strip()
    if not text.lower().startswith(("sip:", "sips:")):
        text = "sip:" + text
    try:
        uri = parse_uri(text)
    except SipParseError as exc:
        raise BadRequest(f"bad AOR: {exc}") from None
    if uri.user is None or uri.scheme not in ("sip", "sips"):
        raise BadRequest("bad AOR: expected user@domain")
    return uri.aor


def _redact_uri(text: str) -> str:
    return _URI_TOKEN.sub(lambda m: m.group(1) + redact_token(m.group(2)), text)


def binding_view(binding: Binding, now: float) -> dict[str, Any]:
    """A binding as the API shows it: push tokens shortened, seconds left added."""
    data = binding_to_json(binding)
    data["contact"] = _redact_uri(binding.contact)
    data["path"] = [_redact_uri(p) for p in binding.path]
    if data["push"] is not None:
        data["push"]["tokens"] = [[s, redact_token(t)] for s, t in data["push"]["tokens"]]
    data["expires_in"] = binding.remaining(now)
    return data


def jsonable(value: Any, key: str = "") -> Any:
    """Plain JSON data for a value another service returned; push tokens shortened."""
    if key.lower() in TOKEN_KEYS and isinstance(value, str):
        return redact_token(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    elif isinstance(value, Value):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item, key) for item in value]
    if isinstance(value, enum.Enum):
        return jsonable(value.value, key)
    if isinstance(value, bytes):
        return len(value)  # bodies stay private: show their size
    if isinstance(value, str):
        return _redact_uri(value) if "pn-" in value.lower() else value
    if value is None or isinstance(value, bool | int | float):
        return value if not (isinstance(value, float) and not math.isfinite(value)) else None
    return _redact_uri(str(value))


async def refresh_gauges(daemon: DaemonView, now: float) -> None:
    """Set the gauges that are cheap to compute at scrape time: bindings and connections."""
    store = daemon.store
    if store is not None:
        try:
            bindings = await store.expiring(now, math.inf)
        except StoreError as exc:
            log.warning("bindings gauge not refreshed", error=str(exc))
        else:
            counts = Counter(
                (metrics.bool_label(b.push is not None), b.push.provider if b.push else "none")
                for b in bindings
            )
            metrics.BINDINGS.clear()
            for (with_push, provider), count in counts.items():
                metrics.BINDINGS.labels(with_push=with_push, provider=provider).set(count)
    if daemon.transport is not None:
        for name, count in daemon.transport.stats().connections.items():
            metrics.CONNECTIONS.labels(transport=name).set(count)


def _json_body(request: HttpRequest) -> dict[str, Any]:
    try:
        data = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"bad JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("expected a JSON object")
    return data


_REQUIRED: Any = object()


def _field(
    data: Mapping[str, Any], name: str, kinds: tuple[type, ...], default: Any = _REQUIRED
) -> Any:
    """`data[name]` checked against `kinds` (bool is not a number here)."""
    if name not in data or (data[name] is None and default is None):
        if default is _REQUIRED:
            raise BadRequest(f"{name!r} is required")
        return default
    value = data[name]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(kind.__name__ for kind in kinds)
        raise BadRequest(f"{name!r} must be a {names}")
    return value


class AdminApi:
    """Routes admin HTTP requests to the daemon."""

    def __init__(self, daemon: DaemonView, clock: Callable[[], float] = time.time) -> None:
        self.daemon = daemon
        self.clock = clock
        self.started = clock()
        self.routes: list[tuple[str, tuple[str, ...], Route]] = [
            ("GET", ("metrics",), self.get_metrics),
            ("GET", ("health",), self.get_health),
            ("GET", ("bindings",), self.get_aors),
            ("GET", ("bindings", "{aor}"), self.get_bindings),
            ("DELETE", ("bindings", "{aor}", "{instance}"), self.delete_binding),
            ("GET", ("held",), self.get_held),
            ("GET", ("messages", "{aor}"), self.get_messages),
            ("POST", ("push-test",), self.post_push_test),
        ]

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """Answer one request."""
        authorised = self._authorised(request)
        if request.segments == ("health",) and request.method in ("GET", "HEAD"):
            return await self.get_health(request, {}, details=authorised)
        if not authorised:
            return self._unauthorised(request)
        method = "GET" if request.method == "HEAD" else request.method
        allowed: list[str] = []
        for route_method, pattern, route in self.routes:
            params = _match(pattern, request.segments)
            if params is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            try:
                return await route(request, params)
            except BadRequest as exc:
                return json_response(400, {"error": str(exc)})
        if allowed:
            methods = set(allowed) | ({"HEAD"} if "GET" in allowed else set())
            allow = ", ".join(sorted(methods))
            return json_response(405, {"error": "method not allowed"}, (("Allow", allow),))
        return json_response(404, {"error": "not found"})

    def _authorised(self, request: HttpRequest) -> bool:
        token = self.daemon.config.admin.token
        if token is None:
            return True
        scheme, _, given = (request.header("authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        expected = token.get_secret_value().encode()
        return hmac.compare_digest(given.strip().encode(), expected)

    def _unauthorised(self, request: HttpRequest) -> HttpResponse:
        # RFC 6750 §3: no credentials -> bare challenge; wrong ones -> invalid_token.
        challenge = 'Bearer realm="sipushd"'
        if request.header("authorization"):
            challenge += ', error="invalid_token"'
        return json_response(401, {"error": "unauthorized"}, (("WWW-Authenticate", challenge),))

    async def get_metrics(self, request: HttpRequest, params: Params) -> HttpResponse:
        """Prometheus text exposition."""
        await refresh_gauges(self.daemon, self.clock())
        return HttpResponse(200, metrics.render(), metrics.CONTENT_TYPE)

    async def get_health(
        self, request: HttpRequest, params: Params, *, details: bool = True
    ) -> HttpResponse:
        """200 when the listeners are up and the store answers, else 503."""
        daemon = self.daemon
        checks: dict[str, str] = {}
        up = bool(daemon.listeners) and daemon.transport is not None
        checks["listeners"] = "ok" if up else "down"
        checks["store"], count = await self._store_check()
        checks["state"] = "stopping" if daemon.stopping else "running"
        healthy = up and checks["store"] == "ok" and not daemon.stopping
        body: dict[str, Any] = {"status": "ok" if healthy else "unavailable"}
        if details:
            body |= {
                "version": __version__,
                "uptime": round(self.clock() - self.started, 3),
                "checks": checks,
                "listeners": [f"{e.transport}:{e.host}:{e.port}" for e in daemon.listeners],
                "bindings": count,
            }
        return json_response(200 if healthy else 503, body)

    async def _store_check(self) -> tuple[str, int | None]:
        store = self.daemon.store
        if store is None:
            return "missing", None
        try:
            async with asyncio.timeout(_HEALTH_TIMEOUT):
                return "ok", await store.count(self.clock())
        except TimeoutError:
            return "timeout", None
        except Exception as exc:  # any backend failure means "unhealthy", never a 500
            return f"error: {exc}", None

    async def get_aors(self, request: HttpRequest, params: Params) -> HttpResponse:
        """Every AOR with a live binding."""
        store = self._store()
        aors = await store.all_aors(self.clock())
        return json_response(200, {"aors": aors, "count": len(aors)})

    async def get_bindings(self, request: HttpRequest, params: Params) -> HttpResponse:
        """The AOR's live bindings, push tokens shortened."""
        aor = parse_aor(params["aor"])
        now = self.clock()
        bindings = await self._store().get(aor, now)
        return json_response(200, [binding_view(b, now) for b in bindings])

    async def delete_binding(self, request: HttpRequest, params: Params) -> HttpResponse:
        """Remove one binding, named by its +sip.instance or its key (Contact address)."""
        aor = parse_aor(params["aor"])
        name = params["instance"]
        instance = normalise_instance(name)
        now = self.clock()
        store = self._store()
        found = [b for b in await store.get(aor, now) if b.key == name or b.instance == instance]
        if not found:
            return json_response(404, {"error": f"no binding {name!r} for {aor}"})
        try:
            await store.apply(aor, (), [b.key for b in found])
        except StoreError as exc:
            return json_response(503, {"error": f"binding store failed: {exc}"})
        log.info("binding removed by admin", aor=aor, key=found[0].key)
        return json_response(200, {"removed": [binding_view(b, now) for b in found]})

    async def get_held(self, request: HttpRequest, params: Params) -> HttpResponse:
        """Requests held while phones wake up (from the proxy's `held()`)."""
        proxy = getattr(self.daemon, "proxy", None)
        held = getattr(proxy, "held", None)
        if not callable(held):
            note = "no proxy" if proxy is None else "this proxy does not list held requests"
            return json_response(200, {"held": [], "note": note})
        return json_response(200, {"held": jsonable(await _maybe_await(held()))})

    async def get_messages(self, request: HttpRequest, params: Params) -> HttpResponse:
        """MESSAGEs stored for the AOR's bound devices, with the devices still waiting."""
        aor = parse_aor(params["aor"])
        store = getattr(self.daemon, "message_store", None)
        if store is None:
            body = {"aor": aor, "messages": [], "note": "no message store in this daemon"}
            return json_response(200, body)
        now = self.clock()
        found: dict[str, Any] = {}
        for binding in await self._store().get(aor, now):
            for message in await store.pending(aor, binding.key, now):
                found.setdefault(message.id, message)
        messages = []
        for message in sorted(found.values(), key=lambda m: m.arrived_at):
            view = jsonable(message)
            view["size"] = view.pop("data")  # the body stays private
            view["waiting"] = jsonable(await store.waiting(message.id))
            messages.append(view)
        count = await store.count(aor, now)
        return json_response(200, {"aor": aor, "count": count, "messages": messages})

    async def post_push_test(self, request: HttpRequest, params: Params) -> HttpResponse:
        """Send one push through the dispatcher and answer the provider's result."""
        push = _push_request(_json_body(request), self.clock())
        dispatcher = self.daemon.dispatcher
        if dispatcher is None:
            return json_response(503, {"error": "no push dispatcher"})
        result = await dispatcher.push(push)
        return json_response(
            200,
            {
                "result": result.outcome.value,
                "provider": push.provider,
                "app": push.app_id,
                "token": redact_token(push.token),
                "status": result.status,
                "reason": result.reason,
                "push_id": result.push_id,
                "attempts": result.attempts,
                "latency_ms": round(result.latency * 1000, 1),
                "detail": result.detail,
            },
        )

    def _store(self) -> BindingStore:
        if self.daemon.store is None:
            raise BadRequest("the daemon has no binding store")
        return self.daemon.store


def _push_request(data: Mapping[str, Any], now: float) -> PushRequest:
    provider = _field(data, "provider", (str,))
    if provider not in ("apns", "fcm"):
        raise BadRequest("'provider' must be apns or fcm")
    push_type = _field(data, "type", (str,), "alert")
    if push_type not in PUSH_TYPES:
        raise BadRequest(f"'type' must be one of {', '.join(PUSH_TYPES)}")
    app = _field(data, "app", (str,))
    token = _field(data, "token", (str,))
    if not app or not token:
        raise BadRequest("'app' and 'token' must not be empty")
    ttl = _field(data, "ttl", (int, float), 30.0)
    if not 0 < ttl <= _MAX_PUSH_TTL:
        raise BadRequest(f"'ttl' must be in (0, {_MAX_PUSH_TTL:g}] seconds")
    kind, service = PUSH_TYPES[push_type]
    return PushRequest(
        kind=kind,
        provider=provider,
        token=token,
        app_id=app,
        deadline=now + ttl,
        team_id=_field(data, "team", (str,), None),
        service=service,
        sandbox=_field(data, "sandbox", (bool,), False),
        caller_uri="sip:push-test@sipushd.invalid",
        caller_display="sipushd push-test",
        call_id="" if kind is PushKind.REFRESH else f"push-test-{uuid.uuid4()}",
    )


def _match(pattern: Sequence[str], segments: Sequence[str]) -> Params | None:
    if len(pattern) != len(segments):
        return None
    params: Params = {}
    for part, segment in zip(pattern, segments, strict=True):
        if part.startswith("{"):
            params[part[1:-1]] = segment
        elif part != segment:
            return None
    return params


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class AdminServer:
    """The admin HTTP server of one daemon."""

    def __init__(self, daemon: DaemonView) -> None:
        self.api = AdminApi(daemon)
        self.http = HttpServer(self.api.handle)

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port (0: any free port)."""
        await self.http.start(host, port)
        host, port = self.http.address
        log.info("admin listening", host=host, port=port)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the admin server listens on."""
        return self.http.address

    async def close(self) -> None:
        """Stop serving."""
        await self.http.close()
