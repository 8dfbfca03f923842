"""How a command reaches the gateway: in-process or over HTTP, as which caller, and how a refusal is reported.

A gateway command runs in one of two modes:
- in-process, against the configured database (DATABASE_URL, ...), as the caller whose key `--api-key` or
  KAIZEN_API_KEY gives; or, for an operator with database access and no key, with `--org ORG`, as an admin of
  that organisation (recorded as actor "cli-operator"); `--org` wins over a key;
- against a running gateway with `--url` (or KAIZEN_URL) and the key, over HTTP (channels/remote_client.py).
Either way a refusal is a `GatewayError` with REST's status code and error body, printed as one line (or, with
`--json`, as that body) and mapped to an exit code here. Operator commands (keys, rotate-key, retention) run the
gateway's administration operations on the database directly (`run_with_engine`).

Heavy packages are imported inside the functions, so `--help` never loads them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from external_agents.channels.cli.output import (
    EXIT_CONFIG,
    EXIT_DENIED,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    emit_json,
    errors,
    fail,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from external_agents.app_state import AppState
    from external_agents.channels.remote_client import GatewayError, RemoteGateway
    from external_agents.gateway.operations import LocalGateway
    from external_agents.settings import Settings
    from external_agents.stores.api_keys import Caller

    # The same methods and arguments; the results are REST's JSON, except `invoke` (see `invoke_answer`).
    Gateway = LocalGateway | RemoteGateway

T = TypeVar("T")


def settings_or_exit(*, embedded_key: bool = False) -> Settings:
    from external_agents.settings import SettingsError, load_settings

    try:
        return load_settings(embedded_key=embedded_key)
    except SettingsError as exc:
        for line in str(exc).splitlines():
            errors.print(line, highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_CONFIG) from None


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def unavailable_reason(exc: BaseException) -> str | None:
    """One line naming the service that is not available, when `exc` (or what it was raised from) says one is:
    the database unreachable or not migrated, or Redis unreachable. None for any other fault."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from external_agents.stores.database import DATABASE_NOT_MIGRATED, causes, database_fault

    chain = list(causes(exc))
    # The innermost type says what happened (ConnectionRefusedError, a DNS failure, ...); its text may name hosts
    # and users, so only the type is shown.
    root = type(chain[-1]).__name__
    if any(isinstance(cause, RedisConnectionError | RedisTimeoutError) for cause in chain):
        return f"Redis cannot be reached ({root}): is REDIS_URL right and Redis running?"
    detail = database_fault(exc)
    if detail == DATABASE_NOT_MIGRATED:
        return "the database is not migrated: run `external-agents migrate` first"
    if detail is not None:
        return f"the database cannot be reached ({root}): is DATABASE_URL right and the database running?"
    return None


