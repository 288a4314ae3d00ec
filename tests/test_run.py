"""``run.py`` as a newcomer uses it: the embedded database, the CLI, signals, clean logs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from server.ops.embedded import free_port
from tests.support import Api, Socket

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def run_py(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run ``python run.py ...`` to completion."""
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        **kw,
    )


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    env.pop("MONGODB_URI", None)
    return env


async def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    client = AsyncHTTPClient()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if (await client.fetch(url + "/readyz", raise_error=False)).code == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("service did not become ready")


@pytest.mark.asyncio
async def test_newcomer_flow_with_the_embedded_database(tmp_path):
    port, data = free_port(), tmp_path / "data"
    env = clean_env()
    proc = subprocess.Popen(
        [sys.executable, "run.py", "--port", str(port), "--data-dir", str(data)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_ready(url, proc)
        made = run_py(
            "create-api-key", "--name", "newcomer", "--scopes", "notify,tokens,read",
            "--data-dir", str(data), env=env,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip().splitlines()[-1]
        assert key.startswith("nk_")
        api = Api(url, key)
        token = await api.token("p-1001")
        sock = await Socket.open(url, token)
        await sock.expect("welcome")
        secret_text = "Your biopsy result is benign"
        await api.post(
            "/v1/notifications",
            {"user_id": "p-1001", "type": "custom", "title": "Result", "message": secret_text},
            expect=201,
        )
        assert (await sock.expect("notification"))["notification"]["message"] == secret_text
        listed = run_py("list-api-keys", "--data-dir", str(data), env=env)
        assert "newcomer" in listed.stdout and key not in listed.stdout
        proc.send_signal(signal.SIGTERM)
        assert await sock.closed() == 1001
        output, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "7556" not in output or str(port) in output
    assert f"http://127.0.0.1:{port}" in output
    for leaked in (token, key, secret_text):
        assert leaked not in output
    assert not (data / "embedded.json").exists()


@pytest.mark.asyncio
async def test_data_survives_a_restart_and_sigint_also_stops_cleanly(tmp_path):
    port, data = free_port(), tmp_path / "data"
    env = clean_env()
    key = (
        run_py(
            "create-api-key",
            "--name",
            "k",
            "--scopes",
            "notify,read",
            "--data-dir",
            str(data),
            env=env,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    for round_ in range(2):
        proc = subprocess.Popen(
            [sys.executable, "run.py", "--port", str(port), "--data-dir", str(data)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            await wait_ready(url, proc)
            api = Api(url, key)
            if round_ == 0:
                await api.notify("p-1", "kept")
            feed = await api.get("/v1/users/p-1/notifications")
            assert [n["title"] for n in feed["items"]] == ["kept"]
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_production_mode_demands_a_token_secret(tmp_path):
    env = {**clean_env(), "NOTIFY_ENV": "production", "MONGODB_URI": "mongodb://127.0.0.1:1"}
    result = run_py("--data-dir", str(tmp_path), "--port", str(free_port()), env=env)
    assert result.returncode != 0
    assert "NOTIFY_TOKEN_SECRET" in result.stderr + result.stdout


def test_create_api_key_refuses_unknown_scopes(tmp_path):
    result = run_py(
        "create-api-key", "--name", "x", "--scopes", "notify,root", "--data-dir", str(tmp_path),
        env=clean_env(),
    )  # fmt: skip
    assert result.returncode == 2
    assert "root" in result.stdout


def test_revoke_api_key_by_id(tmp_path):
    env = clean_env()
    run_py(
        "create-api-key", "--name", "gone", "--scopes", "read", "--data-dir", str(tmp_path), env=env
    )
    listed = run_py("list-api-keys", "--data-dir", str(tmp_path), env=env).stdout
    key_id = listed.split()[0]
    assert run_py("revoke-api-key", key_id, "--data-dir", str(tmp_path), env=env).returncode == 0
    assert "revoked" in run_py("list-api-keys", "--data-dir", str(tmp_path), env=env).stdout
    assert run_py("revoke-api-key", "nope", "--data-dir", str(tmp_path), env=env).returncode == 1
