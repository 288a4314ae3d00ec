"""``run.py`` as a newcomer uses it: the embedded database, the CLI, signals, clean logs."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
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
DEFAULT_PORT = 7556  # the contract's (the seed's) port
SHUTDOWN = 90  # seconds a stopping service may take (its embedded database too) when loaded


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
        output, _ = await asyncio.to_thread(proc.communicate, timeout=SHUTDOWN)
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert f"http://127.0.0.1:{port}" in output
    if port != DEFAULT_PORT:  # --port replaced the default everywhere, the log included
        assert f":{DEFAULT_PORT}" not in output
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
            "notify,read,tokens",
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
            sock = await Socket.open(url, await api.token("p-1"))
            await sock.expect("welcome")
            proc.send_signal(signal.SIGINT if round_ == 0 else signal.SIGTERM)
            assert await sock.closed() == 1001  # going away: reconnect
            assert await asyncio.to_thread(proc.wait, SHUTDOWN) == 0
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


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds it
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def serve_until_ready(args: list[str], env: dict, cwd: Path, url: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        await wait_ready(url, proc)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc


async def stop(proc: subprocess.Popen) -> str:
    """SIGTERM, and the service's output once it exited 0 (killed, and a failure, if not)."""
    proc.send_signal(signal.SIGTERM)
    try:
        output, _ = await asyncio.to_thread(proc.communicate, timeout=SHUTDOWN)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        raise AssertionError(f"no exit {SHUTDOWN} s after SIGTERM:\n{output[-3000:]}") from None
    assert proc.returncode == 0, output
    return output


@pytest.mark.asyncio
async def test_defaults_port_7556_and_data_in_dot_data(tmp_path):
    """No --port, no --data-dir, no settings: the seed's port, and ./data of the folder it
    runs in (here a fresh one, so the data folder can only be the default's)."""
    if not port_is_free(DEFAULT_PORT):
        if os.environ.get("CI"):
            pytest.fail(f"port {DEFAULT_PORT} is taken on the CI machine")
        pytest.skip(f"port {DEFAULT_PORT} is in use here (another service runs on it)")
    url = f"http://127.0.0.1:{DEFAULT_PORT}"
    proc = await serve_until_ready([], clean_env(), tmp_path, url)
    try:
        assert (await AsyncHTTPClient().fetch(url + "/healthz")).code == 200
        data = tmp_path / "data"
        assert data.is_dir() and any(data.iterdir()), "the embedded database is not in ./data"
    finally:
        if proc.poll() is None:
            output = await stop(proc)
        else:
            output = proc.communicate()[0]
    assert url in output and port_is_free(DEFAULT_PORT)


@pytest.mark.asyncio
async def test_notify_port_sets_the_port(tmp_path):
    port = free_port()
    env = {**clean_env(), "NOTIFY_PORT": str(port)}
    url = f"http://127.0.0.1:{port}"
    proc = await serve_until_ready(["--data-dir", str(tmp_path / "d")], env, ROOT, url)
    output = await stop(proc)
    assert url in output and f":{DEFAULT_PORT}" not in output


@pytest.mark.asyncio
async def test_create_staff_as_a_process_then_that_account_signs_in(tmp_path):
    from tests.test_dashboard import Browser

    data, env, password = tmp_path / "data", clean_env(), "correct horse battery staple"
    made = await asyncio.to_thread(
        run_py,
        "create-staff", "--username", "dr-house", "--role", "admin", "--data-dir", str(data),
        env=env, input=password + "\n",
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    assert password not in made.stdout + made.stderr
    again = await asyncio.to_thread(
        run_py,
        "create-staff", "--username", "dr-house", "--role", "staff", "--data-dir", str(data),
        env=env, input="another password entirely\n",
    )  # fmt: skip
    assert again.returncode != 0  # an existing account is not overwritten without --reset
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = await serve_until_ready(["--port", str(port), "--data-dir", str(data)], env, ROOT, url)
    try:
        wrong = await Browser(url).post(
            "/dashboard/login", {"username": "dr-house", "password": "another password entirely"}
        )
        assert wrong.code != 302
        staff = Browser(url)
        await staff.login("dr-house", password)
        page = await staff.get("/dashboard/api-keys")  # an admin's page
        assert page.code == 200, page.code
    finally:
        output = await stop(proc)
    assert password not in output
