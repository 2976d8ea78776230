"""Request and response models of ``/v1/schedules`` (cron schedules of jobs)."""

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from errand_api.schemas import MAX_PAYLOAD_DEPTH, json_depth
from errand_schema.models import Schedule
from errand_schema.queues import Priority

#: What happens to runs missed while nothing was running.
MissedPolicy = Literal["skip", "run_once"]

_CRON_HELP = (
    "5 fields (minute hour day month weekday) or 6 with seconds first "
    "('* * * * * *' is every second); @hourly-style macros work too."
)


def _shallow_enough(value: Any) -> Any:
    if json_depth(value) > MAX_PAYLOAD_DEPTH:
        raise ValueError(f"nested deeper than {MAX_PAYLOAD_DEPTH} levels")
    return value


class ScheduleCreate(BaseModel):
    """Body of ``POST /v1/schedules``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "nightly report",
                    "cron": "0 3 * * *",
                    "timezone": "Europe/Berlin",
                    "type": "demo.pipeline",
                    "payload": {},
                    "missed": "run_once",
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    cron: str = Field(min_length=1, max_length=200, description=_CRON_HELP)
    timezone: str = Field(
        default="UTC", min_length=1, max_length=64, description="An IANA time zone."
    )
    type: str = Field(min_length=1, max_length=200, description="A registered job type.")
    payload: dict[str, Any] = Field(
        default_factory=dict, description="Checked against the type's payload schema."
    )
    priority: Priority | None = Field(default=None, description="Defaults to the type's.")
    missed: MissedPolicy = Field(
        default="skip",
        description="After downtime: skip the missed runs, or run the latest of them once.",
    )
    enabled: bool = True

    _payload_depth = field_validator("payload", mode="before")(_shallow_enough)


class ScheduleUpdate(BaseModel):
    """Body of ``PATCH /v1/schedules/{id}``: only the fields sent change."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    cron: str | None = Field(default=None, min_length=1, max_length=200, description=_CRON_HELP)
    timezone: str | None = Field(default=None, min_length=1, max_length=64)
    type: str | None = Field(default=None, min_length=1, max_length=200)
    payload: dict[str, Any] | None = None
    priority: Priority | None = Field(default=None, description="null: the type's.")
    missed: MissedPolicy | None = None
    enabled: bool | None = None

    _payload_depth = field_validator("payload", mode="before")(_shallow_enough)

    @field_validator("name", "cron", "timezone", "type", "payload", "missed", "enabled")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Only priority may be set to null; these fields are required on the schedule.
        if value is None:
            raise ValueError("may not be null")
        return value


class SchedulePublic(BaseModel):
    """A schedule; ``next_run_at`` is null while it is paused."""

    id: uuid.UUID
    owner_id: uuid.UUID
    name: str
    cron: str
    timezone: str
    type: str
    payload: dict[str, Any]
    priority: Priority | None
    missed: MissedPolicy
    enabled: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Schedule, payload: dict[str, Any] | None = None) -> "SchedulePublic":
        """Build the view of ``row`` (``payload`` replaces its payload, e.g. masked)."""
        data = row.model_dump(exclude={"job_type", "payload", "priority", "missed"})
        return cls(
            **data,
            type=row.job_type,
            payload=row.payload if payload is None else payload,
            priority=Priority(row.priority) if row.priority else None,
            missed="run_once" if row.missed == "run_once" else "skip",
        )


class SchedulesPublic(BaseModel):
    """A list of schedules."""

    data: list[SchedulePublic]
    count: int