def run_with_engine(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run an operator's work on the configured database; a refusal exits 2 (bad input) or 1, with one line."""
    from external_agents.errors import ExternalAgentsError, ValidationError
    from external_agents.stores.database import create_engine

    async def with_engine() -> T:
        engine = create_engine(settings)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    try:
        return run(with_engine())
    except ValidationError as exc:
        fail(exc.detail, EXIT_CONFIG)
    except ExternalAgentsError as exc:
        fail(exc.detail, EXIT_UNAVAILABLE if exc.status_code == 503 else EXIT_FAILED)


@dataclass(frozen=True)
class Target:
    """Where a gateway command runs: `url` (remote) or in-process; as `api_key`'s caller, or as `org`'s admin."""

    url: str | None
    api_key: str | None
    org: str | None


def target(*, url: str | None, api_key: str | None, org: str | None) -> Target:
    if url:
        if org:
            fail("--org works in-process only; with --url give --api-key (or KAIZEN_API_KEY)", EXIT_CONFIG)
        if not api_key:
            fail("--url needs --api-key (or KAIZEN_API_KEY)", EXIT_CONFIG)
        return Target(url=url.rstrip("/"), api_key=api_key, org=None)
    if org is not None:
        if not org.strip():
            fail("--org must not be empty", EXIT_CONFIG)
        return Target(url=None, api_key=None, org=org)
    if not api_key:
        fail("give --api-key (or set KAIZEN_API_KEY), or --org ORG to act as an organisation's admin", EXIT_CONFIG)
    return Target(url=None, api_key=api_key, org=None)


def exit_code_for(error: GatewayError) -> int:
    status = error.status_code
    if status in (402, 429) or (status == 403 and "policy_id" in error.body):
        return EXIT_DENIED
    if status == 404:
        return EXIT_NOT_FOUND
    if status in (400, 401, 413):
        return EXIT_CONFIG
    # A --url gateway that does not answer has always exited 1: the command failed, no service said it was down.
    if status == 503 and error.body.get("error_code") != "UNREACHABLE":
        return EXIT_UNAVAILABLE
    return EXIT_FAILED


def describe(error: GatewayError) -> str:
    """The refusal in one line: REST's detail, then what to do about it."""
    body = error.body
    extras = []
    if body.get("policy_id"):
        extras.append(f"policy {body['policy_id']}")
    if body.get("retry_after_seconds") is not None:
        extras.append(f"retry after {body['retry_after_seconds']} s")
    if body.get("budget_limit") is not None:
        extras.append(f"${body['budget_remaining']} of ${body['budget_limit']} left")
    if body.get("invocation_id"):
        extras.append(f"invocation {body['invocation_id']}")
    detail = error.detail or f"HTTP {error.status_code}"
    return f"{detail} ({'; '.join(extras)})" if extras else detail


async def local_caller(state: AppState, where: Target) -> Caller:
    from external_agents.channels.remote_client import GatewayError
    from external_agents.gateway.operations import operator_caller
    from external_agents.stores.api_keys import authenticate

    if where.org:
        return operator_caller(where.org)
    assert where.api_key is not None
    try:
        caller = await authenticate(state.engine, where.api_key)
    except Exception as exc:
        detail = f"cannot check the API key against the database ({type(exc).__name__}): is it reachable and migrated?"
        raise GatewayError(503, {"status_code": 503, "detail": detail}) from None
    if caller is None:
        raise GatewayError(
            401, {"status_code": 401, "detail": "Invalid or revoked API key", "error_code": "UNAUTHORIZED"}
        )
    return caller


async def _call(where: Target, settings: Settings | None, operation: Callable[[Gateway], Awaitable[T]]) -> T:
    if where.url:
        import httpx

        from external_agents.channels.remote_client import RemoteGateway

        # Deliveries may take the platform's timeout times the retries: no read timeout of our own.
        timeout = httpx.Timeout(10.0, read=None)
        headers = {"Authorization": f"Bearer {where.api_key}"}
        async with httpx.AsyncClient(base_url=where.url, headers=headers, timeout=timeout) as client:
            return await operation(RemoteGateway(client))
    import logging

    from external_agents.app_state import build_state
    from external_agents.channels.error_responses import error_body_of
    from external_agents.channels.remote_client import GatewayError
    from external_agents.errors import ExternalAgentsError
    from external_agents.gateway.operations import LocalGateway
    from external_agents.nexus_app import configure_logging

    assert settings is not None
    # Refusals are reported in one line by `call`; the engine's own warning and error lines would repeat them.
    configure_logging(logging.ERROR)
    state = build_state(settings)
    try:
        gateway = LocalGateway(state, await local_caller(state, where))
        try:
            return await operation(gateway)
        except ExternalAgentsError as exc:
            # The body REST would answer with, so both modes print the same refusal.
            raise GatewayError(exc.status_code, error_body_of(exc, request_id=gateway.request_id)) from None
    finally:
        await state.aclose()


def call(where: Target, operation: Callable[[Gateway], Awaitable[T]], *, as_json: bool) -> T:
    """Run one gateway operation where `where` says; a refusal exits with its code and one line."""
    from external_agents.channels.remote_client import GatewayError

    # Credentials are decrypted in-process on invocation: read the development key file as `serve` does.
    settings = None if where.url else settings_or_exit(embedded_key=True)
    try:
        return run(_call(where, settings, operation))
    except GatewayError as exc:
        if as_json:
            emit_json(exc.body)
        fail(describe(exc), exit_code_for(exc))
    except Exception as exc:
        reason = unavailable_reason(exc)
        if reason is not None:
            fail(reason, EXIT_UNAVAILABLE)
        # Its text may carry a driver's message with user data: the type says enough to start looking.
        fail(f"the operation failed unexpectedly ({type(exc).__name__})")


async def invoke_answer(gateway: Gateway, agent_id: str, *, identity: dict[str, Any], body: Any) -> dict[str, Any]:
    """REST's 200 answer to an invocation in either mode; a denial or a failed delivery raises GatewayError with
    REST's status and body (in-process, the gateway returns the outcome and REST's own mapping translates it)."""
    from external_agents.channels.remote_client import GatewayError, RemoteGateway

    if isinstance(gateway, RemoteGateway):
        return await gateway.invoke(agent_id, identity=identity, body=body)
    from external_agents.channels.invocation_responses import invocation_answer

    outcome = await gateway.invoke(agent_id, identity=identity, body=body)
    status_code, answer = invocation_answer(outcome, request_id=gateway.request_id)
    if status_code != 200:
        raise GatewayError(status_code, answer)
    return answer
