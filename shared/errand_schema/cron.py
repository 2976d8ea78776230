"""Cron expressions of schedules: validation, and run times in a time zone (UTC out).

An expression has 5 fields (``minute hour day-of-month month day-of-week``) or 6 with
the seconds first (``second minute hour ...``), so ``* * * * * *`` is every second;
``@hourly``-style macros work too. Times are computed on the wall clock of the
schedule's IANA time zone and returned as UTC-aware datetimes. Across daylight saving
changes:

- a local time that does not exist (clocks jump forward) runs once, just after the gap;
- a local time that happens twice (clocks go back) runs once, the first time, unless
  the hour field is ``*``: then every real hour runs, as interval schedules expect.
"""

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

from croniter import croniter

#: Field counts accepted (seconds first when 6).
CRON_FIELDS = (5, 6)
#: Candidates looked at per answer before giving up (DST repeats are skipped).
_MAX_CANDIDATES = 16
#: croniter answers "first time after t"; this makes it "first time at or after t".
_TICK = timedelta(microseconds=1)


class CronError(ValueError):
    """A cron expression or time zone that cannot be used."""


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones()) | {"UTC"}


def parse_zone(name: str) -> ZoneInfo:
    """Return the IANA time zone ``name`` (``Europe/Berlin``, ``UTC``).

    Raises:
        CronError: No such time zone.
    """
    if name not in _zone_names():
        raise CronError(f"unknown time zone {name!r} (use an IANA name like 'Europe/Berlin')")
    return ZoneInfo(name)


def check_cron(expr: str) -> None:
    """Check that ``expr`` is a cron expression that fires at least once.

    Raises:
        CronError: It is malformed, has the wrong number of fields, or never fires.
    """
    fields = expr.split()
    if not (expr.startswith("@") and len(fields) == 1) and len(fields) not in CRON_FIELDS:
        raise CronError(
            "a cron expression has 5 fields (minute hour day month weekday) or 6 with seconds first"
        )
    try:
        valid = croniter.is_valid(expr, second_at_beginning=True)
    except Exception:  # croniter raises assorted errors on odd input
        valid = False
    if not valid:
        raise CronError(f"not a valid cron expression: {expr!r}")
    next_run_after(expr, ZoneInfo("UTC"), datetime.now(UTC))


def next_run_after(expr: str, zone: ZoneInfo, after: datetime) -> datetime:
    """Return the first run time strictly after ``after`` (UTC-aware).

    Raises:
        CronError: The expression never fires (``0 0 30 2 *``).
    """
    return _scan(expr, zone, after, forward=True)


def last_run_before(expr: str, zone: ZoneInfo, before: datetime) -> datetime:
    """Return the last run time strictly before ``before`` (UTC-aware).

    Raises:
        CronError: The expression never fires.
    """
    return _scan(expr, zone, before, forward=False)


def runs_between(expr: str, zone: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """Return every run time ``t`` with ``start <= t <= end``, oldest first (UTC-aware).

    Note:
        Walks one run at a time: keep the window short for frequent expressions.
    """
    runs: list[datetime] = []
    at = start - _TICK
    while (t := next_run_after(expr, zone, at)) <= end:
        runs.append(t)
        at = t
    return runs


def _scan(expr: str, zone: ZoneInfo, start: datetime, *, forward: bool) -> datetime:
    try:
        hour_is_wildcard = croniter.expand(expr, second_at_beginning=True)[0][1] == ["*"]
        it = croniter(expr, start.astimezone(zone), second_at_beginning=True)
        for _ in range(_MAX_CANDIDATES):
            local: datetime = it.get_next(datetime) if forward else it.get_prev(datetime)
            at = local.astimezone(UTC)
            if (at > start if forward else at < start) and (
                hour_is_wildcard or not _second_occurrence(at, zone)
            ):
                return at
    except (ValueError, KeyError, IndexError, OverflowError) as exc:
        raise CronError(f"{expr!r} never fires") from exc
    raise CronError(f"{expr!r} never fires")


def _second_occurrence(at: datetime, zone: ZoneInfo) -> bool:
    """Whether ``at`` is the repeat of a local time (the hour after clocks go back)."""
    local = at.astimezone(zone)
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()
