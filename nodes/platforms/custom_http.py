"""Any HTTP endpoint: sends the invocation as a JSON envelope and returns the endpoint's answer as the output.

This is the adapter for agents that really answer (the chat platforms only acknowledge), so the response body
becomes the invocation `output` (parsed when it is JSON) and the endpoint may report what the call cost, in a
top-level `cost_usd` number or an `X-Cost-USD` header, read exactly as a Decimal.

GET and DELETE carry no body (many servers and proxies drop one), so for those the envelope's fields go in the
query string, with `input` and `context` as JSON text. Each request carries `Idempotency-Key: <invocation id>`
so an endpoint can recognise a retried delivery.

`headers` here are stored unencrypted with the agent: secrets belong in auth_config (auth_type custom).
"""

from __future__ import annotations

import json
import logging
import math
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx

from external_agents.errors import ValidationError
from external_agents.nodes.platforms.base import (
    DeliveryRequest,
    OutgoingRequest,
    PlatformAdapter,
    check_fields,
    encode_json,
    require_http_url,
    validate_headers,
)

logger = logging.getLogger(__name__)

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

    def parse_response(self, response: httpx.Response) -> tuple[Any, Decimal | None]:
        if not response.content:
            return None, _header_cost(response)
        if _is_json(response):
            try:
                body = response.json()
            except ValueError:
                return response.text, _header_cost(response)
            cost = _body_cost(response) if isinstance(body, dict) and "cost_usd" in body else None
            return body, cost if cost is not None else _header_cost(response)
        return response.text, _header_cost(response)


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


def _body_cost(response: httpx.Response) -> Decimal | None:
    # Parsed again with Decimal floats so 0.1 is exactly 0.1, not the nearest binary fraction.
    value = json.loads(response.content, parse_float=Decimal).get("cost_usd")
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        logger.warning("custom_http.cost_ignored reason=cost_usd_not_a_number")
        return None
    return _valid_cost(Decimal(value))


def _header_cost(response: httpx.Response) -> Decimal | None:
    value = response.headers.get(COST_HEADER)
    if value is None:
        return None
    try:
        return _valid_cost(Decimal(value.strip()))
    except InvalidOperation:
        logger.warning("custom_http.cost_ignored reason=header_not_a_number")
        return None


def _valid_cost(cost: Decimal) -> Decimal | None:
    # A bad figure from the endpoint must not fail a delivery that succeeded; the estimate is used instead.
    if not cost.is_finite() or cost < 0:
        logger.warning("custom_http.cost_ignored reason=negative_or_not_finite")
        return None
    return cost
