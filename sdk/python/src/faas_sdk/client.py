"""The synchronous client: `FaaSClient(base_url=..., api_key=...)`."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Type

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


class FaaSClient:
    """A faas server. `base_url` and `api_key` default to `FAAS_URL` and `FAAS_API_KEY`.

    Idempotent requests (GET, PUT, DELETE) are retried up to `max_retries` times on a broken
    connection or a 429/502/503/504 answer (after its `Retry-After`); others never are.
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        timeout: float = 330.0,
        max_retries: int = 2,
        http_client: Optional[httpx.Client] = None,
    ) -> None:
        self.base_url, self.api_key = _base.settings(base_url, api_key)
        self.max_retries = max_retries
        self._http = http_client or httpx.Client(timeout=timeout)
        self._headers = _base.headers(self.api_key)
        self.instances = Instances(self)
        self.snapshots = Snapshots(self)
        self.executions = Executions(self)
        self.usage = UsageAPI(self)
        self.contexts = Contexts(self)
        self.pools = Pools(self)
        self.keys = Keys(self)
        self.quotas = Quotas(self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "FaaSClient":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------

    def _request(
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
                response = self._http.request(
                    method,
                    self.base_url + path,
                    params=params,
                    json=json,
                    content=content,
                    headers=self._headers,
                )
            except httpx.TimeoutException as e:
                raise ConnectionError(f"{method} {path}: timed out", code="timeout") from e
            except httpx.TransportError as e:
                if _base.should_retry(method, attempt, self.max_retries, None):
                    time.sleep(_base.backoff(attempt, None))
                    attempt += 1
                    continue
                raise ConnectionError(f"{method} {path}: {e}", code="connection") from e
            if response.status_code >= 400 and _base.should_retry(
                method, attempt, self.max_retries, response.status_code
            ):
                time.sleep(_base.backoff(attempt, _base.retry_after(response)))
                attempt += 1
                continue
            if _base.retried_delete_done(method, attempt, response.status_code):
                return response
            _base.raise_for(response)
            return response

    def _json(self, method: str, path: str, **kw: Any) -> Json:
        value = self._request(method, path, **kw).json()
        if not isinstance(value, dict):
            raise FaaSError(f"unexpected answer to {method} {path}", code="bad_answer")
        return value

    def _stream(self, path: str, payload: Json) -> Iterator[StreamEvent]:
        try:
            with self._http.stream(
                "POST", self.base_url + path, json=payload, headers=self._headers
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    _base.raise_for(response)
                parser = _base.SseParser()
                for chunk in response.iter_text():
                    for event in parser.feed(chunk):
                        yield StreamEvent.from_json(event)
                for event in parser.close():
                    yield StreamEvent.from_json(event)
        except httpx.TransportError as e:
            raise ConnectionError(f"POST {path}: {e}", code="connection") from e

    # -- runs --------------------------------------------------------------------------

    def execute(
        self,
        command: Optional[Command] = None,
        *,
        code: Optional[str] = None,
        language: Optional[str] = None,
        mode: Optional[str] = None,
        image: Optional[str] = None,
        stdin: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
        timeout_ms: Optional[int] = None,
        memory_mb: Optional[int] = None,
        cpu: Optional[float] = None,
        workdir: Optional[str] = None,
        context_id: Optional[str] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        **options: Any,
    ) -> ExecutionResult:
        """Runs a command (a string for `/bin/sh -c`, or an argv list) or `code` in
        `language`. `mode` is `ephemeral` (default), `cached`, `checkpointed` or `branched`;
        `options` are the API's other fields (`pids`, `reuse`, `reuse_key`,
        `checkpoint_after`, `snapshot_id`, `parent_snapshot`, `count`, ...). With
        `on_stdout`/`on_stderr` the output is streamed to them as it is produced."""
        payload = _base.run_fields(
            command,
            code,
            language,
            dict(
                mode=mode,
                image=image,
                stdin=stdin,
                env=env,
                timeout_ms=timeout_ms,
                memory_mb=memory_mb,
                cpu=cpu,
                workdir=workdir,
                context_id=context_id,
                **options,
            ),
        )
        if on_stdout is None and on_stderr is None:
            return ExecutionResult.from_json(self._json("POST", "/api/v1/execute", json=payload))
        return _follow(self._stream("/api/v1/execute/stream", payload), on_stdout, on_stderr)

    def run_code(self, code: str, language: str = "python", **kw: Any) -> ExecutionResult:
        """Runs `code` in `language` (python, javascript, bash, sh)."""
        return self.execute(code=code, language=language, **kw)

    def stream(
        self, command: Optional[Command] = None, *, code: Optional[str] = None,
        language: Optional[str] = None, **options: Any,
    ) -> Iterator[StreamEvent]:
        """The run's events as they happen: `stdout`/`stderr` chunks, then `exit` with the
        result."""
        payload = _base.run_fields(command, code, language, options)
        return self._stream("/api/v1/execute/stream", payload)

    def health(self) -> Json:
        return self._json("GET", "/health")


def _follow(
    events: Iterator[StreamEvent],
    on_stdout: Optional[OutputCallback],
    on_stderr: Optional[OutputCallback],
) -> ExecutionResult:
    for event in events:
        if event.type == "stdout" and on_stdout is not None:
            on_stdout(event.data)
        elif event.type == "stderr" and on_stderr is not None:
            on_stderr(event.data)
        elif event.type == "exit" and event.result is not None:
            return event.result
        elif event.type == "error":
            raise stream_error(event.error_code or "internal", event.data)
    raise FaaSError("the stream ended without a result", code="bad_stream")


class Executions:
    def __init__(self, client: FaaSClient) -> None:
        self._c = client

    def get(self, execution_id: str) -> ExecutionResult:
        """A stored run record of the caller's tenant."""
        return ExecutionResult.from_json(self._c._json("GET", f"/api/v1/executions/{_base.segment(execution_id)}"))


class Files:
    """Files of one instance; paths resolve inside it, as its user."""

    def __init__(self, instance: "Instance") -> None:
        self._i = instance

    def write(self, path: str, data: "bytes | str") -> None:
        content = data.encode() if isinstance(data, str) else data
        self._i._client._request(
            "PUT", self._i._path("/files"), params={"path": path}, content=content
        )

    def read(self, path: str) -> bytes:
        return self._i._client._request("GET", self._i._path("/files"), params={"path": path}).content

    def list(self, path: str = "/home/user") -> List[FileEntry]:
        answer = self._i._client._json("GET", self._i._path("/files/list"), params={"path": path})
        entries = answer.get("entries")
        return [FileEntry.from_json(e) for e in entries] if isinstance(entries, list) else []

    def delete(self, path: str, recursive: bool = False) -> None:
        params = {"path": path, "recursive": "true" if recursive else "false"}
        self._i._client._request("DELETE", self._i._path("/files"), params=params)

    def upload_tar(self, path: str, archive: bytes) -> None:
        """Extracts a tar archive into `path` (created if missing), as the instance's user."""
        self._i._client._request(
            "PUT", self._i._path("/files/archive"), params={"path": path}, content=archive
        )

    def download_tar(self, path: str) -> bytes:
        """The tree under `path` as a tar archive."""
        return self._i._client._request(
            "GET", self._i._path("/files/archive"), params={"path": path}
        ).content


class Instance:
    """A persistent instance. Used as a context manager, it is deleted at the end."""

    def __init__(self, client: FaaSClient, info: InstanceInfo) -> None:
        self._client = client
        self.info = info
        self.files = Files(self)

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def status(self) -> str:
        return self.info.status

    def __repr__(self) -> str:
        return f"Instance(id={self.id!r}, status={self.status!r})"

    def _path(self, suffix: str = "") -> str:
        return f"/api/v1/instances/{_base.segment(self.id)}{suffix}"

    def _update(self, answer: Json) -> "Instance":
        self.info = InstanceInfo.from_json(answer)
        return self

    def refresh(self) -> "Instance":
        return self._update(self._client._json("GET", self._path()))

    def exec(
        self,
        command: Optional[Command] = None,
        *,
        code: Optional[str] = None,
        language: Optional[str] = None,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        **options: Any,
    ) -> ExecutionResult:
        """Runs a command or code in the instance (`stdin`, `env`, `workdir`,
        `timeout_ms`, `context_id` in `options`); files and processes persist."""
        payload = _base.run_fields(command, code, language, options)
        if on_stdout is None and on_stderr is None:
            return ExecutionResult.from_json(self._client._json("POST", self._path("/exec"), json=payload))
        return _follow(self._client._stream(self._path("/exec/stream"), payload), on_stdout, on_stderr)

    def spawn(self, command: Command, **options: Any) -> Process:
        """Starts a background process; it runs on between execs."""
        payload = _base.run_fields(command, None, None, {**options, "background": True})
        return Process.from_json(self._client._json("POST", self._path("/exec"), json=payload))

    def processes(self) -> List[Process]:
        items = self._client._json("GET", self._path("/processes")).get("processes")
        return [Process.from_json(p) for p in items] if isinstance(items, list) else []

    def wait(self, process_id: str, timeout_ms: Optional[int] = None) -> Process:
        """Waits for a background process to end (or the timeout); its state then."""
        params = _base.body(timeout_ms=timeout_ms)
        path = self._path(f"/processes/{_base.segment(process_id)}/wait")
        return Process.from_json(self._client._json("POST", path, params=params))

    def kill(self, process_id: str, signal: "str | int | None" = None) -> Process:
        """Signals a background process (SIGKILL unless `signal` names another)."""
        path = self._path(f"/processes/{_base.segment(process_id)}/kill")
        return Process.from_json(self._client._json("POST", path, json=_base.body(signal=signal)))

    def create_context(self, language: str = "python", **options: Any) -> Json:
        """An interpreter inside the instance whose globals persist (run code in it with
        `exec(code=..., context_id=...)`); it travels into snapshots and branches."""
        payload = _base.body(language=language, **options)
        return self._client._json("POST", self._path("/contexts"), json=payload)

    def contexts(self) -> List[Json]:
        items = self._client._json("GET", self._path("/contexts")).get("contexts")
        return [c for c in items if isinstance(c, dict)] if isinstance(items, list) else []

    def delete_context(self, context_id: str) -> None:
        self._client._request("DELETE", self._path(f"/contexts/{_base.segment(context_id)}"))

    def port_url(self, port: int, path: str = "") -> str:
        """The URL of `port` inside the instance, through the API (send the API key)."""
        return f"{self._client.base_url}{self._path(f'/ports/{port}/')}{path.lstrip('/')}"

    def expose(self, port: int) -> str:
        """A public URL for `port`, reachable without the API key (revocable)."""
        answer = self._client._json("POST", self._path("/public-ports"), json={"port": port})
        return str(answer.get("url", ""))

    def unexpose(self, port: int) -> None:
        """Closes the public URLs of `port`."""
        self._client._request("DELETE", self._path(f"/public-ports/{port}"))

    def ssh(self) -> SshAccess:
        """A fresh SSH key pair for this instance and the command to log in."""
        return SshAccess.from_json(self._client._json("GET", self._path("/ssh")))

    def snapshot(
        self, name: Optional[str] = None, *, stop: bool = False,
        metadata: Optional[Dict[str, str]] = None,
    ) -> Snapshot:
        """Captures the instance: with its processes while it runs, its files when stopped."""
        payload = _base.body(instance_id=self.id, name=name, stop=stop or None, metadata=metadata)
        return Snapshot.from_json(self._client._json("POST", "/api/v1/snapshots", json=payload))

    def stop(self) -> "Instance":
        return self._update(self._client._json("POST", self._path("/stop")))

    def start(self) -> "Instance":
        return self._update(self._client._json("POST", self._path("/start")))

    def delete(self) -> None:
        self._client._request("DELETE", self._path())

    def __enter__(self) -> "Instance":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        try:
            self.delete()
        except NotFoundError:
            pass


class Instances:
    def __init__(self, client: FaaSClient) -> None:
        self._c = client

    def create(
        self,
        *,
        image: Optional[str] = None,
        memory_mb: Optional[int] = None,
        cpu: Optional[float] = None,
        disk_mb: Optional[int] = None,
        env: Optional[Dict[str, str]] = None,
        metadata: Optional[Dict[str, str]] = None,
        ttl_seconds: Optional[int] = None,
        idle_timeout_seconds: Optional[int] = None,
        **options: Any,
    ) -> Instance:
        """A new running instance."""
        payload = _base.body(
            image=image, memory_mb=memory_mb, cpu=cpu, disk_mb=disk_mb, env=env,
            metadata=metadata, ttl_seconds=ttl_seconds,
            idle_timeout_seconds=idle_timeout_seconds, **options,
        )
        return Instance(self._c, InstanceInfo.from_json(self._c._json("POST", "/api/v1/instances", json=payload)))

    def get(self, instance_id: str) -> Instance:
        return Instance(self._c, InstanceInfo.from_json(self._c._json("GET", f"/api/v1/instances/{_base.segment(instance_id)}")))

    def list(self, *, status: Optional[str] = None, metadata: Optional[Dict[str, str]] = None) -> List[Instance]:
        params: Dict[str, str] = {f"metadata.{k}": v for k, v in (metadata or {}).items()}
        if status is not None:
            params["status"] = status
        answer = self._c._json("GET", "/api/v1/instances", params=params)
        items = answer.get("instances")
        return [Instance(self._c, InstanceInfo.from_json(i)) for i in items] if isinstance(items, list) else []


class Snapshots:
    def __init__(self, client: FaaSClient) -> None:
        self._c = client

    def create(self, instance_id: str, *, name: Optional[str] = None, stop: bool = False) -> Snapshot:
        payload = _base.body(instance_id=instance_id, name=name, stop=stop or None)
        return Snapshot.from_json(self._c._json("POST", "/api/v1/snapshots", json=payload))

    def get(self, snapshot_id: str) -> Snapshot:
        return Snapshot.from_json(self._c._json("GET", f"/api/v1/snapshots/{_base.segment(snapshot_id)}"))

    def list(self) -> List[Snapshot]:
        items = self._c._json("GET", "/api/v1/snapshots").get("snapshots")
        return [Snapshot.from_json(s) for s in items] if isinstance(items, list) else []

    def delete(self, snapshot_id: str) -> None:
        self._c._request("DELETE", f"/api/v1/snapshots/{_base.segment(snapshot_id)}")

    def restore(self, snapshot_id: str, *, metadata: Optional[Dict[str, str]] = None) -> Instance:
        """A new running instance in the snapshot's state."""
        answer = self._c._json(
            "POST", f"/api/v1/snapshots/{_base.segment(snapshot_id)}/restore", json=_base.body(metadata=metadata)
        )
        return Instance(self._c, InstanceInfo.from_json(answer))

    def tree(self, snapshot_id: str) -> Json:
        """The lineage below a snapshot: instances restored from it, their snapshots, ..."""
        return self._c._json("GET", f"/api/v1/snapshots/{_base.segment(snapshot_id)}/tree")

    def merge(
        self, base_snapshot_id: str, instance_ids: List[str], *, name: Optional[str] = None
    ) -> Json:
        """A filesystem snapshot with the base's files and the instances' changes
        (`ConflictError` naming the paths when they disagree)."""
        payload = _base.body(base_snapshot_id=base_snapshot_id, instance_ids=instance_ids, name=name)
        return self._c._json("POST", "/api/v1/branches/merge", json=payload)

    def branch(self, snapshot_id: str, count: int) -> List[Instance]:
        """`count` independent running instances from one snapshot, all or nothing."""
        answer = self._c._json(
            "POST", "/api/v1/branches", json={"snapshot_id": snapshot_id, "count": count}
        )
        items = answer.get("instances")
        return [Instance(self._c, InstanceInfo.from_json(i)) for i in items] if isinstance(items, list) else []


class UsageAPI:
    def __init__(self, client: FaaSClient) -> None:
        self._c = client

    def current(self) -> CurrentUsage:
        """This calendar month so far: usage, cost (micro-units), discount tier."""
        return CurrentUsage.from_json(self._c._json("GET", "/api/v1/usage/current"))

    def report(
        self, *, from_: Optional[str] = None, to: Optional[str] = None,
        group_by: Optional[str] = None,
    ) -> Json:
        """Usage in a period (`from_`/`to`: epoch ms, RFC 3339 or YYYY-MM-DD), grouped by
        `day`, `mode` or `image`."""
        params = _base.body(**{"from": from_, "to": to, "group_by": group_by})
        return self._c._json("GET", "/api/v1/usage", params=params)

    def records(
        self, *, from_: Optional[str] = None, to: Optional[str] = None,
        after: Optional[str] = None, limit: Optional[int] = None,
    ) -> Json:
        """Single charges in the order they were made; page on with `after` = the last id."""
        params = _base.body(**{"from": from_, "to": to, "after": after, "limit": limit})
        return self._c._json("GET", "/api/v1/usage/records", params=params)


class Context:
    """A language interpreter whose globals persist between runs."""

    def __init__(self, client: FaaSClient, info: Json) -> None:
        self._client = client
        self.info = info

    @property
    def id(self) -> str:
        return str(self.info.get("id", ""))

    @property
    def language(self) -> str:
        return str(self.info.get("language", ""))

    def run(self, code: str, **options: Any) -> ExecutionResult:
        return self._client.execute(code=code, language=self.language, context_id=self.id, **options)

    def delete(self) -> None:
        self._client._request("DELETE", f"/api/v1/contexts/{_base.segment(self.id)}")


class Contexts:
    def __init__(self, client: FaaSClient) -> None:
        self._c = client

    def create(self, language: str = "python", **options: Any) -> Context:
        """A new context (`image`, `env`, `memory_mb`, `cpu`, `pids` in `options`)."""
        payload = _base.body(language=language, **options)
        return Context(self._c, self._c._json("POST", "/api/v1/contexts", json=payload))

    def get(self, context_id: str) -> Context:
        return Context(self._c, self._c._json("GET", f"/api/v1/contexts/{_base.segment(context_id)}"))

    def list(self) -> List[Context]:
        items = self._c._json("GET", "/api/v1/contexts").get("contexts")
        return [Context(self._c, c) for c in items if isinstance(c, dict)] if isinstance(items, list) else []


class Pools:
    def __init__(self, client: FaaSClient) -> None:
        self._c = client

    def prewarm(self, count: int, **options: Any) -> Json:
        """Fills the caller's warm pool for an image and limits with `count` sandboxes."""
        return self._c._json("POST", "/api/v1/prewarm", json=_base.body(count=count, **options))

    def list(self) -> List[Json]:
        items = self._c._json("GET", "/api/v1/pools").get("pools")
        return [p for p in items if isinstance(p, dict)] if isinstance(items, list) else []


class Keys:
    """API keys (admin keys only)."""

    def __init__(self, client: FaaSClient) -> None:
        self._c = client

    def create(
        self, tenant: str, *, name: Optional[str] = None, admin: bool = False,
        rate_tier: Optional[str] = None,
    ) -> Json:
        """A new key; its secret (`key`) is in this answer only."""
        payload = _base.body(tenant=tenant, name=name, role="admin" if admin else None, rate_tier=rate_tier)
        return self._c._json("POST", "/api/v1/keys", json=payload)

    def list(self, tenant: Optional[str] = None) -> List[Json]:
        items = self._c._json("GET", "/api/v1/keys", params=_base.body(tenant=tenant)).get("keys")
        return [k for k in items if isinstance(k, dict)] if isinstance(items, list) else []

    def revoke(self, key_id: str) -> None:
        self._c._request("DELETE", f"/api/v1/keys/{_base.segment(key_id)}")


class Quotas:
    def __init__(self, client: FaaSClient) -> None:
        self._c = client

    def get(self, tenant: Optional[str] = None) -> Json:
        """The quotas in force and what is in use (an admin may name a tenant)."""
        return self._c._json("GET", "/api/v1/quotas", params=_base.body(tenant=tenant))

    def set(self, tenant: str, **quotas: int) -> Json:
        """Replaces a tenant's quota overrides (admin): `max_concurrent_sandboxes`,
        `max_instances`, `max_memory_mb`, `max_snapshot_storage_mb`,
        `monthly_spend_cap_micros`; left out: the server's default."""
        return self._c._json("PUT", f"/api/v1/tenants/{_base.segment(tenant)}/quotas", json=quotas)
