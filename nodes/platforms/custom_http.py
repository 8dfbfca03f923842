"""Any HTTP endpoint: sends the invocation as a JSON envelope and returns the endpoint's answer as the output.

This is the adapter for agents that really answer (the chat platforms only acknowledge), so the response body
becomes the invocation `output` (parsed when it is JSON) and the endpoint may report what the call cost, in a
top-level `cost_usd` number or an `X-Cost-USD` header; the figure is passed on as the text it sent, for
delivery to parse strictly (reported_cost.py). An answer that is JSON but not storable as JSON (NaN,
Infinity, `1e400`, a lone surrogate, NUL: see storable_values.py) is kept as its text, with a note.

GET and DELETE carry no body (many servers and proxies drop one), so for those the envelope's fields go in the
query string, with `input` and `context` as JSON text. Each request carries `Idempotency-Key: <invocation id>`
so an endpoint can recognise a retried delivery.

`headers` here are stored unencrypted with the agent: secrets belong in auth_config (auth_type custom).
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx

from external_agents.errors import ValidationError
from external_agents.nodes.platforms.base import (
    DeliveryRequest,
    OutgoingRequest,
    PlatformAdapter,
    PlatformAnswer,
    check_fields,
    encode_json,
    require_http_url,
    validate_headers,
)
from external_agents.request_models import load_json
from external_agents.storable_values import storable_output

METHODS = ("POST", "GET", "PUT", "PATCH", "DELETE")
COST_HEADER = "X-Cost-USD"
_QUERY_METHODS = ("GET", "DELETE")


class CustomHttpAdapter(PlatformAdapter):
    platform = "custom_http"
    url_field = "url"

    def validate_config(self, platform_config: dict[str, Any]) -> dict[str, Any]:
        check_fields(platform_config, allowed=("url", "method", "headers", "timeout"), prefix="platform_config")
        config: dict[str, Any] = {"url": require_http_url(platform_config, "url")}
        method = platform_config.get("method", "POST")
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise ValidationError(f"platform_config.method must be one of: {', '.join(METHODS)}")
        config["method"] = method.upper()
        if "headers" in platform_config:
            config["headers"] = validate_headers(platform_config["headers"], field="platform_config.headers")
        if "timeout" in platform_config:
            timeout = platform_config["timeout"]
            if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
                raise ValidationError("platform_config.timeout must be a positive number of seconds")
            config["timeout"] = timeout
        return config

    def build_request(self, request: DeliveryRequest) -> OutgoingRequest:
        config = request.platform_config
        method = config.get("method", "POST")
        headers = {
            "Accept": "application/json, text/plain;q=0.9, */*;q=0.1",
            "Idempotency-Key": request.invocation_id,
            "X-Kaizen-Invocation-ID": request.invocation_id,
            "X-Kaizen-Trace-ID": request.trace_id,
            **config.get("headers", {}),
        }
        envelope = {
            "invocation_id": request.invocation_id,
            "trace_id": request.trace_id,
            "agent_id": request.agent_id,
            "input": request.input,
            "context": request.context,
            "external_user": {
                "id": request.external_user_id,
                "email": request.external_user_email,
                "name": request.external_user_name,
            },
            "external_system": request.external_system,
            "session_id": request.external_session_id,
        }
        timeout = config.get("timeout")
        if method in _QUERY_METHODS:
            url = httpx.URL(config["url"]).copy_merge_params(_query(envelope))
            return OutgoingRequest(method=method, url=str(url), headers=headers, timeout_seconds=timeout)
        return OutgoingRequest.json(
            method=method, url=config["url"], payload=envelope, headers=headers, timeout_seconds=timeout
        )

    def parse_response(self, response: httpx.Response) -> PlatformAnswer:
        header_cost = response.headers.get(COST_HEADER)
        if not response.content:
            return PlatformAnswer(None, reported_cost=header_cost)
        if not _is_json(response):
            return _text_answer(response.text, reported_cost=header_cost)
        # Parsing a large answer twice costs milliseconds: only when it may name a cost.
        body_cost = _body_cost(response.content) if b'"cost_usd"' in response.content else None
        cost = body_cost if body_cost is not None else header_cost
        try:
            body = load_json(response.content)
        except json.JSONDecodeError:
            return _text_answer(response.text, reported_cost=cost)
        except ValidationError as exc:
            return _text_answer(
                response.text, reported_cost=cost, note=f"output kept as text, not storable as JSON: {exc.detail}"
            )
        output = storable_output(body, raw_text=response.text)
        return PlatformAnswer(output.value, reported_cost=cost, note=output.note)


def _text_answer(text: str, *, reported_cost: str | None, note: str | None = None) -> PlatformAnswer:
    output = storable_output(text)
    return PlatformAnswer(output.value, reported_cost=reported_cost, note=note or output.note)


def _query(envelope: dict[str, Any]) -> dict[str, str]:
    user = envelope.pop("external_user")
    flat = {**envelope, **{f"external_user_{key}": value for key, value in user.items()}}
    for name in ("input", "context"):
        value = flat[name]
        flat[name] = value if isinstance(value, str) else encode_json(value).decode()
    return {name: value for name, value in flat.items() if value is not None}


def _is_json(response: httpx.Response) -> bool:
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


class _NumberText(str):
    """A JSON number's literal text, told apart from a JSON string holding the same characters."""


def _body_cost(content: bytes) -> str | None:
    """The top-level `cost_usd` number of a JSON object body, as the platform wrote it. Numbers stay text here:
    nothing converts them before the strict parser has bounded their length."""
    try:
        body = json.loads(content, parse_float=_NumberText, parse_int=_NumberText, parse_constant=_NumberText)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict) or "cost_usd" not in body:
        return None
    value = body["cost_usd"]
    # Not a number (a string, null): no report here, so an X-Cost-USD header still counts.
    return str(value) if isinstance(value, _NumberText) else None
