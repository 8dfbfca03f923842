"""Agent auth: validating an `auth_config` at registration, and turning it into request headers at delivery.

`validate_auth_config` splits what a user sends into the auth type, the non-secret settings (stored as the
agent's `auth_config`) and the secrets (stored encrypted as its credentials), so the secrets are never kept
or returned in the clear. `auth_headers` is the only code that reads decrypted secrets, and only while a
delivery is being built.

The OAuth2 client-credentials grant fetches an access token from the agent's token endpoint;
`OAuth2TokenCache` keeps it until shortly before it expires, and its per-grant lock makes concurrent
invocations of the same agent share one token request instead of stampeding the identity provider.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import httpx

from external_agents.errors import PlatformError, ValidationError
from external_agents.nodes.platforms.base import (
    check_header_name,
    check_header_value,
    check_http_url,
    check_no_control_characters,
    json_object,
    validate_headers,
)
from external_agents.nodes.platforms.http_client import (
    PlatformClient,
    buffered_response,
    failure_name,
    request_timeout,
)

AUTH_TYPES = ("none", "api_key", "bearer_token", "basic", "oauth2", "custom", "hmac")
HMAC_ALGORITHMS = ("sha256", "sha1", "sha512")
TOKEN_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
DEFAULT_API_KEY_HEADER = "X-API-Key"
DEFAULT_SIGNATURE_HEADER = "X-Signature"
# Used when a token endpoint leaves out expires_in; short, so a revoked token does not linger.
DEFAULT_TOKEN_LIFETIME_SECONDS = 300.0

# Settings that are not secret: accepted at the top level of auth_config or inside credentials (SPEC lists
# them with the credentials), and stored unencrypted so they can be shown.
_OPTIONS: dict[str, tuple[str, ...]] = {
    "api_key": ("header_name",),
    "hmac": ("algorithm", "header_name"),
    "oauth2": ("token_url", "scope", "token_auth_method"),
}
_SECRETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "api_key": ("api_key", "key"),
    "bearer_token": ("token",),
    "basic": ("username", "password"),
    "oauth2": ("client_id", "client_secret", "token"),
    "custom": ("headers",),
    "hmac": ("secret",),
}


def validate_auth_config(auth_config: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Return (auth_type, non-secret config, credentials), normalised, or raise ValidationError naming the field.

    `auth_config` is `{"auth_type": ..., "credentials": {...}}`; a missing auth_type means "none".
    """
    if not isinstance(auth_config, dict):
        raise ValidationError("auth_config must be an object")
    auth_type = auth_config.get("auth_type", "none")
    if auth_type not in AUTH_TYPES:
        raise ValidationError(f"Unknown auth_type {auth_type!r}; expected one of: {', '.join(AUTH_TYPES)}")
    credentials = auth_config.get("credentials") or {}
    if not isinstance(credentials, dict):
        raise ValidationError("auth_config.credentials must be an object")
    options_allowed = _OPTIONS.get(auth_type, ())
    for name in auth_config:
        if name not in ("auth_type", "credentials", *options_allowed):
            raise ValidationError(_unknown(f"auth_config.{name}", auth_type, ("credentials", *options_allowed)))
    for name in credentials:
        if name not in (*_SECRETS[auth_type], *options_allowed):
            raise ValidationError(
                _unknown(f"auth_config.credentials.{name}", auth_type, (*_SECRETS[auth_type], *options_allowed))
            )
    options = {name: auth_config.get(name, credentials.get(name)) for name in options_allowed}
    secrets = {name: value for name, value in credentials.items() if name not in options_allowed}
    non_secret, normalised = _VALIDATORS[auth_type](secrets, {k: v for k, v in options.items() if v is not None})
    return auth_type, non_secret, normalised


def _unknown(path: str, auth_type: str, expected: tuple[str, ...]) -> str:
    listed = ", ".join(expected) if expected else "nothing"
    return f"{path} is not a field of auth_type {auth_type}; expected: {listed}"


def _secret(credentials: Mapping[str, Any], name: str, auth_type: str, *, header: bool = True) -> str:
    value = credentials.get(name)
    path = f"auth_config.credentials.{name}"
    if value is None or value == "":
        raise ValidationError(f"{path} is required for auth_type {auth_type}")
    if not isinstance(value, str):
        raise ValidationError(f"{path} must be a string")
    if header:
        check_header_value(value, field=path)
    else:
        check_no_control_characters(value, field=path)
    return value


def _option(options: Mapping[str, Any], name: str, default: str) -> str:
    value = options.get(name, default)
    if not isinstance(value, str) or not value:
        raise ValidationError(f"auth_config.{name} must be a non-empty string")
    return value


