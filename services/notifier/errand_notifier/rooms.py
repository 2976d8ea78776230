"""Names of the Socket.IO rooms (wire protocol: clients never see them, but every replica
must agree on them)."""

import uuid

#: Room of operators: every event, plus the ``queue_stats`` tick.
ADMIN_ROOM = "admin"
#: Prefix of the room of one job.
JOB_ROOM_PREFIX = "job:"


def job_room(job_id: uuid.UUID | str) -> str:
    """Return the room of one job."""
    return f"{JOB_ROOM_PREFIX}{job_id}"


def user_room(user_id: uuid.UUID | str) -> str:
    """Return the room of every job of one user."""
    return f"user:{user_id}"


def job_id_of_room(room: str) -> uuid.UUID | None:
    """Return the job of a ``job:<id>`` room, or ``None`` for another room."""
    if not room.startswith(JOB_ROOM_PREFIX):
        return None
    try:
        return uuid.UUID(room[len(JOB_ROOM_PREFIX) :])
    except ValueError:
        return None
