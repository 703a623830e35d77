"""The `sipushd bindings` command: print the bindings in the configured store.

    sipushd bindings --config /etc/sipushd/sipushd.yaml [bob@example.org] [--json]

It opens the store the config names next to a running daemon (SQLite in WAL mode
lets a second connection read while the daemon writes), never creates one, and
prints every live binding per AOR: contact, instance, time left, flow, push
provider and app, push tokens shortened with `redact_token`, and user agent.
`--json` prints `{aor: [binding, ...]}` in the admin API's shape, for scripts.
Exit status: 0 (also when nothing is registered), 1 when the config or the
store cannot be read, 2 for a malformed AOR.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from sipushd.admin.api import BadRequest, binding_view, parse_aor
from sipushd.app import DEFAULT_CONFIG, open_store
from sipushd.config import Config, ConfigError, load_config
from sipushd.core.binding import Binding
from sipushd.logs import redact_token
from sipushd.store.base import BindingStore, StoreError
from sipushd.store.sqlite import SqliteBindingStore

__all__ = ["add_arguments", "collect", "format_binding", "run"]


class StoreUnavailable(Exception):
    """The configured store cannot be read; the message says why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `sipushd bindings`."""
    parser.add_argument(
        "-c", "--config", type=Path, default=DEFAULT_CONFIG, help=f"config file [{DEFAULT_CONFIG}]"
    )
    parser.add_argument(
        "aor", nargs="?", help="only this address of record (bob@example.org or sip:...)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def run(args: argparse.Namespace) -> int:
    """Print the bindings (all AORs, or `args.aor`)."""
    try:
        aor = parse_aor(args.aor) if args.aor is not None else None
    except BadRequest as exc:
        print(f"sipushd bindings: {exc}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config, check_files=False)
    except ConfigError as exc:
        print(f"sipushd bindings: {args.config}: invalid config:\n{exc}", file=sys.stderr)
        return 1
    now = time.time()
    try:
        found = asyncio.run(collect(config, aor, now))
    except StoreUnavailable as exc:
        print(f"sipushd bindings: {exc}", file=sys.stderr)
        return 1
    if args.json:
        views = {key: [binding_view(b, now) for b in items] for key, items in found.items()}
        print(json.dumps(views, indent=2, ensure_ascii=False))
    else:
        print(format_all(found, now), end="")
    return 0


async def collect(config: Config, aor: str | None, now: float) -> dict[str, list[Binding]]:
    """Live bindings per AOR from the configured store (only `aor` when given)."""
    store = await _open(config)
    try:
        aors = [aor] if aor is not None else await store.all_aors(now)
        return {key: await store.get(key, now) for key in aors}
    except StoreError as exc:
        raise StoreUnavailable(f"cannot read bindings: {exc}") from exc
    finally:
        await store.close()


async def _open(config: Config) -> BindingStore:
    """The configured store, without creating a database that is not there."""
    storage = config.storage
    try:
        if storage.backend != "sqlite":
            return await open_store(config)
        path = storage.sqlite.path
        if str(path) == ":memory:":
            raise StoreUnavailable(
                "storage.sqlite.path is :memory:: bindings live only inside the daemon"
            )
        if not path.is_file():
            raise StoreUnavailable(f"no binding database at {path} (has sipushd run?)")
        return await SqliteBindingStore.open(path)
    except (StoreError, ValueError) as exc:
        raise StoreUnavailable(str(exc)) from exc


def format_all(found: dict[str, list[Binding]], now: float) -> str:
    """The text report: one block per AOR, one indented block per binding."""
    if not found:
        return "no bindings\n"
    lines: list[str] = []
    for aor, bindings in found.items():
        count = len(bindings)
        lines.append(f"{aor}: {count or 'no'} binding{'s' * (count != 1)}")
        for binding in bindings:
            lines += [f"  {line}" for line in format_binding(binding, now)]
            lines.append("")
        if not bindings:
            lines.append("")
    return "\n".join(lines)


def format_binding(binding: Binding, now: float) -> list[str]:
    """Human lines for one binding; push tokens shortened."""
    view: dict[str, Any] = binding_view(binding, now)
    flow = binding.flow
    rows = [
        ("contact", view["contact"]),
        ("instance", binding.instance or "-"),
        ("expires in", f"{binding.remaining(now)} s"),
        ("flow", f"{flow.transport} {_host_port(flow.host, flow.port)}"),
    ]
    if binding.path:
        rows.append(("path", ", ".join(view["path"])))
    push = binding.push
    if push is None:
        rows.append(("push", "-"))
    else:
        team = f" (team {push.team_id})" if push.team_id else ""
        rows.append(("push", f"{push.provider_label} {push.app_id or '-'}{team}"))
        tokens = ", ".join(f"{service} {redact_token(token)}" for service, token in push.tokens)
        rows.append(("tokens", tokens or "-"))
    rows.append(("user agent", binding.user_agent or "-"))
    width = max(len(name) for name, _ in rows)
    return [f"{name:<{width}}  {value}" for name, value in rows]


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
