"""What the sync and async clients share: configuration, request bodies, answers to
errors, the retry policy and Server-Sent Events parsing."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import httpx
from urllib.parse import quote

from .errors import FaaSError, error_for

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
#: Methods that are safe to send again: only these are retried.
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
#: Answers worth a retry of an idempotent request.
RETRY_STATUSES = frozenset({429, 502, 503, 504})

Command = Union[str, Sequence[str]]


def settings(
    base_url: Optional[str], api_key: Optional[str]
) -> tuple[str, Optional[str]]:
    """The base URL and key: given, else `FAAS_URL` / `FAAS_API_KEY`, else the defaults."""
    url = base_url or os.environ.get("FAAS_URL") or DEFAULT_BASE_URL
    key = api_key if api_key is not None else os.environ.get("FAAS_API_KEY")
    return url.rstrip("/"), key


def headers(api_key: Optional[str]) -> Dict[str, str]:
    h = {"user-agent": "faas-sdk-python/0.1.0", "accept": "application/json"}
    if api_key:
        h["authorization"] = f"Bearer {api_key}"
    return h


def body(**fields: Any) -> Dict[str, Any]:
    """A JSON body of the fields that are set (None means: the server's default)."""
    return {k: v for k, v in fields.items() if v is not None}


def run_fields(
    command: Optional[Command],
    code: Optional[str],
    language: Optional[str],
    extra: Mapping[str, Any],
) -> Dict[str, Any]:
    """The body of an execute (or instance exec) request."""
    if command is not None and code is not None:
        raise ValueError("give a command or code, not both")
    if command is None and code is None:
        raise ValueError("give a command (a string or an argv list) or code")
    cmd: Optional[Union[str, List[str]]] = None
    if command is not None:
        cmd = command if isinstance(command, str) else [str(a) for a in command]
    return body(command=cmd, code=code, language=language, **extra)


def retry_after(response: httpx.Response) -> Optional[float]:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def raise_for(response: httpx.Response) -> None:
    """Raises the error an answer carries, if it is one."""
    if response.status_code < 400:
        return
    code, message = "error", response.reason_phrase or "error"
    try:
        detail = response.json().get("error", {})
        code = str(detail.get("code", code))
        message = str(detail.get("message", message))
    except (ValueError, AttributeError):
        text = response.text.strip()
        if text:
            message = text[:500]
    raise error_for(
        response.status_code,
        code,
        message,
        request_id=response.headers.get("x-request-id"),
        retry_after=retry_after(response),
    )


def should_retry(method: str, attempt: int, max_retries: int, status: Optional[int]) -> bool:
    """Whether to send the request again: idempotent ones only, on a broken connection
    (`status` None; never a timeout: the caller's time is spent) or a transient answer."""
    if attempt >= max_retries or method.upper() not in IDEMPOTENT:
        return False
    return status is None or status in RETRY_STATUSES


def retried_delete_done(method: str, attempt: int, status: int) -> bool:
    """A DELETE sent again answered 404: the first one did it (its answer was lost)."""
    return method.upper() == "DELETE" and attempt > 0 and status == 404


def backoff(attempt: int, after: Optional[float]) -> float:
    """Seconds to wait before retry `attempt` (0-based): the server's Retry-After if any."""
    if after is not None:
        return min(max(after, 0.0), 30.0)
    return float(min(0.25 * (2**attempt), 4.0))


def segment(path: str) -> str:
    """A path segment (an id, a tenant) percent-encoded: never read as `/` or `..`."""
    return quote(path, safe="")


class SseParser:
    """Feeds text chunks, answers the JSON objects of complete events."""

    def __init__(self) -> None:
        self.buffer = ""
        self.data: List[str] = []

    def feed(self, chunk: str) -> List[Dict[str, Any]]:
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split("\n")
        return [e for line in lines for e in self._line(line[:-1] if line.endswith("\r") else line)]

    def close(self) -> List[Dict[str, Any]]:
        events = self._line(self.buffer) if self.buffer else []
        self.buffer = ""
        return events + self._line("")

    def _line(self, line: str) -> List[Dict[str, Any]]:
        if line == "":
            if not self.data:
                return []
            text, self.data = "\n".join(self.data), []
            return [parse_event(text)]
        if line.startswith("data:"):
            self.data.append(line[6:] if line.startswith("data: ") else line[5:])
        return []


def parse_event(text: str) -> Dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise FaaSError(f"malformed stream event: {text[:200]}", code="bad_stream") from e
    if not isinstance(value, dict):
        raise FaaSError(f"malformed stream event: {text[:200]}", code="bad_stream")
    return value
