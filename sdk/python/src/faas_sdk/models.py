"""Typed views of the API's answers. Each keeps the whole answer in `raw`, so fields a newer
server adds are never lost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

Json = Dict[str, Any]


def _int(d: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = d.get(key)
    return int(value) if isinstance(value, (int, float)) else default


def _opt_int(d: Mapping[str, Any], key: str) -> Optional[int]:
    value = d.get(key)
    return int(value) if isinstance(value, (int, float)) else None


def _str(d: Mapping[str, Any], key: str, default: str = "") -> str:
    value = d.get(key)
    return value if isinstance(value, str) else default


def _opt_str(d: Mapping[str, Any], key: str) -> Optional[str]:
    value = d.get(key)
    return value if isinstance(value, str) else None


def _float(d: Mapping[str, Any], key: str) -> float:
    value = d.get(key)
    return float(value) if isinstance(value, (int, float)) else 0.0


def _map(d: Mapping[str, Any], key: str) -> Dict[str, str]:
    value = d.get(key)
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Usage:
    """What a run used, from its cgroup."""

    cpu_ms: float
    peak_memory_bytes: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Usage":
        return cls(cpu_ms=_float(d, "cpu_ms"), peak_memory_bytes=_int(d, "peak_memory_bytes"))


@dataclass(frozen=True)
class ExecutionResult:
    """The result of one run: `status` is `exited`, `timeout`, `oom` or `signaled`."""

    id: str
    status: str
    exit_code: Optional[int]
    signal: Optional[str]
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: float
    usage: Usage
    mode: str
    image: str
    created_at_ms: int
    snapshot_id: Optional[str]
    branches: List["ExecutionResult"]
    raw: Json = field(repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Whether the program exited with code 0."""
        return self.status == "exited" and self.exit_code == 0

    @classmethod
    def from_json(cls, d: Json) -> "ExecutionResult":
        usage = d.get("usage")
        branches = d.get("branches")
        return cls(
            id=_str(d, "id"),
            status=_str(d, "status"),
            exit_code=_opt_int(d, "exit_code"),
            signal=_opt_str(d, "signal"),
            stdout=_str(d, "stdout"),
            stderr=_str(d, "stderr"),
            stdout_truncated=bool(d.get("stdout_truncated")),
            stderr_truncated=bool(d.get("stderr_truncated")),
            duration_ms=_float(d, "duration_ms"),
            usage=Usage.from_json(usage if isinstance(usage, dict) else {}),
            mode=_str(d, "mode"),
            image=_str(d, "image"),
            created_at_ms=_int(d, "created_at_ms"),
            snapshot_id=_opt_str(d, "snapshot_id"),
            branches=[cls.from_json(b) for b in branches] if isinstance(branches, list) else [],
            raw=d,
        )


@dataclass(frozen=True)
class Process:
    """A background process of an instance; `result` once it ended."""

    id: str
    argv: List[str]
    status: str
    started_at_ms: int
    result: Optional[ExecutionResult]
    raw: Json = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Json) -> "Process":
        argv = d.get("argv")
        result = d.get("result")
        return cls(
            id=_str(d, "id"),
            argv=[str(a) for a in argv] if isinstance(argv, list) else [],
            status=_str(d, "status"),
            started_at_ms=_int(d, "started_at_ms"),
            result=ExecutionResult.from_json(result) if isinstance(result, dict) else None,
            raw=d,
        )


@dataclass(frozen=True)
class InstanceInfo:
    """An instance's record: `status` is creating, running, stopping, stopped, failed."""

    id: str
    status: str
    image: str
    memory_mb: int
    cpu: float
    pids: int
    disk_mb: int
    env: Dict[str, str]
    metadata: Dict[str, str]
    created_at_ms: int
    snapshot_id: Optional[str]
    error: Optional[str]
    raw: Json = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Json) -> "InstanceInfo":
        limits = d.get("limits")
        lim: Mapping[str, Any] = limits if isinstance(limits, dict) else {}
        return cls(
            id=_str(d, "id"),
            status=_str(d, "status"),
            image=_str(d, "image"),
            memory_mb=_int(lim, "memory_mb"),
            cpu=_float(lim, "cpu"),
            pids=_int(lim, "pids"),
            disk_mb=_int(lim, "disk_mb"),
            env=_map(d, "env"),
            metadata=_map(d, "metadata"),
            created_at_ms=_int(d, "created_at_ms"),
            snapshot_id=_opt_str(d, "snapshot_id"),
            error=_opt_str(d, "error"),
            raw=d,
        )


