"""The synchronous client against a real server."""

from __future__ import annotations

import time
from typing import List

import httpx
import pytest

from faas_sdk import (
    AuthenticationError,
    FaaSClient,
    NotFoundError,
    NotSupportedError,
    RateLimitError,
    ValidationError,
)

from .conftest import Server


@pytest.fixture()
def client(server: Server, tenant_key: str) -> FaaSClient:
    return FaaSClient(base_url=server.url, api_key=tenant_key)


def test_execute_a_command_string(client: FaaSClient) -> None:
    result = client.execute("echo 'Hello!'")
    assert result.stdout == "Hello!\n"
    assert result.ok and result.exit_code == 0 and result.status == "exited"
    assert result.mode == "ephemeral"
    assert result.usage.peak_memory_bytes > 0
    assert client.executions.get(result.id).stdout == "Hello!\n"


def test_run_code_in_cached_mode_and_argv(client: FaaSClient) -> None:
    result = client.run_code("print(6 * 7)", language="python", mode="cached")
    assert result.stdout == "42\n" and result.mode == "cached"
    argv = client.execute(["printf", "%s-%s", "a b", "c"])
    assert argv.stdout == "a b-c"
    failed = client.execute("exit 3")
    assert not failed.ok and failed.exit_code == 3


def test_output_streams_to_callbacks_and_iterators(client: FaaSClient) -> None:
    out: List[str] = []
    err: List[str] = []
    result = client.execute(
        "echo one; echo two >&2; echo three", on_stdout=out.append, on_stderr=err.append
    )
    assert "".join(out) == "one\nthree\n" and "".join(err) == "two\n"
    assert result.exit_code == 0
    # Line and paragraph separators travel raw in the events' JSON.
    odd = client.execute(code="print('a\\u2028b\\u2029c\\x85d')", language="python", on_stdout=out.append)
    assert odd.stdout == "a\u2028b\u2029c\x85d\n" and out[-1].endswith("d\n")
    with pytest.raises(NotSupportedError):
        client.execute("true", network=True, on_stdout=out.append)
    events = list(client.stream(code="print('hi')", language="python"))
    assert [e.type for e in events][-1] == "exit"
    assert "".join(e.data for e in events if e.type == "stdout") == "hi\n"


def test_errors_carry_the_api_code(server: Server, client: FaaSClient) -> None:
    with pytest.raises(AuthenticationError) as e401:
        FaaSClient(base_url=server.url, api_key="faas_nope").execute("true")
    assert e401.value.status == 401 and e401.value.code == "unauthorized"
    with pytest.raises(NotFoundError) as e404:
        client.executions.get("ex_missing")
    assert e404.value.code == "not_found" and e404.value.request_id
    with pytest.raises(ValidationError) as e422:
        client.execute("true", timeout_ms=0)
    assert e422.value.status == 422
    with pytest.raises(NotSupportedError) as e501:
        client.execute("true", network=True)
    assert e501.value.status == 501 and "network" in e501.value.message
    with pytest.raises(ValueError):
        client.execute("true", code="print(1)")


def test_a_rate_limited_key_gets_rate_limit_errors(server: Server) -> None:
    slow = FaaSClient(base_url=server.url, api_key=server.key("sdk-slow", "tiny"), max_retries=0)
    # A burst: the bucket (1 request, 1 a second) runs dry within a few calls.
    with pytest.raises(RateLimitError) as e429:
        for _ in range(5):
            slow.usage.current()
    assert e429.value.status == 429 and e429.value.retry_after is not None
    # With retries, an idempotent request waits for the bucket and succeeds.
    patient = FaaSClient(base_url=server.url, api_key=slow.api_key, max_retries=3)
    assert patient.usage.current().tenant == "sdk-slow"


