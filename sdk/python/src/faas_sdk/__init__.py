"""faas: run untrusted code in fast, isolated sandboxes.

    from faas_sdk import FaaSClient

    client = FaaSClient(base_url="http://127.0.0.1:8080", api_key="faas_...")
    print(client.execute("echo 'Hello!'").stdout)
"""

from .aio import AsyncFaaSClient, AsyncInstance
from .client import Context, FaaSClient, Instance
from .errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ConnectionError,
    FaaSError,
    NotFoundError,
    NotSupportedError,
    PayloadTooLargeError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
    ValidationError,
)
from .models import (
    CurrentUsage,
    ExecutionResult,
    FileEntry,
    InstanceInfo,
    Process,
    Snapshot,
    SshAccess,
    StreamEvent,
    Usage,
    UsageSummary,
)

__all__ = [
    "AsyncFaaSClient", "AsyncInstance", "AuthenticationError", "BadRequestError",
    "ConflictError", "ConnectionError", "Context", "CurrentUsage", "ExecutionResult", "FaaSClient",
    "FaaSError", "FileEntry", "Instance", "InstanceInfo", "NotFoundError",
    "NotSupportedError", "PayloadTooLargeError", "PermissionDeniedError", "Process",
    "QuotaExceededError", "RateLimitError", "ServerError", "Snapshot", "SshAccess",
    "StreamEvent", "Usage", "UsageSummary", "ValidationError",
]
__version__ = "0.1.0"
