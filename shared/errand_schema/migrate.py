"""Run the Alembic migrations that ship inside this package (``errand db upgrade``)."""

from pathlib import Path

from alembic import command
from alembic.config import Config

#: Folder of the Alembic environment (inside the package, so images carry it).
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """Return an Alembic config pointing at the packaged migrations and ``database_url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade_database(database_url: str, revision: str = "head") -> None:
    """Bring the database at ``database_url`` up to ``revision``."""
    command.upgrade(alembic_config(database_url), revision)


def main() -> None:
    """Upgrade ``ERRAND_DATABASE_URL`` to head (``python -m errand_schema.migrate``)."""
    from errand_schema.logging import configure_logging
    from errand_schema.settings import DatabaseSettings

    configure_logging("INFO")
    upgrade_database(DatabaseSettings().database_url)


if __name__ == "__main__":
    main()
