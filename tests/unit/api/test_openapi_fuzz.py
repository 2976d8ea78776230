"""schemathesis against the live OpenAPI spec: no 5xx, no response that breaks the spec."""

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)

from errand.dev import DevSystem, build_dev_system

#: Examples per operation (the suite must stay fast on 2 cores).
EXAMPLES = 25


@pytest.fixture(scope="module")
def fuzz_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSystem]:
    """One in-process system for every generated case (worker threads off)."""
    system = build_dev_system(tmp_path_factory.mktemp("fuzz"), threads=1)
    yield system
    system.close()


# Hypothesis flags any change of the global random state while it draws a case; the dev
# system's background threads (Dramatiq, Socket.IO, retry jitter) may make one at that
# moment. It is not our strategy using random, so that one heuristic is silenced here.
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
def test_no_operation_answers_5xx_or_breaks_its_spec(fuzz_system: DevSystem) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_system.api)
    headers = {"Authorization": f"Bearer {fuzz_system.api_key}"}
    checks = [not_a_server_error, response_schema_conformance, content_type_conformance]
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=checks)

        run()
        tested.append(operation.label)
    assert len(tested) >= 15, tested
