"""The asynchronous client against a real server."""

from __future__ import annotations

import pytest

from faas_sdk import AsyncFaaSClient, AuthenticationError, NotFoundError, NotSupportedError, ValidationError

from .conftest import Server


async def test_async_execute_stream_and_instances(server: Server, tenant_key: str) -> None:
    async with AsyncFaaSClient(base_url=server.url, api_key=tenant_key) as client:
        result = await client.execute("echo 'Hello!'")
        assert result.stdout == "Hello!\n"
        chunks = []
        async for event in client.stream("echo a; echo b"):
            if event.type == "stdout":
                chunks.append(event.data)
        assert "".join(chunks) == "a\nb\n"
        async with await client.instances.create() as instance:
            await instance.files.write("/home/user/f", b"x")
            assert (await instance.exec("cat /home/user/f")).stdout == "x"
        with pytest.raises(NotFoundError):
            await client.instances.get(instance.id)
        assert (await client.usage.current()).usage.records >= 1
        assert (await client.usage.records(limit=1))["records"]
        context = await client.contexts.create("python")
        await context.run("v = 5")
        assert (await context.run("print(v)")).stdout == "5\n"
        await context.delete()
        assert (await client.executions.get(result.id)).stdout == "Hello!\n"
        assert await client.pools.list() is not None
        with pytest.raises(NotFoundError):
            await client.executions.get("ex_missing")
        with pytest.raises(ValidationError):
            await client.execute("true", timeout_ms=0)
        with pytest.raises(NotSupportedError):
            await client.execute("true", network=True, on_stdout=print)
    async with AsyncFaaSClient(base_url=server.url, api_key="faas_nope") as stranger:
        with pytest.raises(AuthenticationError):
            await stranger.execute("true")
