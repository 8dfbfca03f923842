"""The webhook URL policy: scheme, private and metadata addresses, local names, the allowlist and DNS."""

from __future__ import annotations

import pytest

from external_agents.errors import ValidationError
from external_agents.nodes.platforms.webhook_url import check_webhook_url, resolve_and_check, resolve_public_addresses

FIELD = "platform_config.webhook_url"
UNLESS = "refused unless EXTERNAL_AGENT_ALLOW_PRIVATE_WEBHOOKS=true"


def check(url: str, *, allow_private: bool = False, allowed_domains: tuple[str, ...] = ()) -> None:
    check_webhook_url(url, allow_private=allow_private, allowed_domains=allowed_domains, field=FIELD)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.slack.com/services/T0/B0/xyz",
        "https://prod-01.westus.logic.azure.com:443/workflows/abc?sig=x",
        "https://93.184.216.34/hook",
        "https://[2606:4700::1111]/hook",
        "https://example.com.:8443/hook",
    ],
)
def test_public_https_urls_pass(url: str) -> None:
    check(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://hooks.example.com/x", f"{FIELD} must use https (http is allowed only when "),
        ("ftp://example.com/x", f"{FIELD} must use https"),
        ("https://127.0.0.1/x", f"{FIELD}: host 127.0.0.1 is a loopback address; {UNLESS}"),
        ("https://127.1/x", f"{FIELD}: host 127.1 (127.0.0.1) is a loopback address"),
        ("https://2130706433/x", f"{FIELD}: host 2130706433 (127.0.0.1) is a loopback address"),
        ("https://0x7f000001/x", f"{FIELD}: host 0x7f000001 (127.0.0.1) is a loopback address"),
        ("https://[::1]/x", f"{FIELD}: host ::1 is a loopback address"),
        ("https://10.0.0.1/x", f"{FIELD}: host 10.0.0.1 is a private address; {UNLESS}"),
        ("https://172.16.5.4/x", f"{FIELD}: host 172.16.5.4 is a private address"),
        ("https://192.168.1.10/x", f"{FIELD}: host 192.168.1.10 is a private address"),
        ("https://[::ffff:10.0.0.1]/x", f"{FIELD}: host ::ffff:10.0.0.1 (::ffff:a00:1) is a private address"),
        ("https://[64:ff9b::a00:1]/x", f"{FIELD}: host 64:ff9b::a00:1 is a private address"),
        ("https://169.254.1.1/x", f"{FIELD}: host 169.254.1.1 is a link-local address"),
        ("https://[fe80::1]/x", f"{FIELD}: host fe80::1 is a link-local address"),
        ("https://[fd12:3456::1]/x", f"{FIELD}: host fd12:3456::1 is a unique-local address"),
        ("https://0.0.0.0/x", f"{FIELD}: host 0.0.0.0 is an unspecified address"),
        ("https://[::]/x", f"{FIELD}: host :: is an unspecified address"),
        ("https://224.0.0.1/x", f"{FIELD}: host 224.0.0.1 is a multicast address"),
        ("https://[ff02::1]/x", f"{FIELD}: host ff02::1 is a multicast address"),
        ("https://240.0.0.1/x", f"{FIELD}: host 240.0.0.1 is a private address"),
        ("https://100.64.0.1/x", f"{FIELD}: host 100.64.0.1 is not a public address"),
        ("https://localhost/x", f"{FIELD}: host localhost is a loopback name; {UNLESS}"),
        ("https://LOCALHOST./x", f"{FIELD}: host localhost is a loopback name"),
        ("https://app.localhost/x", f"{FIELD}: host app.localhost is a loopback name"),
        ("https://user:pw@example.com/x", f"{FIELD} must not contain a user name or password; use auth_config"),
        ("", f"{FIELD} is required"),
        ("not a url", f"{FIELD} must be an absolute URL with a host"),
        ("https://exa mple.com/", f"{FIELD} is not a valid URL: 'exa%20mple.com' is not a host name"),
        ("https://example.com:99999/", f"{FIELD} is not a valid URL: port 99999 is out of range"),
        ("https://[::1/", f"{FIELD} is not a valid URL"),
    ],
)
def test_refused_without_allow_private(url: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        check(url)
    assert caught.value.detail.startswith(message)


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data/",
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.170.2/v2/credentials",
        "http://100.100.100.200/latest/meta-data",
        "http://[fd00:ec2::254]/latest/meta-data",
        "http://[::ffff:169.254.169.254]/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://metadata/computeMetadata/v1/",
    ],
)
@pytest.mark.parametrize("allow_private", [False, True])
def test_metadata_addresses_are_always_refused(url: str, allow_private: bool) -> None:
    with pytest.raises(ValidationError) as caught:
        check(url, allow_private=allow_private)
    assert "cloud metadata" in caught.value.detail
    assert caught.value.detail.endswith("always refused")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "https://10.0.0.1/hook",
        "http://[::1]:9000/hook",
        "http://localhost:8000/hook",
        "http://192.168.1.10/hook",
    ],
)
def test_allow_private_allows_http_and_private_addresses(url: str) -> None:
    check(url, allow_private=True)


