"""A small Python client for the Errand HTTP API."""

import uuid
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import httpx

#: Statuses after which a job does not change unless somebody retries it.
FINAL_STATUSES = frozenset({"completed", "failed", "dead", "cancelled"})


class ErrandError(Exception):
    """The API answered with a problem (RFC 9457)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        detail = problem.get("detail") or problem.get("title") or f"HTTP {status}"
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.problem = problem


class ErrandClient:
    """Submit and read jobs over HTTP."""

    def __init__(self, url: str, api_key: str, *, timeout_s: float = 10.0) -> None:
        self._http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_s,
        )

    def __enter__(self) -> "ErrandClient":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def submit(
        self, job_type: str, payload: dict[str, Any] | None = None, **options: Any
    ) -> dict[str, Any]:
        """Submit a job; return it as the API answered (status ``queued``)."""
        body = {"type": job_type, "payload": payload or {}, **options}
        return self._json(self._http.post("/v1/jobs", json=body))

    def get(self, job_id: uuid.UUID | str) -> dict[str, Any]:
        """Return a job."""
        return self._json(self._http.get(f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: uuid.UUID | str) -> dict[str, Any]:
        """Cancel a job (at once, or at its next step boundary if it is running)."""
        return self._json(self._http.post(f"/v1/jobs/{job_id}/cancel"))

    def retry(self, job_id: uuid.UUID | str, *, from_start: bool = False) -> dict[str, Any]:
        """Run a failed, dead or cancelled job again."""
        return self._json(
            self._http.post(f"/v1/jobs/{job_id}/retry", json={"from_start": from_start})
        )

    def attempts(self, job_id: uuid.UUID | str) -> list[dict[str, Any]]:
        """Return every attempt of a job."""
        return self._list(self._http.get(f"/v1/jobs/{job_id}/attempts"))

    def dead_jobs(self, **filters: Any) -> dict[str, Any]:
        """List the dead-letter queue (admin): filters type, error, min_age_s, max_age_s."""
        params = {k: v for k, v in filters.items() if v is not None}
        return self._json(self._http.get("/v1/admin/dlq", params=params))

    def requeue_dead(self, **selector: Any) -> dict[str, Any]:
        """Requeue dead jobs (admin): job_ids, type, error, min_age_s, all, payload."""
        body = {k: v for k, v in selector.items() if v is not None}
        return self._json(self._http.post("/v1/admin/dlq/requeue", json=body))

    def purge_dead(self, **selector: Any) -> dict[str, Any]:
        """Delete dead jobs (admin): job_ids, type, error, min_age_s, all."""
        body = {k: v for k, v in selector.items() if v is not None}
        return self._json(self._http.post("/v1/admin/dlq/purge", json=body))

    def schedules(self) -> dict[str, Any]:
        """List your schedules (every schedule for admins): ``{data, count}``."""
        return self._json(self._http.get("/v1/schedules"))

    def create_schedule(
        self,
        name: str,
        cron: str,
        job_type: str,
        payload: dict[str, Any] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Create a cron schedule; options: timezone, priority, missed, enabled."""
        body = {"name": name, "cron": cron, "type": job_type, "payload": payload or {}, **options}
        return self._json(self._http.post("/v1/schedules", json=body))

    def update_schedule(self, schedule_id: uuid.UUID | str, **changes: Any) -> dict[str, Any]:
        """Change a schedule (``enabled=False`` pauses it, ``True`` resumes it)."""
        return self._json(self._http.patch(f"/v1/schedules/{schedule_id}", json=changes))

    def delete_schedule(self, schedule_id: uuid.UUID | str) -> None:
        """Delete a schedule (the jobs it made stay)."""
        response = self._http.delete(f"/v1/schedules/{schedule_id}")
        if response.is_error:
            self._json(response)

    def pause(self, *, queue: str | None = None, job_type: str | None = None) -> dict[str, Any]:
        """Pause a queue or a job type (admins)."""
        body = {"queue": queue} if queue else {"job_type": job_type}
        return self._json(self._http.post("/v1/admin/pause", json=body))

    def resume(self, *, queue: str | None = None, job_type: str | None = None) -> dict[str, Any]:
        """Resume a paused queue or job type (admins)."""
        body = {"queue": queue} if queue else {"job_type": job_type}
        return self._json(self._http.post("/v1/admin/resume", json=body))

    def pauses(self) -> list[dict[str, Any]]:
        """The paused queues and job types (admins)."""
        return self._list(self._http.get("/v1/admin/pauses"))

    def breakers(self) -> list[dict[str, Any]]:
        """The circuit breakers that have seen failures (admins)."""
        return self._list(self._http.get("/v1/admin/breakers"))

    def close_breaker(self, key: str) -> None:
        """Close a circuit breaker by hand (admins)."""
        response = self._http.delete(f"/v1/admin/breakers/{key}")
        if response.is_error:
            self._json(response)

    def submit_workflow(self, jobs: list[dict[str, Any]], name: str = "") -> dict[str, Any]:
        """Submit a DAG of jobs (each with ``ref`` and ``after``)."""
        return self._json(self._http.post("/v1/workflows", json={"name": name, "jobs": jobs}))

    def workflow(self, workflow_id: uuid.UUID | str) -> dict[str, Any]:
        """A workflow's jobs, counts and overall status."""
        return self._json(self._http.get(f"/v1/workflows/{workflow_id}"))

    def hold(self, job_id: uuid.UUID | str) -> dict[str, Any]:
        """Hold a job: it keeps its place but does not run (a running one stops at its
        next step boundary)."""
        return self._json(self._http.post(f"/v1/jobs/{job_id}/hold"))

    def release(self, job_id: uuid.UUID | str) -> dict[str, Any]:
        """Release a held job: it runs again from where it stopped."""
        return self._json(self._http.post(f"/v1/jobs/{job_id}/release"))

    def failures(self, *, since_s: float = 86_400, job_type: str | None = None) -> dict[str, Any]:
        """Failed attempts grouped by type, step and error fingerprint (admins)."""
        params: dict[str, Any] = {"since_s": since_s}
        if job_type:
            params["type"] = job_type
        return self._json(self._http.get("/v1/admin/failures", params=params))

    def export(
        self, *, fmt: str = "ndjson", events: bool = False, **filters: Any
    ) -> Iterator[bytes]:
        """Stream the jobs matching ``filters`` (``status``, ``type``, ``label`` as a list
        of ``key:value``...) as NDJSON or CSV bytes."""
        params = {k: v for k, v in filters.items() if v is not None}
        params.update(format=fmt, events=str(events).lower())
        with self._http.stream("GET", "/v1/jobs:export", params=params, timeout=None) as resp:
            if resp.is_error:
                resp.read()
                self._json(resp)
            yield from resp.iter_bytes()

    def _list(self, response: httpx.Response) -> list[dict[str, Any]]:
        if response.is_error:
            self._json(response)
        data = response.json()
        assert isinstance(data, list)
        return data

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data = {"detail": response.text[:200]}
        if response.is_error:
            raise ErrandError(response.status_code, data if isinstance(data, dict) else {})
        assert isinstance(data, dict)
        return data
