"""The ``calibration-request`` deployment's parameters, as the Prefect UI's Run form and the
server's schema check see them: every field described, the request's required fields
required, a run range and an experiment constrained before any run exists."""

from __future__ import annotations

import jsonschema
import pytest

pytestmark = pytest.mark.unit


def schema() -> dict:  # type: ignore[type-arg]
    # Imported here, not at collection: loading a flow module fixes Prefect's settings in the
    # process, and the stack tier (which collects this file too) sets its API address later.
    from prefect.utilities.callables import parameter_schema

    from flows.request import calibration_request

    return parameter_schema(calibration_request.fn).model_dump_for_openapi()


def test_every_parameter_is_described_and_the_request_fields_required() -> None:
    found = schema()
    assert found["required"] == ["exp", "runs"]
    undescribed = [name for name, p in found["properties"].items() if not p.get("description")]
    assert undescribed == []
    assert found["properties"]["kind"]["enum"] == ["prompt", "recalibration", "mc"]


@pytest.mark.parametrize(
    ("parameters", "valid"),
    [
        ({"exp": 1, "runs": "1-8"}, True),
        ({"exp": 1, "runs": "5", "calibrations": ["ChannelT0"], "dry_run": True}, True),
        ({"exp": "abc", "runs": "1-8"}, False),
        ({"exp": -1, "runs": "1-8"}, False),
        ({"exp": 1, "runs": "4-x"}, False),
        ({"exp": 1, "runs": "1-8", "kind": "weekly"}, False),
        ({"exp": 1, "runs": "1-8", "config": {"ChannelT0": 3}}, False),
        ({"runs": "1-8"}, False),
    ],
)
def test_wrong_types_fail_the_schema_the_server_checks(parameters: dict, valid: bool) -> None:  # type: ignore[type-arg]
    validator = jsonschema.Draft202012Validator(schema())
    assert (not list(validator.iter_errors(parameters))) is valid