def test_instances_exec_files_ports_and_snapshots(client: FaaSClient) -> None:
    with client.instances.create(metadata={"suite": "sdk"}) as instance:
        assert instance.status == "running"
        instance.files.write("/home/user/notes.txt", "kept\n")
        assert instance.files.read("/home/user/notes.txt") == b"kept\n"
        names = [e.name for e in instance.files.list("/home/user")]
        assert "notes.txt" in names
        assert instance.exec("cat notes.txt", workdir="/home/user").stdout == "kept\n"
        instance.exec(code="x = 41", language="python")
        assert [i.id for i in client.instances.list(metadata={"suite": "sdk"})] == [instance.id]

        instance.files.write("/home/user/site/index.html", "<p>hi</p>")
        instance.spawn("cd /home/user/site && exec python3 -m http.server 8000 --bind 127.0.0.1")
        url = instance.port_url(8000, "index.html")
        deadline = time.time() + 10
        while True:
            r = httpx.get(url, headers={"authorization": f"Bearer {client.api_key}"})
            if r.status_code == 200 or time.time() > deadline:
                break
            time.sleep(0.1)
        assert r.text == "<p>hi</p>"
        assert instance.ssh().command.startswith("ssh ")

        snapshot = instance.snapshot("sdk")
        assert client.snapshots.get(snapshot.id).kind == "memory"
        assert snapshot.id in [s.id for s in client.snapshots.list()]
        with client.snapshots.restore(snapshot.id) as copy:
            assert copy.exec("cat /home/user/notes.txt").stdout == "kept\n"
        branches = client.snapshots.branch(snapshot.id, 2)
        assert len(branches) == 2
        for branch in branches:
            with branch:
                assert branch.exec("cat /home/user/notes.txt").stdout == "kept\n"
        client.snapshots.delete(snapshot.id)
        assert instance.stop().status == "stopped"
        assert instance.start().status == "running"
    with pytest.raises(NotFoundError):
        client.instances.get(instance.id)


def test_contexts_pools_processes_and_merges(client: FaaSClient) -> None:
    context = client.contexts.create("python")
    context.run("total = 40")
    assert context.run("print(total + 2)").stdout == "42\n"
    assert context.id in [c.id for c in client.contexts.list()]
    context.delete()
    with pytest.raises(NotFoundError):
        client.contexts.get(context.id)
    pool = client.pools.prewarm(1)
    assert pool["target"] >= 1
    assert client.pools.list()

    with client.instances.create() as instance:
        process = instance.spawn("sleep 30")
        assert process.id in [p.id for p in instance.processes()]
        instance.kill(process.id, "SIGTERM")
        ended = instance.wait(process.id, timeout_ms=10_000)
        assert ended.status != "running" and ended.result is not None
        assert ended.result.signal == "SIGTERM"
        public = instance.expose(8000)
        assert "/p/" in public
        instance.unexpose(8000)
        base = instance.snapshot("base")
        branches = client.snapshots.branch(base.id, 2)
        branches[0].files.write("/home/user/a", "a")
        branches[1].files.write("/home/user/b", "b")
        merged = client.snapshots.merge(base.id, [b.id for b in branches])
        assert merged["snapshot"]["kind"] == "filesystem"
        tree = client.snapshots.tree(base.id)
        assert len(tree["instances"]) == 2
        for b in branches:
            b.delete()


def test_admin_keys_and_quotas(server: Server) -> None:
    from .conftest import ADMIN_KEY

    admin = FaaSClient(base_url=server.url, api_key=ADMIN_KEY)
    created = admin.keys.create("sdk-quota", name="q")
    assert created["key"].startswith("faas_")
    assert created["id"] in [k["id"] for k in admin.keys.list("sdk-quota")]
    status = admin.quotas.set("sdk-quota", max_instances=0)
    assert status["quotas"]["max_instances"] == 0
    tenant = FaaSClient(base_url=server.url, api_key=created["key"])
    assert tenant.quotas.get()["tenant"] == "sdk-quota"
    admin.keys.revoke(created["id"])
    with pytest.raises(AuthenticationError):
        tenant.usage.current()


def test_instance_contexts_archives_and_streamed_execs(client: FaaSClient) -> None:
    import io
    import tarfile

    with client.instances.create() as instance:
        context = instance.create_context("python")
        instance.exec(code="n = 20", language="python", context_id=context["id"])
        assert instance.exec(code="print(n * 2)", language="python", context_id=context["id"]).stdout == "40\n"
        assert [c["id"] for c in instance.contexts()] == [context["id"]]
        instance.delete_context(context["id"])
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            data = b"from a tar\n"
            info = tarfile.TarInfo("dir/file.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        instance.files.upload_tar("/home/user/unpacked", buffer.getvalue())
        assert instance.files.read("/home/user/unpacked/dir/file.txt") == b"from a tar\n"
        back = tarfile.open(fileobj=io.BytesIO(instance.files.download_tar("/home/user/unpacked")))
        assert any(name.endswith("dir/file.txt") for name in back.getnames())
        lines: List[str] = []
        streamed = instance.exec("echo a; echo b", on_stdout=lines.append)
        assert "".join(lines) == "a\nb\n" and streamed.exit_code == 0


def test_usage_reports_this_month(client: FaaSClient) -> None:
    client.execute("true")
    assert client.usage.records(limit=1)["records"]
    assert "total" in client.usage.report(group_by="mode")
    current = client.usage.current()
    assert current.tenant == "sdk-tests" and current.usage.records >= 1
    assert current.usage.cost_micros >= 0 and len(current.month) == 7
