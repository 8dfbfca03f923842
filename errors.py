"""Error types of the gateway, and the one place that maps each to an HTTP status and error code.

Business outcomes of governance (a budget, rate-limit or policy denial) are not exceptions inside the
workflow: nodes return them as typed outcomes. These errors are for input that cannot be processed, for
lookups that find nothing and for faults; channels turn them into responses through `status_code` and
`error_code`.
"""

from __future__ import annotations

from typing import Any


class ExternalAgentsError(Exception):
    """Base of every error the gateway raises on purpose."""

    status_code = 500
    error_code = "INTERNAL_ERROR"
    # Sent as Retry-After by channels that have headers, for faults a client may retry.
    retry_after_seconds: int | None = None

    def __init__(self, detail: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}


class ValidationError(ExternalAgentsError):
    status_code = 400
    error_code = "VALIDATION_ERROR"


class ForbiddenError(ExternalAgentsError):
    status_code = 403
    error_code = "FORBIDDEN"


class NotFoundError(ExternalAgentsError):
    status_code = 404
    error_code = "NOT_FOUND"


class ConflictError(ExternalAgentsError):
    status_code = 409
    error_code = "CONFLICT"


class ServiceUnavailableError(ExternalAgentsError):
    """A backing service (database, Redis under fail-closed) cannot serve the request now."""

    status_code = 503
    error_code = "SERVICE_UNAVAILABLE"
    retry_after_seconds = 1


class StorageError(ExternalAgentsError):
    """A fault in the database or Redis; wraps the driver's exception as its cause."""

    status_code = 503
    error_code = "SERVICE_UNAVAILABLE"
    retry_after_seconds = 1


class PlatformError(ExternalAgentsError):
    """Delivery to an external platform failed.

    `retryable` says whether another attempt may succeed (network error, 429, 5xx); `retry_after` carries a
    platform's Retry-After in seconds when it sent one; `reached_platform` is False when the request never
    left this process (bad URL, refused connection), which lets the budget release a reservation.
    """

    status_code = 502
    error_code = "PLATFORM_ERROR"

    def __init__(
        self,
        detail: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        reached_platform: bool = True,
        platform_status: int | None = None,
        attempts: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.retryable = retryable
        self.retry_after = retry_after
        self.reached_platform = reached_platform
        self.platform_status = platform_status
        self.attempts = attempts


class PlatformTimeoutError(PlatformError):
    """The platform did not answer within the configured timeout."""
