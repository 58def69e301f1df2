"""The asynchronous client: `AsyncFaaSClient`, the same surface as `FaaSClient` with
`await` (and `async for` over streams)."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, AsyncIterator, Callable, Dict, List, Mapping, Optional, Type

import httpx

from . import _base
from ._base import Command
from .errors import ConnectionError, FaaSError, NotFoundError, stream_error
from .models import (
    CurrentUsage,
    ExecutionResult,
    FileEntry,
    InstanceInfo,
    Json,
    Process,
    Snapshot,
    SshAccess,
    StreamEvent,
)

OutputCallback = Callable[[str], None]


class AsyncFaaSClient:
    """A faas server, asynchronously. See `FaaSClient` for the arguments and retries."""

    def __init__(
        self,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        timeout: float = 330.0,
        max_retries: int = 2,
        http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        self.base_url, self.api_key = _base.settings(base_url, api_key)
        self.max_retries = max_retries
        self._http = http_client or httpx.AsyncClient(timeout=timeout)
        self._headers = _base.headers(self.api_key)
        self.instances = AsyncInstances(self)
        self.snapshots = AsyncSnapshots(self)
        self.usage = AsyncUsageAPI(self)
        self.executions = AsyncExecutions(self)
        self.contexts = AsyncContexts(self)
        self.pools = AsyncPools(self)
        self.keys = AsyncKeys(self)
        self.quotas = AsyncQuotas(self)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncFaaSClient":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Optional[Mapping[str, Any]] = None,
        json: Optional[Any] = None,
        content: Optional[bytes] = None,
    ) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    method, self.base_url + path, params=params, json=json, content=content,
                    headers=self._headers,
                )
            except httpx.TimeoutException as e:
                raise ConnectionError(f"{method} {path}: timed out", code="timeout") from e
            except httpx.TransportError as e:
                if _base.should_retry(method, attempt, self.max_retries, None):
                    await asyncio.sleep(_base.backoff(attempt, None))
                    attempt += 1
                    continue
                raise ConnectionError(f"{method} {path}: {e}", code="connection") from e
            if response.status_code >= 400 and _base.should_retry(
                method, attempt, self.max_retries, response.status_code
            ):
                await asyncio.sleep(_base.backoff(attempt, _base.retry_after(response)))
                attempt += 1
                continue
            if _base.retried_delete_done(method, attempt, response.status_code):
                return response
            _base.raise_for(response)
            return response

    async def _json(self, method: str, path: str, **kw: Any) -> Json:
        value = (await self._request(method, path, **kw)).json()
        if not isinstance(value, dict):
            raise FaaSError(f"unexpected answer to {method} {path}", code="bad_answer")
        return value

    async def _stream(self, path: str, payload: Json) -> AsyncIterator[StreamEvent]:
        try:
            async with self._http.stream(
                "POST", self.base_url + path, json=payload, headers=self._headers
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _base.raise_for(response)
                parser = _base.SseParser()
                async for chunk in response.aiter_text():
                    for event in parser.feed(chunk):
                        yield StreamEvent.from_json(event)
                for event in parser.close():
                    yield StreamEvent.from_json(event)
        except httpx.TransportError as e:
            raise ConnectionError(f"POST {path}: {e}", code="connection") from e

    async def execute(
        self,
        command: Optional[Command] = None,
        *,
        code: Optional[str] = None,
        language: Optional[str] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        **options: Any,
    ) -> ExecutionResult:
        """As `FaaSClient.execute` (`mode`, `image`, `stdin`, `env`, `timeout_ms`, ... in
        `options`)."""
        payload = _base.run_fields(command, code, language, options)
        if on_stdout is None and on_stderr is None:
            return ExecutionResult.from_json(await self._json("POST", "/api/v1/execute", json=payload))
        return await _follow(self._stream("/api/v1/execute/stream", payload), on_stdout, on_stderr)

    async def run_code(self, code: str, language: str = "python", **kw: Any) -> ExecutionResult:
        return await self.execute(code=code, language=language, **kw)

    def stream(
        self, command: Optional[Command] = None, *, code: Optional[str] = None,
        language: Optional[str] = None, **options: Any,
    ) -> AsyncIterator[StreamEvent]:
        """`async for event in client.stream(...)`: output as produced, then `exit`."""
        payload = _base.run_fields(command, code, language, options)
        return self._stream("/api/v1/execute/stream", payload)

    async def health(self) -> Json:
        return await self._json("GET", "/health")


async def _follow(
    events: AsyncIterator[StreamEvent],
    on_stdout: Optional[OutputCallback],
    on_stderr: Optional[OutputCallback],
) -> ExecutionResult:
    async for event in events:
        if event.type == "stdout" and on_stdout is not None:
            on_stdout(event.data)
        elif event.type == "stderr" and on_stderr is not None:
            on_stderr(event.data)
        elif event.type == "exit" and event.result is not None:
            return event.result
        elif event.type == "error":
            raise stream_error(event.error_code or "internal", event.data)
    raise FaaSError("the stream ended without a result", code="bad_stream")


class AsyncFiles:
    def __init__(self, instance: "AsyncInstance") -> None:
        self._i = instance

    async def write(self, path: str, data: "bytes | str") -> None:
        content = data.encode() if isinstance(data, str) else data
        await self._i._client._request("PUT", self._i._path("/files"), params={"path": path}, content=content)

    async def read(self, path: str) -> bytes:
        return (await self._i._client._request("GET", self._i._path("/files"), params={"path": path})).content

    async def list(self, path: str = "/home/user") -> List[FileEntry]:
        answer = await self._i._client._json("GET", self._i._path("/files/list"), params={"path": path})
        entries = answer.get("entries")
        return [FileEntry.from_json(e) for e in entries] if isinstance(entries, list) else []

    async def delete(self, path: str, recursive: bool = False) -> None:
        params = {"path": path, "recursive": "true" if recursive else "false"}
        await self._i._client._request("DELETE", self._i._path("/files"), params=params)

    async def upload_tar(self, path: str, archive: bytes) -> None:
        await self._i._client._request(
            "PUT", self._i._path("/files/archive"), params={"path": path}, content=archive
        )

    async def download_tar(self, path: str) -> bytes:
        response = await self._i._client._request(
            "GET", self._i._path("/files/archive"), params={"path": path}
        )
        return response.content


class AsyncInstance:
    """A persistent instance; `async with` deletes it at the end."""

    def __init__(self, client: AsyncFaaSClient, info: InstanceInfo) -> None:
        self._client = client
        self.info = info
        self.files = AsyncFiles(self)

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def status(self) -> str:
        return self.info.status

    def _path(self, suffix: str = "") -> str:
        return f"/api/v1/instances/{_base.segment(self.id)}{suffix}"

    def _update(self, answer: Json) -> "AsyncInstance":
        self.info = InstanceInfo.from_json(answer)
        return self

    async def refresh(self) -> "AsyncInstance":
        return self._update(await self._client._json("GET", self._path()))

    async def exec(
        self,
        command: Optional[Command] = None,
        *,
        code: Optional[str] = None,
        language: Optional[str] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        **options: Any,
    ) -> ExecutionResult:
        payload = _base.run_fields(command, code, language, options)
        if on_stdout is None and on_stderr is None:
            return ExecutionResult.from_json(await self._client._json("POST", self._path("/exec"), json=payload))
        return await _follow(self._client._stream(self._path("/exec/stream"), payload), on_stdout, on_stderr)

    async def spawn(self, command: Command, **options: Any) -> Process:
        payload = _base.run_fields(command, None, None, {**options, "background": True})
        return Process.from_json(await self._client._json("POST", self._path("/exec"), json=payload))

    async def processes(self) -> List[Process]:
        items = (await self._client._json("GET", self._path("/processes"))).get("processes")
        return [Process.from_json(p) for p in items] if isinstance(items, list) else []

    async def wait(self, process_id: str, timeout_ms: Optional[int] = None) -> Process:
        path = self._path(f"/processes/{_base.segment(process_id)}/wait")
        return Process.from_json(await self._client._json("POST", path, params=_base.body(timeout_ms=timeout_ms)))

    async def kill(self, process_id: str, signal: "str | int | None" = None) -> Process:
        path = self._path(f"/processes/{_base.segment(process_id)}/kill")
        return Process.from_json(await self._client._json("POST", path, json=_base.body(signal=signal)))

    async def create_context(self, language: str = "python", **options: Any) -> Json:
        payload = _base.body(language=language, **options)
        return await self._client._json("POST", self._path("/contexts"), json=payload)

    async def contexts(self) -> List[Json]:
        items = (await self._client._json("GET", self._path("/contexts"))).get("contexts")
        return [c for c in items if isinstance(c, dict)] if isinstance(items, list) else []

    async def delete_context(self, context_id: str) -> None:
        await self._client._request("DELETE", self._path(f"/contexts/{_base.segment(context_id)}"))

    def port_url(self, port: int, path: str = "") -> str:
        return f"{self._client.base_url}{self._path(f'/ports/{port}/')}{path.lstrip('/')}"

    async def expose(self, port: int) -> str:
        answer = await self._client._json("POST", self._path("/public-ports"), json={"port": port})
        return str(answer.get("url", ""))

    async def unexpose(self, port: int) -> None:
        await self._client._request("DELETE", self._path(f"/public-ports/{port}"))

    async def ssh(self) -> SshAccess:
        return SshAccess.from_json(await self._client._json("GET", self._path("/ssh")))

    async def snapshot(
        self, name: Optional[str] = None, *, stop: bool = False,
        metadata: Optional[Dict[str, str]] = None,
    ) -> Snapshot:
        payload = _base.body(instance_id=self.id, name=name, stop=stop or None, metadata=metadata)
        return Snapshot.from_json(await self._client._json("POST", "/api/v1/snapshots", json=payload))

    async def stop(self) -> "AsyncInstance":
        return self._update(await self._client._json("POST", self._path("/stop")))

    async def start(self) -> "AsyncInstance":
        return self._update(await self._client._json("POST", self._path("/start")))

    async def delete(self) -> None:
        await self._client._request("DELETE", self._path())

    async def __aenter__(self) -> "AsyncInstance":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        try:
            await self.delete()
        except NotFoundError:
            pass


class AsyncInstances:
    def __init__(self, client: AsyncFaaSClient) -> None:
        self._c = client

    async def create(self, **options: Any) -> AsyncInstance:
        """A new running instance (`image`, `memory_mb`, `cpu`, `disk_mb`, `env`,
        `metadata`, `ttl_seconds`, `idle_timeout_seconds`, ...)."""
        answer = await self._c._json("POST", "/api/v1/instances", json=_base.body(**options))
        return AsyncInstance(self._c, InstanceInfo.from_json(answer))

    async def get(self, instance_id: str) -> AsyncInstance:
        answer = await self._c._json("GET", f"/api/v1/instances/{_base.segment(instance_id)}")
        return AsyncInstance(self._c, InstanceInfo.from_json(answer))

    async def list(
        self, *, status: Optional[str] = None, metadata: Optional[Dict[str, str]] = None
    ) -> List[AsyncInstance]:
        params: Dict[str, str] = {f"metadata.{k}": v for k, v in (metadata or {}).items()}
        if status is not None:
            params["status"] = status
        items = (await self._c._json("GET", "/api/v1/instances", params=params)).get("instances")
        return [AsyncInstance(self._c, InstanceInfo.from_json(i)) for i in items] if isinstance(items, list) else []


class AsyncSnapshots:
    def __init__(self, client: AsyncFaaSClient) -> None:
        self._c = client

    async def create(self, instance_id: str, *, name: Optional[str] = None, stop: bool = False) -> Snapshot:
        payload = _base.body(instance_id=instance_id, name=name, stop=stop or None)
        return Snapshot.from_json(await self._c._json("POST", "/api/v1/snapshots", json=payload))

    async def list(self) -> List[Snapshot]:
        items = (await self._c._json("GET", "/api/v1/snapshots")).get("snapshots")
        return [Snapshot.from_json(s) for s in items] if isinstance(items, list) else []

    async def tree(self, snapshot_id: str) -> Json:
        return await self._c._json("GET", f"/api/v1/snapshots/{_base.segment(snapshot_id)}/tree")

    async def merge(
        self, base_snapshot_id: str, instance_ids: List[str], *, name: Optional[str] = None
    ) -> Json:
        payload = _base.body(base_snapshot_id=base_snapshot_id, instance_ids=instance_ids, name=name)
        return await self._c._json("POST", "/api/v1/branches/merge", json=payload)

    async def get(self, snapshot_id: str) -> Snapshot:
        return Snapshot.from_json(await self._c._json("GET", f"/api/v1/snapshots/{_base.segment(snapshot_id)}"))

    async def delete(self, snapshot_id: str) -> None:
        await self._c._request("DELETE", f"/api/v1/snapshots/{_base.segment(snapshot_id)}")

    async def restore(self, snapshot_id: str) -> AsyncInstance:
        answer = await self._c._json("POST", f"/api/v1/snapshots/{_base.segment(snapshot_id)}/restore", json={})
        return AsyncInstance(self._c, InstanceInfo.from_json(answer))

    async def branch(self, snapshot_id: str, count: int) -> List[AsyncInstance]:
        answer = await self._c._json(
            "POST", "/api/v1/branches", json={"snapshot_id": snapshot_id, "count": count}
        )
        items = answer.get("instances")
        return [AsyncInstance(self._c, InstanceInfo.from_json(i)) for i in items] if isinstance(items, list) else []


class AsyncUsageAPI:
    def __init__(self, client: AsyncFaaSClient) -> None:
        self._c = client

    async def current(self) -> CurrentUsage:
        return CurrentUsage.from_json(await self._c._json("GET", "/api/v1/usage/current"))

    async def report(
        self, *, from_: Optional[str] = None, to: Optional[str] = None,
        group_by: Optional[str] = None,
    ) -> Json:
        params = _base.body(**{"from": from_, "to": to, "group_by": group_by})
        return await self._c._json("GET", "/api/v1/usage", params=params)

    async def records(
        self, *, from_: Optional[str] = None, to: Optional[str] = None,
        after: Optional[str] = None, limit: Optional[int] = None,
    ) -> Json:
        params = _base.body(**{"from": from_, "to": to, "after": after, "limit": limit})
        return await self._c._json("GET", "/api/v1/usage/records", params=params)


class AsyncExecutions:
    def __init__(self, client: AsyncFaaSClient) -> None:
        self._c = client

    async def get(self, execution_id: str) -> ExecutionResult:
        return ExecutionResult.from_json(await self._c._json("GET", f"/api/v1/executions/{_base.segment(execution_id)}"))


class AsyncContext:
    """A language interpreter whose globals persist between runs."""

    def __init__(self, client: AsyncFaaSClient, info: Json) -> None:
        self._client = client
        self.info = info

    @property
    def id(self) -> str:
        return str(self.info.get("id", ""))

    @property
    def language(self) -> str:
        return str(self.info.get("language", ""))

    async def run(self, code: str, **options: Any) -> ExecutionResult:
        return await self._client.execute(code=code, language=self.language, context_id=self.id, **options)

    async def delete(self) -> None:
        await self._client._request("DELETE", f"/api/v1/contexts/{_base.segment(self.id)}")


class AsyncContexts:
    def __init__(self, client: AsyncFaaSClient) -> None:
        self._c = client

    async def create(self, language: str = "python", **options: Any) -> AsyncContext:
        payload = _base.body(language=language, **options)
        return AsyncContext(self._c, await self._c._json("POST", "/api/v1/contexts", json=payload))

    async def get(self, context_id: str) -> AsyncContext:
        return AsyncContext(self._c, await self._c._json("GET", f"/api/v1/contexts/{_base.segment(context_id)}"))

    async def list(self) -> List[AsyncContext]:
        items = (await self._c._json("GET", "/api/v1/contexts")).get("contexts")
        return [AsyncContext(self._c, c) for c in items if isinstance(c, dict)] if isinstance(items, list) else []


class AsyncPools:
    def __init__(self, client: AsyncFaaSClient) -> None:
        self._c = client

    async def prewarm(self, count: int, **options: Any) -> Json:
        return await self._c._json("POST", "/api/v1/prewarm", json=_base.body(count=count, **options))

    async def list(self) -> List[Json]:
        items = (await self._c._json("GET", "/api/v1/pools")).get("pools")
        return [p for p in items if isinstance(p, dict)] if isinstance(items, list) else []


class AsyncKeys:
    def __init__(self, client: AsyncFaaSClient) -> None:
        self._c = client

    async def create(
        self, tenant: str, *, name: Optional[str] = None, admin: bool = False,
        rate_tier: Optional[str] = None,
    ) -> Json:
        payload = _base.body(tenant=tenant, name=name, role="admin" if admin else None, rate_tier=rate_tier)
        return await self._c._json("POST", "/api/v1/keys", json=payload)

    async def list(self, tenant: Optional[str] = None) -> List[Json]:
        items = (await self._c._json("GET", "/api/v1/keys", params=_base.body(tenant=tenant))).get("keys")
        return [k for k in items if isinstance(k, dict)] if isinstance(items, list) else []

    async def revoke(self, key_id: str) -> None:
        await self._c._request("DELETE", f"/api/v1/keys/{_base.segment(key_id)}")


class AsyncQuotas:
    def __init__(self, client: AsyncFaaSClient) -> None:
        self._c = client

    async def get(self, tenant: Optional[str] = None) -> Json:
        return await self._c._json("GET", "/api/v1/quotas", params=_base.body(tenant=tenant))

    async def set(self, tenant: str, **quotas: int) -> Json:
        return await self._c._json("PUT", f"/api/v1/tenants/{_base.segment(tenant)}/quotas", json=quotas)
