"""API settings (``ERRAND_*`` environment variables)."""

from functools import lru_cache

from errand_schema.settings import CommonSettings


class ApiSettings(CommonSettings):
    """Settings of ``errand api``."""

    host: str = "127.0.0.1"
    port: int = 8000
    #: Largest request body accepted, in bytes (413 past it).
    max_body_bytes: int = 1_048_576
    #: How long a registered job type is cached before it is read again.
    job_type_cache_s: float = 5.0
    #: Database connections per API process.
    db_pool_size: int = 20


@lru_cache
def get_settings() -> ApiSettings:
    """Return the process's settings, read once from the environment."""
    return ApiSettings()
