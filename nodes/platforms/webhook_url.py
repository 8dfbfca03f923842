"""The address policy for every URL the gateway sends to, so an agent cannot be pointed at internal services.

A registered webhook URL is a server-side request on the user's behalf (SSRF): without this check an agent
could reach a database admin page on the private network or the cloud metadata service that hands out
instance credentials. Two stages, because registration must stay fast and must not depend on DNS:

- `check_webhook_url` (create/update time, and again before each delivery): scheme, literal IP addresses,
  names that are always local (localhost, the metadata host names) and the domain allowlist.
- `resolve_and_check` (delivery time): also resolves the name and refuses it when any address it resolves to
  is not public, since a public-looking name can point anywhere.

Redirects are never followed (delivery sends with follow_redirects=False): a redirect to a private address
would bypass this check, so a 3xx from a platform is a non-retryable PlatformError.

Cloud metadata addresses are refused even when private webhooks are allowed: no development setup needs
them, and allowing private webhooks on a cloud VM must not expose its credentials.

The DNS-free part is a function of the URL and the settings alone, and runs before every delivery attempt, so
a URL that passed is remembered (bounded, short URLs only: a GET's query carries the invocation's input, and
webhook URLs are secrets, kept no longer than the process keeps the agents). A refusal is never remembered:
it is worked out again each time, with its message. The resolution of names is never cached.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from functools import lru_cache

import httpx

from external_agents.errors import PlatformError, ValidationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_PRIVATE_VARIABLE = "EXTERNAL_AGENT_ALLOW_PRIVATE_WEBHOOKS"
ALLOWED_DOMAINS_VARIABLE = "EXTERNAL_AGENT_ALLOWED_WEBHOOK_DOMAINS"

METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task credentials
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
    }
)
METADATA = "a cloud metadata address"
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
LOCAL_HOSTS = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})

# NAT64 embeds an IPv4 address in the last 32 bits; the embedded address is what gets reached.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
# inet_aton accepts the legacy forms ("127.1", "0x7f000001", "2130706433") that resolvers treat as IPs.
_LEGACY_IPV4 = re.compile(r"^[0-9a-fA-Fx.]+$")
# LDH labels (underscores too: some internal names use them), after IDNA encoding.
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)


# Longer URLs are checked every time rather than remembered.
CACHED_URL_LENGTH = 2048
CACHED_URLS = 1024


def check_webhook_url(url: str, *, allow_private: bool, allowed_domains: tuple[str, ...], field: str) -> None:
    """Refuse a URL the gateway must not send to, without DNS. Raises ValidationError naming `field`."""
    _checked(url, allow_private, allowed_domains, field)


def parse_url(url: str) -> httpx.URL:
    """`httpx.URL(url)`, remembered for short URLs; raises httpx.InvalidURL as it does."""
    if isinstance(url, str) and len(url) <= CACHED_URL_LENGTH:
        return _cached_parse(url)
    return httpx.URL(url)


_cached_parse = lru_cache(maxsize=CACHED_URLS)(httpx.URL)


def _checked(url: str, allow_private: bool, allowed_domains: tuple[str, ...], field: str) -> httpx.URL:
    if isinstance(url, str) and len(url) <= CACHED_URL_LENGTH and isinstance(allowed_domains, tuple):
        return _cached_check(url, allow_private, allowed_domains, field)
    return _check(url, allow_private, allowed_domains, field)


def _check(url: str, allow_private: bool, allowed_domains: tuple[str, ...], field: str) -> httpx.URL:
    parsed = _parse(url, field=field)
    host = _host(parsed)
    address = _literal_address(host)
    if host in METADATA_HOSTS or (address is not None and address_problem(address) == METADATA):
        raise ValidationError(f"{field}: host {host} is {METADATA} and is always refused")
    if parsed.scheme != "https" and not (allow_private and parsed.scheme == "http"):
        hint = "" if allow_private else f" (http is allowed only when {ALLOW_PRIVATE_VARIABLE}=true)"
        raise ValidationError(f"{field} must use https{hint}")
    if parsed.userinfo:
        raise ValidationError(f"{field} must not contain a user name or password; use auth_config")
    if allowed_domains and not _allowed(host, allowed_domains):
        raise ValidationError(f"{field}: host {host} is not in {ALLOWED_DOMAINS_VARIABLE}")
    if address is not None:
        problem = address_problem(address)
        if problem is not None and not allow_private:
            shown = host if host == str(address) else f"{host} ({address})"
            raise ValidationError(f"{field}: host {shown} is {problem}; {_refused_unless()}")
    elif not allow_private and (host in LOCAL_HOSTS or host.endswith(".localhost")):
        raise ValidationError(f"{field}: host {host} is a loopback name; {_refused_unless()}")
    return parsed


# lru_cache keeps results only: a URL that raised is checked again next time.
_cached_check = lru_cache(maxsize=CACHED_URLS)(_check)


async def resolve_and_check(url: str, *, allow_private: bool, allowed_domains: tuple[str, ...], field: str) -> None:
    """`check_webhook_url`, then refuse a name that resolves to any address that is not public.

    Raises ValidationError for a refused URL and PlatformError (retryable, never reached) when the name does
    not resolve.
    """
    parsed = _checked(url, allow_private, allowed_domains, field)
    if allow_private:
        return
    host = _host(parsed)
    if _literal_address(host) is None:
        await resolve_public_addresses(host, parsed.port or 443, field=field)


async def resolve_public_addresses(host: str, port: int, *, field: str) -> tuple[str, ...]:
    """Every address `host` resolves to, refusing the lot when any of them is not public.

    All of them, not just the first: the HTTP client may connect to any, and a name with one public and one
    private address is exactly what an attacker would register.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise PlatformError(
            f"{field}: host {host} does not resolve ({exc.strerror})", retryable=True, reached_platform=False
        ) from exc
    addresses = tuple(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
    for text in addresses:
        problem = address_problem(ipaddress.ip_address(text))
        if problem == METADATA:
            raise ValidationError(f"{field}: host {host} resolves to {text}, {problem}, which is always refused")
        if problem is not None:
            raise ValidationError(f"{field}: host {host} resolves to {text}, which is {problem}; {_refused_unless()}")
    return addresses


def address_problem(address: IPAddress) -> str | None:
    """Why `address` is not a public unicast address, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or (
            ipaddress.IPv4Address(int(address) & 0xFFFFFFFF) if address in _NAT64 else None
        )
        if embedded is not None:
            return address_problem(embedded)
    checks = (
        (address in METADATA_ADDRESSES, METADATA),
        (address.is_unspecified, "an unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (isinstance(address, ipaddress.IPv6Address) and address in _UNIQUE_LOCAL, "a unique-local address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "not a public address"),
    )
    return next((reason for failed, reason in checks if failed), None)


def _refused_unless() -> str:
    return f"refused unless {ALLOW_PRIVATE_VARIABLE}=true"


def _parse(url: str, *, field: str) -> httpx.URL:
    if not isinstance(url, str) or not url:
        raise ValidationError(f"{field} is required")
    try:
        parsed = parse_url(url)
    except httpx.InvalidURL as exc:
        raise ValidationError(f"{field} is not a valid URL: {exc}") from exc
    if not parsed.host:
        raise ValidationError(f"{field} must be an absolute URL with a host")
    host = _host(parsed)
    if _literal_address(host) is None and not _HOSTNAME.fullmatch(host):
        raise ValidationError(f"{field} is not a valid URL: {host!r} is not a host name")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ValidationError(f"{field} is not a valid URL: port {parsed.port} is out of range")
    return parsed


def _host(parsed: httpx.URL) -> str:
    # raw_host is the IDNA (punycode) form without IPv6 brackets: what DNS and the allowlist compare.
    return parsed.raw_host.decode("ascii").lower().rstrip(".")


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _allowed(host: str, allowed_domains: tuple[str, ...]) -> bool:
    for domain in allowed_domains:
        domain = domain.strip().lower().strip(".")
        if domain and (host == domain or host.endswith("." + domain)):
            return True
    return False
