"""Module-scoped resources for test modules that run their own worker processes.

Such a module must not share the session's ``system`` (its worker would take the
module's jobs), so it gets its own database, vhost and Redis prefix::

    infra, db_engine, start_service = own_infra_fixtures("flow")
"""

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from helpers import Infra, ServiceProcess
from resources import engine_on, isolated_infra, service_starter


def own_infra_fixtures(tag: str) -> tuple[Any, Any, Any]:
    """Return the ``infra``, ``db_engine`` and ``start_service`` fixtures of one module."""

    @pytest.fixture(scope="module")
    def infra() -> Iterator[Infra]:
        """Resources of this module alone."""
        with isolated_infra(tag) as own:
            yield own

    @pytest.fixture(scope="module")
    def db_engine(infra: Infra) -> Iterator[Engine]:
        """An engine on this module's database."""
        with engine_on(infra) as engine:
            yield engine

    @pytest.fixture(scope="module")
    def start_service(infra: Infra) -> Iterator[Callable[..., ServiceProcess]]:
        """Start services on this module's resources; all stopped when the module ends."""
        with service_starter(infra) as start:
            yield start

    return infra, db_engine, start_service