def _none(secrets: dict[str, Any], options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return {}, {}


def _api_key(secrets: dict[str, Any], options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    name = "api_key" if "api_key" in secrets or "key" not in secrets else "key"
    if secrets.get(name) in (None, ""):
        raise ValidationError(
            "auth_config.credentials.api_key is required for auth_type api_key "
            "(auth_config.credentials.key is accepted too)"
        )
    key = _secret(secrets, name, "api_key")
    header_name = _option(options, "header_name", DEFAULT_API_KEY_HEADER)
    check_header_name(header_name, field="auth_config.header_name")
    return {"header_name": header_name}, {"api_key": key}


def _bearer(secrets: dict[str, Any], options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return {}, {"token": _secret(secrets, "token", "bearer_token")}


def _basic(secrets: dict[str, Any], options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    # Basic auth base64-encodes these, so any Unicode is fine; only ':' in the user name is ambiguous.
    username = _secret(secrets, "username", "basic", header=False)
    password = _secret(secrets, "password", "basic", header=False)
    if ":" in username:
        raise ValidationError("auth_config.credentials.username must not contain ':' (RFC 7617)")
    return {}, {"username": username, "password": password}


def _oauth2(secrets: dict[str, Any], options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    grant_fields = ("client_id", "client_secret", "token_url")
    given = [name for name in grant_fields if secrets.get(name) or options.get(name)]
    if "token" in secrets:
        if given:
            raise ValidationError(
                "auth_config.credentials for auth_type oauth2 takes either token or "
                "client_id, client_secret and token_url, not both"
            )
        return {}, {"token": _secret(secrets, "token", "oauth2")}
    if not given:
        raise ValidationError(
            "auth_config.credentials.client_id is required for auth_type oauth2 "
            "(with client_secret and token_url), or give a ready token in auth_config.credentials.token"
        )
    client_id = _secret(secrets, "client_id", "oauth2", header=False)
    client_secret = _secret(secrets, "client_secret", "oauth2", header=False)
    token_url = options.get("token_url")
    if not isinstance(token_url, str) or not token_url:
        raise ValidationError("auth_config.credentials.token_url is required for auth_type oauth2")
    check_http_url(token_url, field="auth_config.credentials.token_url")
    non_secret: dict[str, Any] = {
        "token_url": token_url,
        "token_auth_method": _option(options, "token_auth_method", "client_secret_basic"),
    }
    if non_secret["token_auth_method"] not in TOKEN_AUTH_METHODS:
        raise ValidationError(f"auth_config.token_auth_method must be one of: {', '.join(TOKEN_AUTH_METHODS)}")
    if "scope" in options:
        non_secret["scope"] = _option(options, "scope", "")
    return non_secret, {"client_id": client_id, "client_secret": client_secret}


def _custom(secrets: dict[str, Any], options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    headers = secrets.get("headers")
    if not headers:
        raise ValidationError("auth_config.credentials.headers is required for auth_type custom")
    return {}, {"headers": validate_headers(headers, field="auth_config.credentials.headers")}


def _hmac(secrets: dict[str, Any], options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    secret = _secret(secrets, "secret", "hmac", header=False)
    algorithm = _option(options, "algorithm", "sha256").lower()
    if algorithm not in HMAC_ALGORITHMS:
        raise ValidationError(f"auth_config.algorithm must be one of: {', '.join(HMAC_ALGORITHMS)}")
    header_name = _option(options, "header_name", DEFAULT_SIGNATURE_HEADER)
    check_header_name(header_name, field="auth_config.header_name")
    return {"algorithm": algorithm, "header_name": header_name}, {"secret": secret}


_VALIDATORS: dict[str, Callable[[dict[str, Any], dict[str, Any]], tuple[dict[str, Any], dict[str, Any]]]] = {
    "none": _none,
    "api_key": _api_key,
    "bearer_token": _bearer,
    "basic": _basic,
    "oauth2": _oauth2,
    "custom": _custom,
    "hmac": _hmac,
}


@dataclass(frozen=True)
class OAuth2ClientCredentials:
    """One agent's client-credentials grant (RFC 6749 §4.4)."""

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None
    auth_method: str = "client_secret_basic"

    @property
    def cache_key(self) -> str:
        # Hashed so the cache holds no client ids in the clear; the secret is left out so a rotated secret
        # keeps using a still-valid token.
        raw = "\0".join((self.token_url, self.client_id, self.scope or ""))
        return hashlib.sha256(raw.encode()).hexdigest()


def client_credentials_grant(
    auth_type: str, auth_config: Mapping[str, Any], credentials: Mapping[str, Any]
) -> OAuth2ClientCredentials | None:
    """The grant to fetch tokens with, or None when the agent does not use one."""
    if auth_type != "oauth2" or "client_id" not in credentials:
        return None
    return OAuth2ClientCredentials(
        token_url=auth_config["token_url"],
        client_id=credentials["client_id"],
        client_secret=credentials["client_secret"],
        scope=auth_config.get("scope"),
        auth_method=auth_config.get("token_auth_method", "client_secret_basic"),
    )


@dataclass
class _CachedToken:
    token: str
    expires_at: float


class OAuth2TokenCache:
    """Access tokens per grant, in memory, until `margin_seconds` before they expire."""

    def __init__(self, *, margin_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._margin = margin_seconds
        self._clock = clock
        self._tokens: dict[str, _CachedToken] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get_token(self, grant: OAuth2ClientCredentials, *, client: PlatformClient, timeout_seconds: float) -> str:
        key = grant.cache_key
        cached = self._valid(key)
        if cached is not None:
            return cached
        async with self._locks.setdefault(key, asyncio.Lock()):
            # Another invocation may have fetched it while this one waited for the lock.
            cached = self._valid(key)
            if cached is not None:
                return cached
            token, lifetime = await _fetch_token(grant, client=client, timeout_seconds=timeout_seconds)
            # Half the lifetime at most, so a token that lives less than the margin is still reused.
            margin = min(self._margin, lifetime / 2)
            self._tokens[key] = _CachedToken(token, self._clock() + lifetime - margin)
            return token

    def invalidate(self, grant: OAuth2ClientCredentials, *, rejected_token: str) -> None:
        """Forget the token a platform rejected, unless another invocation already replaced it."""
        cached = self._tokens.get(grant.cache_key)
        if cached is not None and cached.token == rejected_token:
            del self._tokens[grant.cache_key]

    def _valid(self, key: str) -> str | None:
        cached = self._tokens.get(key)
        if cached is not None and cached.expires_at > self._clock():
            return cached.token
        return None


async def _fetch_token(
    grant: OAuth2ClientCredentials, *, client: PlatformClient, timeout_seconds: float
) -> tuple[str, float]:
    form = {"grant_type": "client_credentials"}
    if grant.scope:
        form["scope"] = grant.scope
    headers = {"Accept": "application/json"}
    if grant.auth_method == "client_secret_post":
        form |= {"client_id": grant.client_id, "client_secret": grant.client_secret}
    else:
        # RFC 6749 §2.3.1: form-encode id and secret before they go into the Basic header.
        pair = f"{quote(grant.client_id, safe='')}:{quote(grant.client_secret, safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    host = httpx.URL(grant.token_url).host
    # Form-encoded here, as httpx did, with its Content-Type: the client adds no Content-Type of its own.
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        async with client.session().post(
            grant.token_url,
            data=urlencode(form).encode(),
            headers=headers,
            allow_redirects=False,
            timeout=request_timeout(timeout_seconds),
        ) as answer:
            response = buffered_response(answer, await answer.read())
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PlatformError(
            f"oauth2 token request to {host} failed: {failure_name(exc)[0]}",
            retryable=True,
            reached_platform=False,
        ) from exc
    if not response.is_success:
        raise PlatformError(
            f"oauth2 token request to {host} returned HTTP {response.status_code}{_oauth_error(response)}",
            retryable=response.status_code == 429 or response.status_code >= 500,
            reached_platform=False,
        )
    try:
        body = response.json()
        token = body["access_token"]
        lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME_SECONDS)
    except (ValueError, KeyError, TypeError) as exc:
        raise PlatformError(f"oauth2 token response from {host} has no access_token", reached_platform=False) from exc
    if not isinstance(token, str) or not token:
        raise PlatformError(f"oauth2 token response from {host} has no access_token", reached_platform=False)
    return token, max(lifetime, 0.0)


def _oauth_error(response: httpx.Response) -> str:
    # Only the RFC 6749 error code: the description is free text that some servers fill with request data.
    error = (json_object(response) or {}).get("error")
    return f" ({error})" if isinstance(error, str) else ""


async def auth_headers(
    *,
    auth_type: str,
    auth_config: Mapping[str, Any],
    credentials: Mapping[str, Any],
    body: bytes,
    client: PlatformClient,
    token_cache: OAuth2TokenCache,
    timeout_seconds: float,
) -> dict[str, str]:
    """The headers that authenticate one request; `body` is the exact bytes sent, for HMAC."""
    if auth_type == "none":
        return {}
    if auth_type == "api_key":
        key = _secret(credentials, "api_key", auth_type)
        return {auth_config.get("header_name", DEFAULT_API_KEY_HEADER): key}
    if auth_type == "bearer_token":
        return {"Authorization": f"Bearer {_secret(credentials, 'token', auth_type)}"}
    if auth_type == "basic":
        username = _secret(credentials, "username", auth_type, header=False)
        password = _secret(credentials, "password", auth_type, header=False)
        pair = f"{username}:{password}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
    if auth_type == "oauth2":
        grant = client_credentials_grant(auth_type, auth_config, credentials)
        if grant is None:
            token = _secret(credentials, "token", auth_type)
        else:
            token = await token_cache.get_token(grant, client=client, timeout_seconds=timeout_seconds)
        return {"Authorization": f"Bearer {token}"}
    if auth_type == "custom":
        return dict(credentials.get("headers") or {})
    if auth_type == "hmac":
        algorithm = auth_config.get("algorithm", "sha256")
        secret = _secret(credentials, "secret", auth_type, header=False)
        digest = hmac.new(secret.encode(), body, algorithm).hexdigest()
        return {auth_config.get("header_name", DEFAULT_SIGNATURE_HEADER): f"{algorithm}={digest}"}
    raise ValidationError(f"Unknown auth_type {auth_type!r}; expected one of: {', '.join(AUTH_TYPES)}")
