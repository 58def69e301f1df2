"""A real faas server for the SDK's tests: started once per session (root needed), with
its own data, run dir and cgroup parent; the tests talk to it over HTTP."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]
ADMIN_KEY = "faas_sdk_test_admin_key_0123456789abcdef"


class Server:
    def __init__(self, url: str, process: "subprocess.Popen[str]") -> None:
        self.url = url
        self.process = process

    def key(self, tenant: str, rate_tier: "str | None" = None) -> str:
        body = {"tenant": tenant, **({"rate_tier": rate_tier} if rate_tier else {})}
        r = httpx.post(f"{self.url}/api/v1/keys", json=body, headers={"authorization": f"Bearer {ADMIN_KEY}"})
        r.raise_for_status()
        return str(r.json()["key"])


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    if os.geteuid() != 0:
        pytest.skip("the SDK tests start a real server: they need root (namespaces, cgroups)")
    binary = Path(os.environ.get("FAAS_BIN", ROOT / "target/debug/faas"))
    agent = Path(os.environ.get("FAAS_AGENT", ROOT / "target/debug/faas-agent"))
    if not binary.exists():
        pytest.fail(f"no faas binary at {binary}: build it (cargo build -p faas-cli) or set FAAS_BIN")
    base = Path(tempfile.mkdtemp(prefix="faas-sdk-test-"))
    config = base / "config.toml"
    config.write_text(
        f'listen = "127.0.0.1:0"\ndata_dir = "{base}/data"\nrun_dir = "{base}/run"\n'
        f'cgroup_parent = "faas-sdk-{os.getpid()}"\nagent_path = "{agent}"\n'
        "[ssh]\nlisten = \"127.0.0.1:0\"\n"
        "[rate_limits.tiers.default]\nper_second = 200\nburst = 400\n"
        "[rate_limits.tiers.admin]\nper_second = 200\nburst = 400\n"
        "[rate_limits.tiers.tiny]\nper_second = 1\nburst = 1\n"
    )
    env = {**os.environ, "FAAS_API_KEY": ADMIN_KEY}
    process = subprocess.Popen(
        [str(binary), "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        preexec_fn=_die_with_parent,
    )
    url = None
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("faas listening on "):
            url = line.split("faas listening on ", 1)[1].strip()
            break
    if url is None:
        process.kill()
        pytest.fail("the server did not start")
    # Keep draining its output so it never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in process.stdout or []], daemon=True).start()
    yield Server(url, process)
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    shutil.rmtree(base, ignore_errors=True)


def _die_with_parent() -> None:
    """The server gets SIGTERM when the test process dies, however it dies."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@pytest.fixture(scope="session")
def tenant_key(server: Server) -> str:
    return server.key("sdk-tests")
