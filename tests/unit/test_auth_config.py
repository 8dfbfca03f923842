"""auth_config validation (every auth type, every error message), redaction, and Retry-After parsing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from external_agents.errors import ValidationError
from external_agents.nodes.platforms.auth import validate_auth_config
from external_agents.nodes.platforms.delivery import parse_retry_after, redact

TOKEN_URL = "https://login.example.com/oauth2/token"


@pytest.mark.parametrize(
    ("auth_config", "expected"),
    [
        ({}, ("none", {}, {})),
        ({"auth_type": "none", "credentials": {}}, ("none", {}, {})),
        (
            {"auth_type": "api_key", "credentials": {"api_key": "k1"}},
            ("api_key", {"header_name": "X-API-Key"}, {"api_key": "k1"}),
        ),
        (
            {"auth_type": "api_key", "credentials": {"key": "k1", "header_name": "X-Key"}},
            ("api_key", {"header_name": "X-Key"}, {"api_key": "k1"}),
        ),
        (
            {"auth_type": "api_key", "header_name": "Authorization", "credentials": {"key": "k1"}},
            ("api_key", {"header_name": "Authorization"}, {"api_key": "k1"}),
        ),
        ({"auth_type": "bearer_token", "credentials": {"token": "t1"}}, ("bearer_token", {}, {"token": "t1"})),
        (
            {"auth_type": "basic", "credentials": {"username": "ada", "password": "pässwörd"}},
            ("basic", {}, {"username": "ada", "password": "pässwörd"}),
        ),
        (
            {
                "auth_type": "oauth2",
                "credentials": {"client_id": "c1", "client_secret": "s1", "token_url": TOKEN_URL, "scope": "a b"},
            },
            (
                "oauth2",
                {"token_url": TOKEN_URL, "token_auth_method": "client_secret_basic", "scope": "a b"},
                {"client_id": "c1", "client_secret": "s1"},
            ),
        ),
        (
            {
                "auth_type": "oauth2",
                "token_url": TOKEN_URL,
                "token_auth_method": "client_secret_post",
                "credentials": {"client_id": "c1", "client_secret": "s1"},
            },
            (
                "oauth2",
                {"token_url": TOKEN_URL, "token_auth_method": "client_secret_post"},
                {"client_id": "c1", "client_secret": "s1"},
            ),
        ),
        ({"auth_type": "oauth2", "credentials": {"token": "ready"}}, ("oauth2", {}, {"token": "ready"})),
        (
            {"auth_type": "custom", "credentials": {"headers": {"X-A": "1", "X-B": "two"}}},
            ("custom", {}, {"headers": {"X-A": "1", "X-B": "two"}}),
        ),
        (
            {"auth_type": "hmac", "credentials": {"secret": "s"}},
            ("hmac", {"algorithm": "sha256", "header_name": "X-Signature"}, {"secret": "s"}),
        ),
        (
            {"auth_type": "hmac", "credentials": {"secret": "s", "algorithm": "SHA512", "header_name": "X-Hub-Sig"}},
            ("hmac", {"algorithm": "sha512", "header_name": "X-Hub-Sig"}, {"secret": "s"}),
        ),
        (
            {"auth_type": "hmac", "algorithm": "sha1", "credentials": {"secret": "s"}},
            ("hmac", {"algorithm": "sha1", "header_name": "X-Signature"}, {"secret": "s"}),
        ),
    ],
)
def test_valid_auth_configs_split_secrets_from_settings(
    auth_config: dict[str, Any], expected: tuple[str, dict[str, Any], dict[str, Any]]
) -> None:
    assert validate_auth_config(auth_config) == expected


@pytest.mark.parametrize(
    ("auth_config", "message"),
    [
        ("bearer", "auth_config must be an object"),
        (
            {"auth_type": "jwt"},
            "Unknown auth_type 'jwt'; expected one of: none, api_key, bearer_token, basic, oauth2, custom, hmac",
        ),
        ({"auth_type": "none", "credentials": "x"}, "auth_config.credentials must be an object"),
        (
            {"auth_type": "none", "credentials": {"token": "t"}},
            "auth_config.credentials.token is not a field of auth_type none; expected: nothing",
        ),
        (
            {"auth_type": "bearer_token", "header": "X"},
            "auth_config.header is not a field of auth_type bearer_token; expected: credentials",
        ),
        (
            {"auth_type": "bearer_token", "credentials": {"tokn": "t"}},
            "auth_config.credentials.tokn is not a field of auth_type bearer_token; expected: token",
        ),
        (
            {"auth_type": "api_key", "credentials": {}},
            "auth_config.credentials.api_key is required for auth_type api_key "
            "(auth_config.credentials.key is accepted too)",
        ),
        (
            {"auth_type": "api_key", "credentials": {"api_key": "k", "header_name": "Bad Header"}},
            "auth_config.header_name: 'Bad Header' is not a valid header name",
        ),
        (
            {"auth_type": "api_key", "credentials": {"api_key": "k", "header_name": "Host"}},
            "auth_config.header_name cannot be Host; the HTTP client sets it",
        ),
        (
            {"auth_type": "api_key", "credentials": {"api_key": "k\r\nX-Evil: 1"}},
            "auth_config.credentials.api_key must be printable ASCII (it is sent in an HTTP header)",
        ),
        ({"auth_type": "bearer_token"}, "auth_config.credentials.token is required for auth_type bearer_token"),
        (
            {"auth_type": "bearer_token", "credentials": {"token": ""}},
            "auth_config.credentials.token is required for auth_type bearer_token",
        ),
        (
            {"auth_type": "bearer_token", "credentials": {"token": 123}},
            "auth_config.credentials.token must be a string",
        ),
        (
            {"auth_type": "basic", "credentials": {"username": "ada"}},
            "auth_config.credentials.password is required for auth_type basic",
        ),
        (
            {"auth_type": "basic", "credentials": {"password": "pw"}},
            "auth_config.credentials.username is required for auth_type basic",
        ),
        (
            {"auth_type": "basic", "credentials": {"username": "a:b", "password": "pw"}},
            "auth_config.credentials.username must not contain ':' (RFC 7617)",
        ),
        (
            {"auth_type": "oauth2", "credentials": {}},
            "auth_config.credentials.client_id is required for auth_type oauth2 (with client_secret and "
            "token_url), or give a ready token in auth_config.credentials.token",
        ),
        (
            {"auth_type": "oauth2", "credentials": {"client_id": "c", "token_url": TOKEN_URL}},
            "auth_config.credentials.client_secret is required for auth_type oauth2",
        ),
        (
            {"auth_type": "oauth2", "credentials": {"client_id": "c", "client_secret": "s"}},
            "auth_config.credentials.token_url is required for auth_type oauth2",
        ),
        (
            {"auth_type": "oauth2", "credentials": {"client_secret": "s", "token_url": TOKEN_URL}},
            "auth_config.credentials.client_id is required for auth_type oauth2",
        ),
        (
            {"auth_type": "oauth2", "credentials": {"client_id": "c", "client_secret": "s", "token_url": "ftp://x/"}},
            "auth_config.credentials.token_url must be an absolute http(s) URL",
        ),
        (
            {
                "auth_type": "oauth2",
                "token_auth_method": "private_key_jwt",
                "credentials": {"client_id": "c", "client_secret": "s", "token_url": TOKEN_URL},
            },
            "auth_config.token_auth_method must be one of: client_secret_basic, client_secret_post",
        ),
        (
            {"auth_type": "oauth2", "credentials": {"token": "t", "client_id": "c"}},
            "auth_config.credentials for auth_type oauth2 takes either token or client_id, client_secret and "
            "token_url, not both",
        ),
        (
            {"auth_type": "custom", "credentials": {}},
            "auth_config.credentials.headers is required for auth_type custom",
        ),
        (
            {"auth_type": "custom", "credentials": {"headers": ["X-A: 1"]}},
            "auth_config.credentials.headers must be an object of header names to string values",
        ),
        (
            {"auth_type": "custom", "credentials": {"headers": {"X-A": 1}}},
            "auth_config.credentials.headers.X-A must be a string",
        ),
        (
            {"auth_type": "custom", "credentials": {"headers": {"Content-Length": "1"}}},
            "auth_config.credentials.headers cannot be Content-Length; the HTTP client sets it",
        ),
        (
            {"auth_type": "custom", "credentials": {"headers": {"X-A": "é"}}},
            "auth_config.credentials.headers.X-A must be printable ASCII (it is sent in an HTTP header)",
        ),
        ({"auth_type": "hmac", "credentials": {}}, "auth_config.credentials.secret is required for auth_type hmac"),
        (
            {"auth_type": "hmac", "credentials": {"secret": "s", "algorithm": "md5"}},
            "auth_config.algorithm must be one of: sha256, sha1, sha512",
        ),
        (
            {"auth_type": "hmac", "credentials": {"secret": "s", "header_name": ""}},
            "auth_config.header_name must be a non-empty string",
        ),
    ],
)
def test_invalid_auth_configs_name_the_field(auth_config: Any, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_auth_config(auth_config)
    assert caught.value.detail == message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /x?api_key=abc123&page=2", "GET /x?api_key=***&page=2"),
        ("apikey: abc123", "apikey: ***"),
        ("X-API-Key: abc123", "X-API-Key: ***"),
        ("token=abc.def-ghi", "token=***"),
        ('{"access_token": "eyJhbGciOi", "expires_in": 60}', '{"access_token": "***", "expires_in": 60}'),
        ("client_secret=s3cr3t", "client_secret=***"),
        ("password: hunter2", "password: ***"),
        ("Authorization: Bearer eyJhbGciOi.x.y", "Authorization: Bearer ***"),
        ("authorization: bearer abc", "authorization: bearer ***"),
        ("Authorization: Basic YWRhOnB3", "Authorization: Basic ***"),
        (
            "POST https://api.telegram.org/bot123456:ABC-DEF_ghijklmnopqrstuvwxyz/sendMessage",
            "POST https://api.telegram.org/bot***/sendMessage",
        ),
        ("token 123456:ABC-DEF_ghijklmnopqrstuvwxyz leaked", "token *** leaked"),
        ("https://ada:pw@example.com/x", "https://***@example.com/x"),
        ("https://hooks.example.com/x?sig=abcdef", "https://hooks.example.com/x?sig=***"),
        ("nothing secret here: 42", "nothing secret here: 42"),
    ],
)
def test_redact_hides_credentials(text: str, expected: str) -> None:
    assert redact(text) == expected


NOW = datetime(2025, 1, 15, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 0 ", 0.0),
        ("1.5", 1.5),
        ("Wed, 15 Jan 2025 12:00:30 GMT", 30.0),
        ("Wed, 15 Jan 2025 11:59:00 GMT", 0.0),
        ("-5", None),
        ("nan", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected
