"""The `sipushd push-test` command, and the mapping from push config to push settings.

`push-test` sends one push with the credentials in the config file and
prints the provider's answer (status, reason, apns-id / message name): the
quickest way to check a .p8 key, a certificate or a service account before
a phone depends on it. Exit status 0 when the provider accepted the push,
1 otherwise. The mapping functions are shared with the composition root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from sipushd.config import ConfigError, load_config
from sipushd.config_schema import ApnsApp, FcmApp, PushConfig
from sipushd.core.payload import PayloadError, PayloadTemplate, PushKind, PushRequest, PushService
from sipushd.push.apns import ApnsProvider
from sipushd.push.base import PushError, PushOutcome, PushProvider, PushResult, TemporaryPushError
from sipushd.push.fcm import FcmProvider
from sipushd.push.mock import MockProvider
from sipushd.push.settings import (
    ApnsAppSettings,
    DispatcherSettings,
    FcmAppSettings,
    apns_endpoint_url,
    fcm_endpoint_url,
)

# --type -> (kind, APNs token service)
PUSH_TYPES = {
    "voip": (PushKind.CALL, PushService.VOIP),
    "alert": (PushKind.CALL, PushService.REMOTE),
    "background": (PushKind.REFRESH, PushService.REMOTE),
}


def apns_app_settings(app: ApnsApp) -> ApnsAppSettings:
    """Settings for one `push.apns` entry; raises PayloadError for a bad payload_template."""
    return ApnsAppSettings(
        team_id=app.team_id,
        bundle_id=app.bundle_id,
        key_file=app.key_file,
        key_id=app.key_id,
        cert_file=app.cert_file,
        endpoint=app.endpoint,
        ca_file=app.ca_file,
        template=PayloadTemplate.from_mapping(app.payload_template),
    )


def fcm_app_settings(app: FcmApp) -> FcmAppSettings:
    """Settings for one `push.fcm` entry; raises PayloadError for a bad payload_template."""
    return FcmAppSettings(
        project_id=app.project_id,
        service_account_file=app.service_account_file,
        endpoint=app.endpoint,
        ca_file=app.ca_file,
        template=PayloadTemplate.from_mapping(app.payload_template),
    )


def dispatcher_settings(push: PushConfig) -> DispatcherSettings:
    """Queue bound and per-provider concurrency from the `push` section."""
    return DispatcherSettings(max_queue=push.max_queue, concurrency=push.concurrency)


def build_providers(push: PushConfig) -> dict[str, PushProvider]:
    """Providers by name for the Dispatcher: the mock recorder takes both names when enabled."""
    if push.mock.enabled:
        templates = {
            a.bundle_id: PayloadTemplate.from_mapping(a.payload_template) for a in push.apns
        }
        templates |= {
            a.project_id: PayloadTemplate.from_mapping(a.payload_template) for a in push.fcm
        }
        mock = MockProvider(templates=templates)
        return {"apns": mock, "fcm": mock}
    providers: dict[str, PushProvider] = {}
    if push.apns:
        providers["apns"] = ApnsProvider([apns_app_settings(app) for app in push.apns])
    if push.fcm:
        providers["fcm"] = FcmProvider([fcm_app_settings(app) for app in push.fcm])
    return providers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `sipushd push-test`."""
    parser.add_argument("--config", required=True, type=Path, help="sipushd config file")
    parser.add_argument("--provider", required=True, choices=("apns", "fcm"))
    parser.add_argument("--app", required=True, help="bundle id (APNs) or project id (FCM)")
    parser.add_argument("--token", required=True, help="device token / registration token")
    parser.add_argument("--type", default="alert", choices=tuple(PUSH_TYPES), dest="push_type")
    parser.add_argument("--team", help="APNs team id, when several teams ship the bundle")
    parser.add_argument("--sandbox", action="store_true", help="APNs development environment")
    parser.add_argument("--ttl", type=float, default=30.0, help="push lifetime in seconds [30]")
    parser.add_argument(
        "--timeout", type=float, default=15.0, dest="answer_timeout", help="answer timeout [15 s]"
    )
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")


def run(args: argparse.Namespace) -> int:
    """Send one push; 0 when delivered, 1 otherwise."""
    try:
        config = load_config(args.config)
        provider, endpoint = _provider_for(config.push, args)
    except (ConfigError, PayloadError, ValueError, OSError) as exc:
        print(f"push-test: {exc}", file=sys.stderr)
        return 1
    request = _request(args)
    answer = asyncio.run(_send(provider, request, args.answer_timeout))
    answer = {"provider": args.provider, "app": args.app, "endpoint": endpoint, **answer}
    if args.json:
        print(json.dumps(answer))
    else:
        for key, value in answer.items():
            print(f"{key}: {'-' if value in (None, '') else value}")
    return 0 if answer["result"] == PushOutcome.DELIVERED.value else 1


def _provider_for(push: PushConfig, args: argparse.Namespace) -> tuple[PushProvider, str]:
    """The real provider for the chosen app only (the mock recorder is never used here)."""
    if args.provider == "apns":
        apps = [a for a in push.apns if a.bundle_id == args.app]
        if args.team:
            apps = [a for a in apps if a.team_id == args.team]
        if len(apps) != 1:
            configured = ", ".join(f"{a.team_id}.{a.bundle_id}" for a in push.apns) or "none"
            what = "several" if apps else "no"
            raise ValueError(f"{what} push.apns entries for {args.app} (configured: {configured})")
        args.team = apps[0].team_id
        url = apns_endpoint_url(apps[0].endpoint, args.sandbox)
        return ApnsProvider([apns_app_settings(apps[0])]), url
    fcm = [a for a in push.fcm if a.project_id == args.app]
    if not fcm:
        configured = ", ".join(a.project_id for a in push.fcm) or "none"
        raise ValueError(f"no push.fcm entry for {args.app} (configured: {configured})")
    return FcmProvider([fcm_app_settings(fcm[0])]), fcm_endpoint_url(fcm[0].endpoint)


def _request(args: argparse.Namespace) -> PushRequest:
    kind, service = PUSH_TYPES[args.push_type]
    return PushRequest(
        kind=kind,
        provider=args.provider,
        token=args.token,
        app_id=args.app,
        deadline=time.time() + args.ttl,
        team_id=args.team,
        service=service,
        sandbox=args.sandbox,
        caller_uri="sip:push-test@sipushd.invalid",
        caller_display="sipushd push-test",
        call_id="" if kind is PushKind.REFRESH else f"push-test-{uuid.uuid4()}",
    )


async def _send(provider: PushProvider, request: PushRequest, limit: float) -> dict[str, Any]:
    """One attempt, no retries: the operator wants the provider's own answer."""
    await provider.start()
    try:
        async with asyncio.timeout(limit):
            result = await provider.send(request)
    except TimeoutError:
        result = _failure(TemporaryPushError("timeout", detail=f"no answer in {limit:g} s"))
    except PushError as exc:
        result = _failure(exc)
    finally:
        await provider.stop()
    return {
        "result": result.outcome.value,
        "status": result.status,
        "reason": result.reason,
        "apns-id" if request.provider == "apns" else "message": result.push_id,
        "detail": result.detail,
    }


def _failure(exc: PushError) -> PushResult:
    return PushResult(PushOutcome.FAILED, "", exc.status, exc.reason, detail=exc.detail)
