"""API errors. Routes raise these; handlers in :mod:`errand_api.problems` render them."""


class ApiError(Exception):
    """Base of every error the API answers with on purpose."""

    status_code = 500
    code = "internal_error"
    title = "Internal error"

    def __init__(self, detail: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors


class Unauthorized(ApiError):
    """No valid credentials."""

    status_code = 401
    code = "unauthorized"
    title = "Unauthorized"


class Forbidden(ApiError):
    """Valid credentials without the needed role."""

    status_code = 403
    code = "forbidden"
    title = "Forbidden"


class NotFound(ApiError):
    """No such resource (other than a job)."""

    status_code = 404
    code = "not_found"
    title = "Not found"


class JobNotFound(ApiError):
    """No job with this id that the caller may see."""

    status_code = 404
    code = "job_not_found"
    title = "Job not found"


class KeyNotFound(ApiError):
    """No such API key or user (or not the caller's)."""

    status_code = 404
    code = "not_found"
    title = "Not found"


class JobNotCancellable(ApiError):
    """The job is finished; there is nothing to cancel."""

    status_code = 409
    code = "job_not_cancellable"
    title = "Job not cancellable"


class JobNotRetryable(ApiError):
    """Only failed, dead or cancelled jobs can be retried."""

    status_code = 409
    code = "job_not_retryable"
    title = "Job not retryable"


class JobNotHoldable(ApiError):
    """The job is finished; there is nothing to hold."""

    status_code = 409
    code = "job_not_holdable"
    title = "Job not holdable"


class IdempotencyConflict(ApiError):
    """An Idempotency-Key reused with a different body."""

    status_code = 409
    code = "idempotency_conflict"
    title = "Idempotency key conflict"


class _WithHeaders(ApiError):
    """An error answered with headers of its own (``Retry-After``)."""

    def __init__(self, detail: str, headers: dict[str, str]) -> None:
        super().__init__(detail)
        self.headers = headers


class RateLimited(_WithHeaders):
    """Too many submissions; retry after the time in ``Retry-After``."""

    status_code = 429
    code = "rate_limited"
    title = "Too many requests"


class InvalidJob(ApiError):
    """The submission breaks a rule the request model cannot express."""

    status_code = 422
    code = "validation_error"
    title = "Invalid request"


class PayloadTooLarge(ApiError):
    """The request body is larger than allowed."""

    status_code = 413
    code = "payload_too_large"
    title = "Payload too large"


class BrokerUnavailable(ApiError):
    """RabbitMQ cannot be reached."""

    status_code = 503
    code = "broker_unavailable"
    title = "Broker unavailable"


class ShuttingDown(_WithHeaders):
    """The API process is stopping and takes no more submissions; another replica (or
    this one, restarted) will (``Retry-After``)."""

    status_code = 503
    code = "shutting_down"
    title = "Shutting down"


class RateLimitUnavailable(_WithHeaders):
    """The rate limit cannot be checked (Redis unreachable) and the API is set to refuse
    submissions meanwhile (``ERRAND_RATE_LIMIT_FAIL_OPEN=false``)."""

    status_code = 503
    code = "rate_limit_unavailable"
    title = "Rate limit unavailable"