def test_allow_private_still_refuses_other_schemes() -> None:
    with pytest.raises(ValidationError, match="must use https"):
        check("ftp://127.0.0.1/x", allow_private=True)


@pytest.mark.parametrize(
    "url",
    ["https://example.com/x", "https://hooks.example.com/x", "https://A.B.EXAMPLE.COM./x", "https://hooks.slack.com/x"],
)
def test_allowlist_accepts_the_domain_and_its_subdomains(url: str) -> None:
    check(url, allowed_domains=("example.com", ".Slack.com"))


@pytest.mark.parametrize(
    "url", ["https://evilexample.com/x", "https://example.com.evil.net/x", "https://com/x", "https://93.184.216.34/x"]
)
def test_allowlist_refuses_everything_else(url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        check(url, allowed_domains=("example.com",))
    assert caught.value.detail.endswith("is not in EXTERNAL_AGENT_ALLOWED_WEBHOOK_DOMAINS")


def test_allowlist_applies_with_allow_private_too() -> None:
    check("http://127.0.0.1:8000/x", allow_private=True, allowed_domains=("127.0.0.1",))
    with pytest.raises(ValidationError, match="not in EXTERNAL_AGENT_ALLOWED_WEBHOOK_DOMAINS"):
        check("http://127.0.0.1:8000/x", allow_private=True, allowed_domains=("example.com",))


async def test_a_name_resolving_to_loopback_is_refused() -> None:
    # "localhost" resolves from the hosts file: a real lookup that leaves no trace outside this machine.
    with pytest.raises(ValidationError) as caught:
        await resolve_public_addresses("localhost", 443, field=FIELD)
    assert caught.value.detail.startswith(f"{FIELD}: host localhost resolves to ")
    assert caught.value.detail.endswith(f"which is a loopback address; {UNLESS}")


async def test_resolve_and_check_refuses_localhost() -> None:
    with pytest.raises(ValidationError, match="loopback"):
        await resolve_and_check("https://localhost/hook", allow_private=False, allowed_domains=(), field=FIELD)


async def test_resolve_and_check_skips_dns_for_literal_public_addresses() -> None:
    await resolve_and_check("https://93.184.216.34/hook", allow_private=False, allowed_domains=(), field=FIELD)


async def test_resolve_and_check_with_allow_private_accepts_localhost() -> None:
    await resolve_and_check("http://localhost:1/hook", allow_private=True, allowed_domains=(), field=FIELD)


def test_a_url_that_passed_is_refused_again_under_stricter_settings() -> None:
    # Passing URLs are remembered per URL and settings: a pass with private webhooks allowed is not a pass without.
    url = "http://127.0.0.1:8000/remembered"
    for _ in range(2):
        check(url, allow_private=True)
        with pytest.raises(ValidationError, match=f"{FIELD} must use https"):
            check(url)


def test_a_refusal_is_worked_out_each_time_with_the_field_it_names() -> None:
    url = "https://10.0.0.1/x"
    for field in ("platform_config.url", "auth_config.credentials.token_url", "platform_config.url"):
        with pytest.raises(ValidationError) as caught:
            check_webhook_url(url, allow_private=False, allowed_domains=(), field=field)
        assert caught.value.detail == f"{field}: host 10.0.0.1 is a private address; {UNLESS}"


def test_a_long_url_is_checked_as_a_short_one_is() -> None:
    path = "/x" * 2000
    check("https://93.184.216.34" + path)
    with pytest.raises(ValidationError, match="loopback address"):
        check("https://127.0.0.1" + path)
