"""Notifier settings (``ERRAND_*`` environment variables)."""

from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from errand_schema.settings import CommonSettings, split_commas


class NotifierSettings(CommonSettings):
    """Settings of ``errand notifier``."""

    host: str = "127.0.0.1"
    port: int = 8001
    #: Origins allowed to open Socket.IO connections (comma-separated; ``*`` for any).
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    #: Most missed events returned in one subscribe ack.
    max_replay: int = 1000
    #: How long one blocking read of the event stream waits, in ms.
    stream_block_ms: int = 1000

    _split = field_validator("cors_origins", mode="before")(split_commas)


@lru_cache
def get_settings() -> NotifierSettings:
    """Return the process's settings, read once from the environment."""
    return NotifierSettings()