@dataclass(frozen=True)
class Snapshot:
    """A snapshot: `kind` is `memory` (processes too) or `filesystem`."""

    id: str
    kind: str
    instance_id: str
    name: Optional[str]
    parent_id: Optional[str]
    size_bytes: int
    stored_bytes: Optional[int]
    created_at_ms: int
    metadata: Dict[str, str]
    raw: Json = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Json) -> "Snapshot":
        return cls(
            id=_str(d, "id"),
            kind=_str(d, "kind"),
            instance_id=_str(d, "instance_id"),
            name=_opt_str(d, "name"),
            parent_id=_opt_str(d, "parent_id"),
            size_bytes=_int(d, "size_bytes"),
            stored_bytes=_opt_int(d, "stored_bytes"),
            created_at_ms=_int(d, "created_at_ms"),
            metadata=_map(d, "metadata"),
            raw=d,
        )


@dataclass(frozen=True)
class FileEntry:
    name: str
    kind: str
    size: int
    mode: int
    modified_ms: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "FileEntry":
        return cls(
            name=_str(d, "name"),
            kind=_str(d, "kind"),
            size=_int(d, "size"),
            mode=_int(d, "mode"),
            modified_ms=_int(d, "modified_ms"),
        )


@dataclass(frozen=True)
class SshAccess:
    """A fresh key pair for one instance and how to log in with it."""

    host: str
    port: int
    user: str
    key_id: str
    private_key: str
    public_key: str
    host_public_key: str
    command: str
    raw: Json = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Json) -> "SshAccess":
        return cls(
            host=_str(d, "host"),
            port=_int(d, "port"),
            user=_str(d, "user"),
            key_id=_str(d, "key_id"),
            private_key=_str(d, "private_key"),
            public_key=_str(d, "public_key"),
            host_public_key=_str(d, "host_public_key"),
            command=_str(d, "command"),
            raw=d,
        )


@dataclass(frozen=True)
class UsageSummary:
    """Usage added up; money in integer micro-units."""

    records: int
    cpu_seconds: float
    wall_seconds: float
    memory_gb_seconds: float
    storage_gb_months: float
    egress_bytes: int
    list_micros: int
    discount_micros: int
    cost_micros: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "UsageSummary":
        return cls(
            records=_int(d, "records"),
            cpu_seconds=_float(d, "cpu_seconds"),
            wall_seconds=_float(d, "wall_seconds"),
            memory_gb_seconds=_float(d, "memory_gb_seconds"),
            storage_gb_months=_float(d, "storage_gb_months"),
            egress_bytes=_int(d, "egress_bytes"),
            list_micros=_int(d, "list_micros"),
            discount_micros=_int(d, "discount_micros"),
            cost_micros=_int(d, "cost_micros"),
        )


@dataclass(frozen=True)
class CurrentUsage:
    """The calendar month so far, with the volume discount reached."""

    tenant: str
    month: str
    usage: UsageSummary
    discount_percent: int
    spend_cap_micros: int
    raw: Json = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Json) -> "CurrentUsage":
        usage = d.get("usage")
        tier = d.get("discount_tier")
        return cls(
            tenant=_str(d, "tenant"),
            month=_str(d, "month"),
            usage=UsageSummary.from_json(usage if isinstance(usage, dict) else {}),
            discount_percent=_int(tier, "percent") if isinstance(tier, dict) else 0,
            spend_cap_micros=_int(d, "spend_cap_micros"),
            raw=d,
        )


@dataclass(frozen=True)
class StreamEvent:
    """One event of a streamed run: `stdout`/`stderr` with `data`, then `exit` with the
    `result` (or `error` with `error_code` and `data` as the message)."""

    type: str
    data: str = ""
    result: Optional[ExecutionResult] = None
    error_code: Optional[str] = None

    @classmethod
    def from_json(cls, d: Json) -> "StreamEvent":
        kind = _str(d, "type")
        if kind == "exit":
            return cls(type=kind, result=ExecutionResult.from_json(d))
        if kind == "error":
            err = d.get("error")
            e: Mapping[str, Any] = err if isinstance(err, dict) else {}
            return cls(type=kind, data=_str(e, "message"), error_code=_str(e, "code"))
        return cls(type=kind, data=_str(d, "data"))
