"""The delivery step's plain functions: credentials opened only here, the adapter's result made a typed result."""

from __future__ import annotations

from decimal import Decimal

import pytest
from cryptography.fernet import Fernet

from external_agents.credential_cipher import CredentialCipher
from external_agents.errors import PlatformError, PlatformTimeoutError
from external_agents.identity import Identity
from external_agents.nodes.delivery import (
    credentials_event,
    delivered,
    delivery_failed,
    delivery_request,
    unseal,
)
from external_agents.nodes.invocation_state import Delivered, DeliveryFailed
from external_agents.nodes.platforms.base import DeliveryResult
from tests.factories import agent_snapshot, invocation

CIPHER = CredentialCipher([Fernet.generate_key().decode()])
SECRETS = {"auth": {"token": "platform-secret"}, "platform": {"signing_secret": "s3"}}


def test_sealed_credentials_open_only_with_the_cipher_and_fill_their_placeholders():
    agent = agent_snapshot(
        sealed_credentials=CIPHER.encrypt(SECRETS),
        platform_config={"url": "https://p.example", "signing_secret": "***"},
        auth_config={"auth_type": "bearer_token", "header": "Authorization"},
    )

    request = delivery_request(
        agent=agent,
        sealed=unseal(CIPHER, agent),
        invocation_id="i-1",
        trace_id="trc_1",
        input={"q": 1},
        context={"env": "prod"},
        identity=Identity(external_user_id="u", external_system="crm"),
    )

    assert request.credentials == {"token": "platform-secret"}
    assert request.platform_config == {"url": "https://p.example", "signing_secret": "s3"}
    assert (request.auth_type, request.auth_config) == ("bearer_token", {"header": "Authorization"})
    assert (request.external_user_id, request.external_user_email, request.external_system) == ("u", None, "crm")
    assert "platform-secret" not in repr(request)


def test_an_agent_without_credentials_unseals_to_nothing():
    assert unseal(CIPHER, agent_snapshot(sealed_credentials=None)) == {}


def test_a_result_becomes_delivered_with_the_reported_cost_in_micros():
    result = delivered(
        DeliveryResult(status_code=200, output={"a": 1}, reported_cost="0.02", attempts=2),
        max_reported_cost_usd=Decimal(1000),
    )

    assert result == Delivered(status_code=200, output={"a": 1}, reported_cost_micros=20_000, attempts=2)


@pytest.mark.parametrize("reported", ["1e999990", "1_000", "0.0000001", "-1", "1000.000001"])
def test_a_cost_not_believed_is_no_cost_and_the_record_says_why(reported: str):
    result = delivered(
        DeliveryResult(status_code=200, output={"a": 1}, reported_cost=reported, attempts=1),
        max_reported_cost_usd=Decimal(1000),
    )

    assert result.reported_cost_micros is None
    assert result.record_note is not None
    assert result.record_note.startswith(f"reported cost {reported!r} ignored (")


def test_an_output_that_is_not_storable_becomes_text_with_a_note():
    result = delivered(
        DeliveryResult(status_code=200, output={"v": float("nan"), "s": "a\x00b"}, reported_cost=None, attempts=1),
        max_reported_cost_usd=Decimal(1000),
    )

    assert result.output == '{"v": NaN, "s": "a\\u0000b"}'
    assert result.record_note == "output kept as text, not storable as JSON: output.v: nan is not a JSON number"


def test_a_platform_error_becomes_delivery_failed_saying_whether_it_timed_out_or_reached_the_platform():
    timeout = delivery_failed(PlatformTimeoutError("timed out after 2s", attempts=3))
    refused = delivery_failed(PlatformError("connection refused", reached_platform=False, attempts=1))

    assert timeout == DeliveryFailed(
        timed_out=True, status_code=None, attempts=3, reached_platform=True, error="timed out after 2s"
    )
    assert not refused.timed_out and not refused.reached_platform


def test_opening_the_credentials_is_audited_for_the_invocation():
    current = invocation()

    event = credentials_event(current)

    assert event.event_type == "external_agent.credentials_accessed"
    assert event.details == {"purpose": "delivery", "invocation_id": current.invocation_id}
