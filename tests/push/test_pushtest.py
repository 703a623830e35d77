"""`sipushd push-test` against the mock push service, with a config file written here."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from sipushd import cli
from sipushd.testing.mock_pns import MockPushService, write_test_service_account
from tests.push.helpers import BUNDLE, KEY_ID, PROJECT, TEAM, TOKEN

REPO = Path(__file__).resolve().parents[2]
Capture = pytest.CaptureFixture[str]


def write_config(directory: Path, pns: MockPushService, key: Path) -> Path:
    account = write_test_service_account(directory / "sa.json", pns.token_uri, PROJECT)
    config = directory / "sipushd.yaml"
    config.write_text(
        f"""
sip:
  domains: [example.org]
push:
  apns:
    - team_id: {TEAM}
      bundle_id: {BUNDLE}
      key_file: {key}
      key_id: {KEY_ID}
      endpoint: {pns.base_url}
      ca_file: {pns.ca_file}
      payload_template: {{call-id: "{{call_id}}"}}
  fcm:
    - project_id: {PROJECT}
      service_account_file: {account}
      endpoint: {pns.base_url}
      ca_file: {pns.ca_file}
"""
    )
    return config


@pytest.fixture
def config(pns: MockPushService, apns_key: tuple[Path, Path], tmp_path: Path) -> Path:
    """A config file pointing APNs and FCM at the mock push service."""
    return write_config(tmp_path, pns, apns_key[0])


async def push_test(capsys: Capture, *argv: str) -> tuple[int, str]:
    """Run the command in a worker thread (it runs its own event loop); its status and stdout."""
    args = cli.build_parser().parse_args(["push-test", *argv])
    capsys.readouterr()
    status: int = await asyncio.to_thread(args._module.run, args)
    return status, capsys.readouterr().out


@pytest.mark.asyncio
async def test_apns_voip_push_is_delivered(
    pns: MockPushService, config: Path, capsys: Capture
) -> None:
    status, output = await push_test(
        capsys,
        "--config", str(config), "--provider", "apns", "--app", BUNDLE,
        "--token", TOKEN, "--type", "voip", "--json",
    )  # fmt: skip
    assert status == 0, output
    answer = json.loads(output)
    assert answer["result"] == "delivered" and answer["status"] == 200
    push = await pns.wait_for_push()
    assert answer["apns-id"] == push.headers["apns-id"]
    assert push.headers["apns-topic"] == f"{BUNDLE}.voip"
    assert push.headers["apns-push-type"] == "voip"
    assert "call-id" in push.payload  # the app's payload template applied


@pytest.mark.asyncio
async def test_dead_apns_token_exits_1_with_the_reason(
    pns: MockPushService, config: Path, capsys: Capture
) -> None:
    pns.set_rules([f"token={TOKEN}:410:Unregistered"])
    status, output = await push_test(
        capsys,
        "--config", str(config), "--provider", "apns", "--app", BUNDLE, "--token", TOKEN,
    )  # fmt: skip
    assert status == 1
    assert "result: dead_token" in output
    assert "status: 410" in output and "reason: Unregistered" in output


@pytest.mark.asyncio
async def test_fcm_background_push(pns: MockPushService, config: Path, capsys: Capture) -> None:
    status, output = await push_test(
        capsys,
        "--config", str(config), "--provider", "fcm", "--app", PROJECT,
        "--token", "fcm-token", "--type", "background",
    )  # fmt: skip
    assert status == 0, output
    assert f"message: projects/{PROJECT}/messages/" in output
    push = await pns.wait_for_push()
    assert push.payload["message"]["data"]["kind"] == "refresh"


@pytest.mark.asyncio
async def test_unknown_app_and_bad_config(
    pns: MockPushService, config: Path, capsys: Capture
) -> None:
    status, _ = await push_test(
        capsys,
        "--config",
        str(config),
        "--provider",
        "apns",
        "--app",
        "org.other",
        "--token",
        TOKEN,
    )
    assert status == 1
    status, _ = await push_test(
        capsys,
        "--config", str(config.with_name("missing.yaml")), "--provider", "fcm", "--app", PROJECT,
        "--token", TOKEN,
    )  # fmt: skip
    assert status == 1
    assert pns.pushes == []


@pytest.mark.asyncio
async def test_command_line(pns: MockPushService, config: Path, capsys: Capture) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sipushd", "push-test", "--config", str(config),
        "--provider", "apns", "--app", BUNDLE, "--token", TOKEN, "--type", "alert",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert "status: 200" in stdout.decode()
    push = await pns.wait_for_push()
    assert push.headers["apns-push-type"] == "alert"
