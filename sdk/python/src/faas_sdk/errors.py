"""Errors: every failure the API answers becomes an exception carrying its code."""

from __future__ import annotations

from typing import Optional


class FaaSError(Exception):
    """An error answered by the server (`status` set) or met on the way (`status` None).

    `code` is the API's error code (`not_found`, `quota_exceeded`, ...), `message` its
    explanation, `request_id` the `x-request-id` to quote when reporting it.
    """

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        code: str = "error",
        request_id: Optional[str] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"{self.status} {self.code}" if self.status is not None else self.code
        return f"{where}: {self.message}"


class BadRequestError(FaaSError):
    """400: the request could not be parsed."""


class AuthenticationError(FaaSError):
    """401: no API key, or an unknown or revoked one."""


class PermissionDeniedError(FaaSError):
    """403: not allowed (an admin route, a path the sandbox user may not touch)."""


class NotFoundError(FaaSError):
    """404: no such resource for this tenant (another tenant's is not found either)."""


class ConflictError(FaaSError):
    """409: the resource is in a state that does not allow this now."""


class PayloadTooLargeError(FaaSError):
    """413: the request body is larger than the server accepts."""


class ValidationError(FaaSError):
    """422: a value is not acceptable; the message names the field."""


class RateLimitError(FaaSError):
    """429 `rate_limited`: the API key's rate limit; `retry_after` says when to retry."""


class QuotaExceededError(FaaSError):
    """A tenant quota (429 while in use, 403 for good); the message names the quota."""


class NotSupportedError(FaaSError):
    """501: this server cannot do it (the message says what is missing)."""


class ServerError(FaaSError):
    """500, 502, 503, 507 and other server-side failures."""


class ConnectionError(FaaSError):  # noqa: A001 - the SDK's own, distinct from the builtin
    """The server could not be reached, or the connection broke."""


_BY_STATUS: dict[int, type[FaaSError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    405: BadRequestError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: ValidationError,
    429: RateLimitError,
    501: NotSupportedError,
}


#: The status each error code is answered with, for errors met inside a stream (where
#: the HTTP status was already 200).
STATUS_OF_CODE: dict[str, int] = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "payload_too_large": 413,
    "invalid_request": 422,
    "invalid_value": 422,
    "rate_limited": 429,
    "internal": 500,
    "sandbox_failed": 500,
    "checkpoint_failed": 500,
    "unsupported": 501,
    "bad_gateway": 502,
    "overloaded": 503,
    "disk_full": 507,
}


def stream_error(code: str, message: str) -> FaaSError:
    """The exception for an `error` event of a stream: as if it had been the answer."""
    return error_for(STATUS_OF_CODE.get(code, 500), code, message)


def error_for(
    status: int,
    code: str,
    message: str,
    request_id: Optional[str] = None,
    retry_after: Optional[float] = None,
) -> FaaSError:
    """The exception for an error answer."""
    if code == "quota_exceeded":
        cls: type[FaaSError] = QuotaExceededError
    else:
        cls = _BY_STATUS.get(status, ServerError if status >= 500 else FaaSError)
    return cls(message, status=status, code=code, request_id=request_id, retry_after=retry_after)
