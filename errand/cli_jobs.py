"""``errand cancel``, ``retry``, ``watch`` and ``dlq``: acting on jobs of a running system."""

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from errand.client import ErrandClient, ErrandError
from errand.progress import JobProgress
from errand.settings import ClientSettings
from errand.watch import JobWatcher, poll_until_final

console = Console()
err_console = Console(stderr=True)
dlq_app = typer.Typer(help="The dead-letter queue (admins).", no_args_is_help=True)

TypeOpt = Annotated[str | None, typer.Option("--type", help="Only this job type.")]
ErrorOpt = Annotated[str | None, typer.Option(help="Only errors containing this text.")]
OlderOpt = Annotated[float | None, typer.Option(help="Dead at least this many seconds.")]


def client_settings() -> tuple[ClientSettings, str]:
    """Return the resolved settings and the API key, or exit with a hint."""
    settings = ClientSettings().resolved()
    if settings.api_key is None:
        err_console.print("[red]No API key: set ERRAND_API_KEY (or run `errand dev` here).")
        raise typer.Exit(2)
    return settings, settings.api_key.get_secret_value()


def print_problem(exc: ErrandError) -> None:
    """Print an API problem and its field errors."""
    err_console.print(f"[red]{exc}")
    for err in exc.problem.get("errors") or []:
        err_console.print(f"  [red]{err.get('field')}: {err.get('message')}")


def call(action: Callable[[ErrandClient], Any]) -> Any:
    """Run ``action`` with a client of the configured API; print a problem and exit 1."""
    settings, key = client_settings()
    with ErrandClient(str(settings.url), key) as client:
        try:
            return action(client)
        except ErrandError as exc:
            print_problem(exc)
            raise typer.Exit(1) from exc


def cancel(job_id: str) -> None:
    """Cancel a job: at once if it has not started, else at its next step boundary."""
    job = call(lambda c: c.cancel(job_id))
    console.print(f"{job_id} {job['status']}")


def retry(
    job_id: str,
    from_start: Annotated[bool, typer.Option("--from-start", help="Run every step again.")] = False,
) -> None:
    """Run a failed, dead or cancelled job again from the step that did not finish."""
    job = call(lambda c: c.retry(job_id, from_start=from_start))
    console.print(f"{job_id} {job['status']} (from step {job.get('step')})")


def watch(
    job_ids: list[str],
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 3600,
) -> None:
    """Follow jobs live until they end; exit 0 only if every one completed."""
    settings, key = client_settings()
    bars = JobProgress(console)
    with ErrandClient(str(settings.url), key) as client:
        for job_id in job_ids:
            job = client.get(job_id)
            bars.add(job_id, f"{job['type']} {job_id[:8]}")
            bars.update(job)
        with bars.progress:
            watcher = JobWatcher(
                str(settings.notifier_url), key, on_event=bars.update, api_url=str(settings.url)
            )
            try:
                watcher.connect()
            except Exception as exc:  # no notifier: fall back to polling
                err_console.print(f"[yellow]live updates unavailable ({exc}); polling")
                finals = [
                    poll_until_final(client, j, timeout, on_update=bars.update) for j in job_ids
                ]
            else:
                for job_id in job_ids:
                    watcher.watch(job_id)
                watcher.wait(job_ids, timeout)
                watcher.close()
                finals = [client.get(j) for j in job_ids]
                for job in finals:
                    bars.update(job)
    for job in finals:
        console.print(f"{job['id']} {job['status']}")
    raise typer.Exit(0 if all(j["status"] == "completed" for j in finals) else 1)


@dlq_app.command("ls")
def dlq_ls(
    job_type: TypeOpt = None,
    error: ErrorOpt = None,
    older_than: OlderOpt = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
) -> None:
    """List dead jobs, oldest first."""
    page = call(
        lambda c: c.dead_jobs(type=job_type, error=error, min_age_s=older_than, limit=limit)
    )
    table = Table("id", "type", "step", "error", "died")
    for job in page["data"]:
        error_text = (job.get("error") or {}).get("message", "")
        table.add_row(
            job["id"],
            job["type"],
            job.get("step") or "",
            error_text[:60],
            job.get("finished_at") or "",
        )
    console.print(table)
    console.print(f"{page['count']} dead jobs")


@dlq_app.command("requeue")
def dlq_requeue(
    job_ids: Annotated[list[str] | None, typer.Argument(help="Job ids.")] = None,
    job_type: TypeOpt = None,
    error: ErrorOpt = None,
    older_than: OlderOpt = None,
    all_jobs: Annotated[bool, typer.Option("--all", help="Every dead job.")] = False,
    payload: Annotated[str | None, typer.Option(help="Replacement payload (one id).")] = None,
) -> None:
    """Requeue dead jobs with a fresh attempt budget (by id, by filter, or --all)."""
    body = json.loads(payload) if payload else None
    result = call(
        lambda c: c.requeue_dead(
            job_ids=job_ids or None,
            type=job_type,
            error=error,
            min_age_s=older_than,
            all=all_jobs,
            payload=body,
        )
    )
    console.print(f"requeued {result['count']} jobs")


@dlq_app.command("purge")
def dlq_purge(
    job_ids: Annotated[list[str] | None, typer.Argument(help="Job ids.")] = None,
    job_type: TypeOpt = None,
    error: ErrorOpt = None,
    older_than: OlderOpt = None,
    all_jobs: Annotated[bool, typer.Option("--all", help="Every dead job.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete dead jobs and their dead-lettered messages (asks first)."""
    if not yes:
        typer.confirm("Delete these dead jobs for good?", abort=True)
    result = call(
        lambda c: c.purge_dead(
            job_ids=job_ids or None, type=job_type, error=error, min_age_s=older_than, all=all_jobs
        )
    )
    console.print(f"purged {result['count']} jobs")
