"""At start-up the API and the worker say when the database server's settings will hurt
Errand's tables as they grow (errand_schema.db.server_warnings): autovacuum off."""

import logging
from pathlib import Path

import pytest
from sqlalchemy import text

from errand_schema.db import (
    AUTOVACUUM_OFF,
    create_db_engine,
    server_warnings,
    warn_about_server,
    warnings_for,
)

from resources import PG_ADMIN_DSN, require_service

pytestmark = pytest.mark.integration


def test_the_real_servers_autovacuum_setting_is_reported_as_it_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    engine = create_db_engine(PG_ADMIN_DSN.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            on = conn.execute(text("SHOW autovacuum")).scalar_one() == "on"
        with caplog.at_level(logging.WARNING, logger="test.server"):
            said = warn_about_server(engine, logging.getLogger("test.server"))
    finally:
        engine.dispose()
    assert said == ([] if on else [AUTOVACUUM_OFF])
    assert (AUTOVACUUM_OFF in caplog.text) is not on


def test_autovacuum_off_is_a_warning_and_on_is_none() -> None:
    assert warnings_for({"autovacuum": "off"}) == [AUTOVACUUM_OFF]
    assert warnings_for({"autovacuum": "on"}) == []


def test_sqlite_has_nothing_to_say_and_an_unreachable_server_stops_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert server_warnings(create_db_engine(f"sqlite:///{tmp_path / 'e.db'}")) == []
    nobody = create_db_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    with caplog.at_level(logging.WARNING, logger="test.server"):
        assert warn_about_server(nobody, logging.getLogger("test.server")) == []
    assert caplog.records == []
