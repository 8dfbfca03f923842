"""Delivering one invocation to its platform: URL policy, auth, timeout, retries, and errors without secrets.

Everything here is shared by all platforms so that an adapter only describes its payload. The retry policy
follows SPEC §6: up to 1 + retry_attempts attempts with exponential backoff, retrying network errors,
timeouts, 429 and 5xx, honouring Retry-After, and never retrying other 4xx (the same request would fail the
same way). A Retry-After longer than `max_retry_after_seconds` is not waited for: the delivery fails at once
with the platform's `retry_after`, since retrying sooner than the platform asked would only be refused again.

A failure raises PlatformError (PlatformTimeoutError for timeouts) whose `reached_platform` is False only when
no attempt got as far as the platform (refused URL, DNS failure, refused connection, token endpoint down), so
the caller can release a budget reservation for work that certainly did not happen.

Error texts and log lines never carry a credential: every error text goes through `redact` (and the known
secret values of the agent are replaced too, in every form a platform may echo them: raw, JSON-escaped,
whitespace-collapsed as the error snippet is, percent-encoded and base64, basic auth's `user:pass` included),
and logs name the host, never the URL, because webhook URLs and Telegram's bot URLs are secrets themselves.

A request the HTTP client refused to send (an illegal header value from a credential stored before such
values were refused, a body it cannot encode) never left: it is not retried, and `reached_platform` is False
so nothing is billed.

The common case is cheap: an attempt that succeeds first time runs outside the retry machinery (tenacity is
entered only when a first attempt failed and may be retried), the URL policy remembers the URLs it passed
(webhook_url), and the forms of a secret are worked out once per secret (`secret_variants`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import re
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import httpx
import yarl
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from external_agents.errors import PlatformError, PlatformTimeoutError, ValidationError
from external_agents.nodes.platforms.auth import OAuth2TokenCache, auth_headers, client_credentials_grant
from external_agents.nodes.platforms.base import (
    DeliveryOptions,
    DeliveryRequest,
    DeliveryResult,
    OutgoingRequest,
    PlatformAdapter,
    is_sendable_header_value,
)
from external_agents.nodes.platforms.http_client import (
    PlatformClient,
    buffered_response,
    failure_name,
    failure_reason,
    request_timeout,
)
from external_agents.nodes.platforms.webhook_url import parse_url, resolve_and_check

logger = logging.getLogger(__name__)

REDACTED = "***"
# Secrets shorter than this are not replaced verbatim: replacing "ab" everywhere would garble the text.
MIN_SECRET_LENGTH = 4
MAX_ERROR_BODY = 200
# Only this much of an error response is read: enough for the platform's message.
ERROR_BODY_BYTES = 4096

_REDACTIONS = (
    # Telegram bot token in a Bot API URL path, then on its own.
    (re.compile(r"bot\d+:[A-Za-z0-9_-]+"), f"bot{REDACTED}"),
    (re.compile(r"\b\d{5,}:[A-Za-z0-9_-]{20,}"), REDACTED),
    (re.compile(r"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {REDACTED}"),
    # key=value, key: value and "key": "value" for the usual secret names.
    (
        re.compile(
            r"""(?ix)
            (\b(?:api[_-]?key|apikey|access[_-]?token|refresh[_-]?token|id[_-]?token|token|
                client[_-]?secret|secret|password|passwd|signature|sig)
            ["']?\s*[:=]\s*["']?)
            [^\s"'&,;}]+
            """
        ),
        rf"\1{REDACTED}",
    ),
    # user:password@ in a URL.
    (re.compile(r"://[^/\s:@]+:[^/\s@]+@"), f"://{REDACTED}@"),
)


def redact(text: str) -> str:
    """`text` with anything shaped like a credential replaced by ***."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delay-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


async def deliver(
    request: DeliveryRequest,
    *,
    adapter: PlatformAdapter,
    client: PlatformClient,
    options: DeliveryOptions,
    token_cache: OAuth2TokenCache,
) -> DeliveryResult:
    """Send `request` to its platform, retrying as SPEC §6 says; raise PlatformError when it cannot be done."""
    delivery = _Delivery(request=request, adapter=adapter, client=client, options=options, token_cache=token_cache)
    return await delivery.run()


class _Delivery:
    """The state of one delivery across its attempts."""

    def __init__(
        self,
        *,
        request: DeliveryRequest,
        adapter: PlatformAdapter,
        client: PlatformClient,
        options: DeliveryOptions,
        token_cache: OAuth2TokenCache,
    ) -> None:
        self.request = request
        self.adapter = adapter
        self.client = client
        self.options = options
        self.token_cache = token_cache
        self.grant = client_credentials_grant(request.auth_type, request.auth_config, request.credentials)
        self.secrets = _secret_values(request, adapter)
        # The secrets longest first (a secret inside a longer one is replaced after it), kept until one is added.
        self._ordered: list[str] | None = None
        self.attempts = 0
        self.elapsed_ms = 0.0
        # True once any attempt may have been processed by the platform; a later refused connection does not
        # undo an earlier 500 that the platform may have acted on.
        self.reached = False
        self.refreshed = False
        self.host = ""
        self.timeout = options.timeout_seconds
        # Jitter so that invocations failing together do not retry together.
        self._backoff = wait_exponential(
            multiplier=options.backoff_base_seconds, max=options.max_retry_after_seconds
        ) + wait_random(0, options.backoff_base_seconds)

    async def run(self) -> DeliveryResult:
        try:
            outgoing = self.adapter.build_request(self.request)
        except ValidationError as exc:
            raise PlatformError(self.scrub(exc.detail), reached_platform=False) from exc
        self.host = parse_url(outgoing.url).host
        if outgoing.timeout_seconds is not None:
            self.timeout = min(self.timeout, outgoing.timeout_seconds)
        try:
            try:
                result = await self._attempt(outgoing)
            except PlatformError as exc:
                if not self._should_retry(exc) or self.options.retry_attempts == 0:
                    raise
                result = await self._retry(outgoing, exc)
        except PlatformError as exc:
            raise self._final(exc) from exc
        logger.info(
            "platform_delivery.delivered platform=%s host=%s status=%s attempts=%d elapsed_ms=%d",
            self.adapter.platform,
            self.host,
            result.status_code,
            result.attempts,
            self.elapsed_ms,
        )
        return result

    async def _retry(self, outgoing: OutgoingRequest, failure: PlatformError) -> DeliveryResult:
        """The attempts after a first one that failed and may be retried.

        Tenacity is handed that failure as its own first attempt, so the attempt numbers, the backoff, the
        Retry-After waits and the stop are those of a retry loop that ran from the start.
        """
        first = [failure]

        async def attempt() -> DeliveryResult:
            if first:
                raise first.pop()
            return await self._attempt(outgoing)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(1 + self.options.retry_attempts),
            wait=self._wait,
            retry=retry_if_exception(self._should_retry),
            reraise=True,
        )
        result: DeliveryResult = await retrying(attempt)
        return result

    def scrub(self, text: str) -> str:
        return redact(self._without_secrets(text))

    def _without_secrets(self, text: str) -> str:
        if self._ordered is None:
            self._ordered = sorted(self.secrets, key=len, reverse=True)
        for secret in self._ordered:
            text = text.replace(secret, REDACTED)
        return text

    def scrub_output(self, value: Any) -> Any:
        """The platform's answer without the secrets sent to it: a platform may echo its request, credentials
        included, and the answer becomes the caller's output and a lineage row. Only the exact secret values are
        replaced (not redact()'s patterns), so the rest of the answer reads as the platform wrote it."""
        if isinstance(value, str):
            return self._without_secrets(value)
        if isinstance(value, dict):
            return {self._without_secrets(k): self.scrub_output(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub_output(item) for item in value]
        return value

    def _should_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, PlatformError) or not exc.retryable:
            return False
        return exc.retry_after is None or exc.retry_after <= self.options.max_retry_after_seconds

    def _wait(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, PlatformError) and exc.retry_after is not None:
            return exc.retry_after
        return self._backoff(retry_state)

    def _final(self, exc: PlatformError) -> PlatformError:
        plural = "" if self.attempts == 1 else "s"
        error = type(exc)(
            self.scrub(f"{exc.detail} (after {self.attempts} attempt{plural})"),
            retryable=exc.retryable,
            retry_after=exc.retry_after,
            reached_platform=exc.reached_platform or self.reached,
            platform_status=exc.platform_status,
            attempts=self.attempts,
        )
        logger.warning(
            "platform_delivery.failed platform=%s host=%s attempts=%d status=%s retryable=%s reached_platform=%s",
            self.adapter.platform,
            self.host,
            self.attempts,
            exc.platform_status,
            error.retryable,
            error.reached_platform,
        )
        return error

    async def _attempt(self, outgoing: OutgoingRequest) -> DeliveryResult:
        self.attempts += 1
        await self._check_urls(outgoing)
        headers, response = await self._send_authenticated(outgoing)
        if response.status_code == 401 and self.grant is not None and not self.refreshed:
            # The token may have been revoked before it expired: fetch a new one, once per delivery.
            self.refreshed = True
            rejected = headers.get("Authorization", "").removeprefix("Bearer ")
            self.token_cache.invalidate(self.grant, rejected_token=rejected)
            _, response = await self._send_authenticated(outgoing)
        return self._result(response)

    async def _check_urls(self, outgoing: OutgoingRequest) -> None:
        # Every attempt: the name may resolve elsewhere by now.
        checks = [(outgoing.url, f"platform_config.{self.adapter.url_field}")]
        if self.grant is not None:
            checks.append((self.grant.token_url, "auth_config.credentials.token_url"))
        for url, field in checks:
            try:
                await resolve_and_check(
                    url,
                    allow_private=self.options.allow_private_webhooks,
                    allowed_domains=self.options.allowed_webhook_domains,
                    field=field,
                )
            except ValidationError as exc:
                raise PlatformError(self.scrub(exc.detail), reached_platform=False) from exc

    async def _send_authenticated(self, outgoing: OutgoingRequest) -> tuple[dict[str, str], httpx.Response]:
        try:
            auth = await auth_headers(
                auth_type=self.request.auth_type,
                auth_config=self.request.auth_config,
                credentials=self.request.credentials,
                body=outgoing.content,
                client=self.client,
                token_cache=self.token_cache,
                timeout_seconds=self.timeout,
            )
        except ValidationError as exc:
            raise PlatformError(self.scrub(exc.detail), reached_platform=False) from exc
        # A fetched OAuth2 token is a secret too, though it is not among the stored credentials.
        for value in auth.values():
            for sent in (value, value.removeprefix("Bearer "), value.removeprefix("Basic ")):
                self.secrets.update(secret_variants(sent))
        self._ordered = None
        headers = {**outgoing.headers, **auth}
        return headers, await self._send(outgoing, headers)

    async def _send(self, outgoing: OutgoingRequest, headers: dict[str, str]) -> httpx.Response:
        for name, value in headers.items():
            if not is_sendable_header_value(value):
                # Checked here rather than left to the HTTP client, whose refusal may quote the value (a
                # credential) in an error or a log line before this code can scrub it.
                raise PlatformError(
                    f"{self.adapter.platform} request header {name} holds a value that cannot be sent in an HTTP "
                    "header (a control character or non-ASCII); nothing was sent",
                    reached_platform=False,
                )
        session = self.client.session()
        # The URL exactly as httpx encodes it (the form the URL policy checked), sent without re-encoding.
        url = yarl.URL(str(parse_url(outgoing.url)), encoded=True)
        started = time.perf_counter()
        try:
            # The client's timeouts apply per connect and per read; this bounds a platform that trickles too.
            async with asyncio.timeout(self.timeout):
                # Never follow redirects: the target was not checked against the URL policy (see webhook_url).
                response = await session.request(
                    outgoing.method,
                    url,
                    headers=headers,
                    data=outgoing.content or None,
                    allow_redirects=False,
                    timeout=request_timeout(self.timeout),
                )
                try:
                    limit = self.options.max_response_bytes if 200 <= response.status < 300 else ERROR_BODY_BYTES
                    body, truncated = await _read_body(response, limit=limit)
                finally:
                    response.release()
        except (TimeoutError, aiohttp.ClientError) as exc:
            error = self._transport_error(exc)
            self.reached = self.reached or error.reached_platform
            self._log_attempt(type(error).__name__, started)
            raise error from exc
        except (ValueError, TypeError) as exc:
            # The client could not encode the request (a header value, the body): nothing was sent. The error
            # text is not kept: it may quote the value, which is a credential.
            raise PlatformError(
                f"{self.adapter.platform} request could not be built: {type(exc).__name__} (a header value the "
                "HTTP client cannot encode?); nothing was sent",
                reached_platform=False,
            ) from exc
        self.reached = True
        self._log_attempt(response.status, started)
        if truncated and 200 <= response.status < 300:
            raise PlatformError(
                f"{self.adapter.platform} response is larger than {self.options.max_response_bytes} bytes",
                platform_status=response.status,
            )
        return buffered_response(response, body)

    def _transport_error(self, exc: BaseException) -> PlatformError:
        platform = self.adapter.platform
        name, never_sent = failure_name(exc)
        if isinstance(exc, TimeoutError):
            # Before the connection exists nothing was sent; after it, the platform may be working on it.
            return PlatformTimeoutError(
                f"{platform} did not answer within {self.timeout:g} seconds ({self.host})",
                retryable=True,
                reached_platform=not never_sent,
            )
        if name == "UnsupportedProtocol":
            return PlatformError(f"{platform} URL is not usable: {type(exc).__name__}", reached_platform=False)
        reason = self.scrub(failure_reason(exc))[:MAX_ERROR_BODY] or type(exc).__name__
        return PlatformError(
            f"{platform} delivery to {self.host} failed: {name}: {reason}",
            retryable=True,
            reached_platform=not never_sent,
        )

    def _result(self, response: httpx.Response) -> DeliveryResult:
        status = response.status_code
        if response.is_success:
            answer = self.adapter.parse_response(response)
            return DeliveryResult(
                status_code=status,
                output=self.scrub_output(answer.output),
                reported_cost=answer.reported_cost,
                attempts=self.attempts,
                note=answer.note,
            )
        snippet = self.scrub(" ".join(response.text.split()))[:MAX_ERROR_BODY]
        detail = f"{self.adapter.platform} returned HTTP {status}" + (f": {snippet}" if snippet else "")
        if response.is_redirect or 300 <= status < 400:
            raise PlatformError(f"{detail}; redirects are not followed", platform_status=status)
        retryable = status == 429 or status >= 500
        retry_after = None
        if retryable:
            retry_after = self.adapter.retry_after(response)
            if retry_after is None:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise PlatformError(detail, retryable=retryable, retry_after=retry_after, platform_status=status)

    def _log_attempt(self, status: object, started: float) -> None:
        self.elapsed_ms = (time.perf_counter() - started) * 1000
        # A 2xx attempt is told at INFO by the `delivered` line that follows it (or the `failed` line, for an
        # answer too large): one line per delivery on the hot path, a line per attempt when attempts fail.
        level = logging.DEBUG if isinstance(status, int) and 200 <= status < 300 else logging.INFO
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "platform_delivery.attempt platform=%s host=%s attempt=%d status=%s elapsed_ms=%d",
                self.adapter.platform,
                self.host,
                self.attempts,
                status,
                self.elapsed_ms,
            )


async def _read_body(response: aiohttp.ClientResponse, *, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the (decoded) body, and whether there was more."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await response.content.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False


@lru_cache(maxsize=1024)
def secret_variants(secret: str) -> frozenset[str]:
    """Every form in which a platform may echo `secret` back: as sent, JSON-escaped (a secret holding `"` or `\\`
    in a JSON error body), with its whitespace runs collapsed (as the error snippet is), percent-encoded and
    base64-encoded (standard and URL-safe, padded or not). Forms shorter than MIN_SECRET_LENGTH are left out.

    Remembered for the most recent secrets, in this process's memory only (where the decrypted credentials of
    a delivery are anyway): every delivery of an agent needs the same forms of the same secrets."""
    if len(secret) < MIN_SECRET_LENGTH:
        return frozenset()
    escaped = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    forms = escaped | {" ".join(form.split()) for form in escaped}
    forms |= {quote(secret, safe=""), quote(secret), quote_plus(secret)}
    raw = secret.encode("utf-8", "surrogatepass")
    for encoded in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        forms |= {encoded, encoded.rstrip("=")}
    return frozenset(form for form in forms if len(form) >= MIN_SECRET_LENGTH)


def _secret_values(request: DeliveryRequest, adapter: PlatformAdapter) -> set[str]:
    """The agent's secrets in every form they may come back in; built once per delivery."""
    values: set[str] = set()

    def collect(value: Any) -> None:
        if isinstance(value, str):
            values.update(secret_variants(value))
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, list | tuple):
            for item in value:
                collect(item)

    credentials = request.credentials
    collect(credentials)
    # Pairs that are sent joined, so that their base64 (a Basic header echoed without its scheme) is known too:
    # basic auth's user:pass, and an OAuth2 client's id:secret as RFC 6749 §2.3.1 form-encodes it.
    if isinstance(credentials.get("username"), str) and isinstance(credentials.get("password"), str):
        collect(f"{credentials['username']}:{credentials['password']}")
    if isinstance(credentials.get("client_id"), str) and isinstance(credentials.get("client_secret"), str):
        collect(f"{credentials['client_id']}:{credentials['client_secret']}")
        collect(f"{quote(credentials['client_id'], safe='')}:{quote(credentials['client_secret'], safe='')}")
    for name in adapter.secret_fields:
        collect(request.platform_config.get(name))
    return values
