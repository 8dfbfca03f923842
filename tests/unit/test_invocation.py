"""Preparing an invocation: identity validated from the headers' fields, body parsed, completeness required later."""

from __future__ import annotations

import pytest

from external_agents.errors import ValidationError
from external_agents.identity import IDENTITY_HEADERS, Identity
from external_agents.nodes.invocation import parse_identity, prepare_invocation, require_complete
from tests.factories import INVOCATION_IDENTITY, INVOCATION_STARTED, invocation


def test_prepare_keeps_the_request_typed_with_metadata_and_merged_context():
    prepared = invocation(
        body={"input": [1, 2], "context": {"role": "ops", "env": "body"}, "metadata": {"ticket": 7}},
        external_context='{"env": "header", "country": "DE"}',
    )

    assert prepared.request.input == [1, 2]
    # The body's context wins over the header's, key by key.
    assert prepared.request.context == {"env": "body", "country": "DE", "role": "ops"}
    assert prepared.request.metadata == {"ticket": 7}
    assert prepared.identity.external_context == {"env": "header", "country": "DE"}
    assert prepared.request_timestamp == INVOCATION_STARTED and prepared.trace_id.startswith("trc_")
    assert prepared.caller.organization_id == "org-1" and prepared.denial is None


def test_no_metadata_is_an_empty_object():
    assert invocation(body={"input": "x"}).request.metadata == {}


def test_absent_headers_are_none_until_require_complete_names_the_first():
    prepared = prepare_invocation(
        caller={"api_key_id": "k", "organization_id": "o"}, agent_id="a", identity={}, body={"input": "x"}
    )

    assert prepared.identity == Identity()
    with pytest.raises(ValidationError, match="Missing required header X-External-User-ID"):
        require_complete(prepared)


def test_a_missing_body_is_required_after_the_headers():
    prepared = prepare_invocation(
        caller={"api_key_id": "k", "organization_id": "o"}, agent_id="a", identity=INVOCATION_IDENTITY, body=None
    )

    assert not prepared.request.body_received
    with pytest.raises(ValidationError, match="Request body is required"):
        require_complete(prepared)
    require_complete(invocation())


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("external_user_id", "x" * 256, "X-External-User-ID must be text of at most 255 characters"),
        ("external_system", "a\x00b", "X-External-System must be text"),
        ("external_user_email", "not-an-email", "X-External-User-Email must be an email address"),
        ("external_context", "[1]", "X-External-Context must be a JSON object"),
        ("external_context", "{bad", "X-External-Context must be a JSON object"),
    ],
)
def test_bad_identity_values_are_refused_naming_the_header(field, value, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        parse_identity({**INVOCATION_IDENTITY, field: value})


def test_every_declared_header_fills_its_field():
    raw = {header.field: f"{header.field}@x" for header in IDENTITY_HEADERS}

    assert parse_identity(raw).fields() == raw
    assert [h.header for h in IDENTITY_HEADERS if h.required] == [
        "X-External-User-ID",
        "X-External-User-Email",
        "X-External-System",
        "X-External-Session-ID",
    ]
