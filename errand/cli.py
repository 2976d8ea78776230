"""The ``errand`` command: run the services, run everything at once, talk to a system."""

import json
from typing import Annotated, Any

import typer
from rich.console import Console

from errand import cli_everyday, cli_flow, cli_jobs, cli_schedules
from errand.client import FINAL_STATUSES, ErrandClient, ErrandError
from errand.progress import JobProgress
from errand.settings import ClientSettings
from errand.watch import JobWatcher, poll_until_final
from errand_schema.settings import DatabaseSettings

app = typer.Typer(help="Errand: background jobs you can watch.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
users_app = typer.Typer(help="Users and API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(cli_jobs.dlq_app, name="dlq")
app.add_typer(cli_schedules.schedules_app, name="schedules")
app.command()(cli_jobs.cancel)
app.command()(cli_jobs.retry)
app.command()(cli_jobs.watch)
app.command()(cli_flow.pause)
app.command()(cli_flow.resume)
app.command()(cli_flow.pauses)
app.command()(cli_flow.breakers)
app.command()(cli_everyday.failures)
app.command()(cli_everyday.hold)
app.command()(cli_everyday.release)
app.command()(cli_everyday.export)
console = Console()
err_console = Console(stderr=True)


@app.command()
def api() -> None:
    """Run the HTTP API (settings from ERRAND_* variables)."""
    from errand_api.main import serve

    serve()


@app.command()
def notifier() -> None:
    """Run the Socket.IO notifier (settings from ERRAND_* variables)."""
    from errand_notifier.main import serve

    serve()


@app.command()
def worker() -> None:
    """Run worker processes under the Dramatiq CLI (ERRAND_PROCESSES, ERRAND_THREADS)."""
    from errand_worker.main import run

    run()


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="Port of the API, notifier and dashboard.")] = 8000,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    threads: Annotated[int, typer.Option(help="Worker threads.")] = 4,
    data_dir: Annotated[str, typer.Option(help="Folder of the SQLite file and state.")] = ".errand",
) -> None:
    """Run everything in one process with no external services."""
    from errand.dev import run_dev

    run_dev(host=host, port=port, threads=threads, data_dir=data_dir)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply the schema migrations to ERRAND_DATABASE_URL."""
    from errand_schema.migrate import upgrade_database

    upgrade_database(DatabaseSettings().database_url, revision)
    console.print(f"database at revision {revision}")


@users_app.command("create")
def users_create(
    name: str, admin: Annotated[bool, typer.Option("--admin", help="Role admin.")] = False
) -> None:
    """Create a user and print its API key (shown only once)."""
    from sqlmodel import Session

    from errand_schema.auth import create_user
    from errand_schema.db import create_db_engine

    engine = create_db_engine(DatabaseSettings().database_url)
    with Session(engine) as session:
        user, key = create_user(session, name, role="admin" if admin else "user")
        session.commit()
        console.print(f"user {user.name} ({user.role}) id {user.id}")
    print(key)


@app.command()
def submit(
    job_type: str,
    payload: Annotated[str, typer.Option(help="Payload as JSON.")] = "{}",
    priority: Annotated[str | None, typer.Option(help="low, normal, high or critical.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow it live until it ends.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 600,
) -> None:
    """Submit a job and print its id (with --wait, follow it to the end)."""
    settings, key = cli_jobs.client_settings()
    try:
        body: dict[str, Any] = json.loads(payload)
    except ValueError as exc:
        err_console.print(f"[red]--payload is not JSON: {exc}")
        raise typer.Exit(2) from exc
    options = {"priority": priority} if priority else {}
    with ErrandClient(str(settings.url), key) as client:
        try:
            job = client.submit(job_type, body, **options)
        except ErrandError as exc:
            cli_jobs.print_problem(exc)
            raise typer.Exit(1) from exc
        if not wait:
            print(job["id"])
            return
        final = _follow(client, settings, key, job, timeout)
    raise typer.Exit(0 if final.get("status") == "completed" else 1)


@app.command()
def status(job_id: str) -> None:
    """Print a job as JSON."""
    settings, key = cli_jobs.client_settings()
    with ErrandClient(str(settings.url), key) as client:
        try:
            console.print_json(data=client.get(job_id))
        except ErrandError as exc:
            cli_jobs.print_problem(exc)
            raise typer.Exit(1) from exc


def _follow(
    client: ErrandClient, settings: ClientSettings, key: str, job: dict[str, Any], timeout: float
) -> dict[str, Any]:
    job_id = str(job["id"])
    bars = JobProgress(console)
    bars.add(job_id, f"{job['type']} {job_id[:8]}")
    with bars.progress:
        watcher = JobWatcher(
            str(settings.notifier_url), key, on_event=bars.update, api_url=str(settings.url)
        )
        try:
            watcher.connect()
        except Exception as exc:  # no notifier: fall back to polling
            err_console.print(f"[yellow]live updates unavailable ({exc}); polling")
            final = poll_until_final(client, job_id, timeout, on_update=bars.update)
        else:
            watcher.watch(job_id)
            watcher.wait([job_id], timeout)
            watcher.close()
            final = client.get(job_id)
            bars.update(final)
    color = "green" if final["status"] == "completed" else "red"
    console.print(f"[{color}]{job_id} {final['status']}")
    if final["status"] not in FINAL_STATUSES:
        err_console.print("[yellow]timed out waiting")
    elif final.get("error"):
        err_console.print(f"[red]{final['error'].get('type')}: {final['error'].get('message')}")
    return final


def main() -> None:
    """Console-script entry point."""
    app()
