"""The command line's way to a running gateway (`--url`): the REST API over httpx, with the bearer API key.

`RemoteGateway` has the methods of `gateway.operations.LocalGateway`, with the same arguments, and returns
REST's JSON (for `invoke`, REST's answer rather than the outcome: see `channels.cli.calls.invoke_answer`), so
each command is written once and runs in-process or against a server. A non-2xx answer raises `GatewayError`,
carrying the server's status code and JSON error body; in-process, the command line raises it too, with the
body REST would send, so a command handles one kind of refusal. Both live here because this module stays light
(httpx only): a `--url` command never imports the workflow engine.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from external_agents.identity import CONTEXT_HEADER, IDENTITY_HEADERS, encode_header_value


class GatewayError(Exception):
    """An operation refused or failed, as the REST API answers it: its status code and JSON error body."""

    def __init__(self, status_code: int, body: dict[str, Any]) -> None:
        super().__init__(str(body.get("detail", "")))
        self.status_code = status_code
        self.body = body

    @property
    def detail(self) -> str:
        return str(self.body.get("detail", ""))


def _segment(value: str) -> str:
    """An id as one path segment: a '/' or '?' in it must not change the route."""
    return quote(value, safe="")


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class RemoteGateway:
    """Every REST operation, as an HTTP call to `client`'s base URL (see the module docstring)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        headers: dict[str, str | bytes] | None = None,
    ) -> Any:
        try:
            response = await self.client.request(
                method, path, params=_without_none(params or {}), json=json, headers=headers
            )
        except httpx.TransportError as exc:
            detail = f"Cannot reach the gateway at {self.client.base_url} ({type(exc).__name__})"
            raise GatewayError(503, {"status_code": 503, "detail": detail, "error_code": "UNREACHABLE"}) from None
        if response.status_code == 204:
            return None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            if not isinstance(body, dict):
                body = {"status_code": response.status_code, "detail": response.text[:200] or response.reason_phrase}
            raise GatewayError(response.status_code, body)
        return body

    async def list_agents(
        self, *, page: int = 1, limit: int = 20, platform: str | None = None, search: str | None = None
    ) -> dict[str, Any]:
        params = {"page": page, "limit": limit, "platform": platform, "search": search}
        return await self._send("GET", "/api/external-agents", params=params)

    async def get_agent(self, agent_id: str) -> dict[str, Any]:
        return await self._send("GET", f"/api/external-agents/{_segment(agent_id)}")

    async def create_agent(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._send("POST", "/api/external-agents", json=body)

    async def update_agent(self, agent_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._send("PATCH", f"/api/external-agents/{_segment(agent_id)}", json=body)

    async def delete_agent(self, agent_id: str) -> None:
        await self._send("DELETE", f"/api/external-agents/{_segment(agent_id)}")

    async def governance_status(self, agent_id: str) -> dict[str, Any]:
        return await self._send("GET", f"/api/external-agents/{_segment(agent_id)}/governance-status")

    async def list_invocations(
        self,
        agent_id: str,
        *,
        page: int = 1,
        limit: int = 20,
        status: str | None = None,
        start_date: str | None = None,
        end_date: str | None = None,
    ) -> dict[str, Any]:
        params = {"page": page, "limit": limit, "status": status, "start_date": start_date, "end_date": end_date}
        return await self._send("GET", f"/api/external-agents/{_segment(agent_id)}/invocations", params=params)

    async def invoke(self, agent_id: str, *, identity: dict[str, Any], body: Any) -> dict[str, Any]:
        names = {h.field: h.header for h in IDENTITY_HEADERS} | {"external_context": CONTEXT_HEADER}
        # As UTF-8 bytes: httpx would encode text as ASCII and refuse `zoë@exämple.com`.
        headers = {
            header: encode_header_value(identity[field])
            for field, header in names.items()
            if isinstance(identity.get(field), str)
        }
        return await self._send(
            "POST", f"/api/external-agents/{_segment(agent_id)}/invoke", json=body, headers=_without_none(headers)
        )

    async def create_policy(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._send("POST", "/api/policies", json=body)

    async def list_policies(self, *, external_agent_id: str | None = None) -> Any:
        return await self._send("GET", "/api/policies", params={"external_agent_id": external_agent_id})

    async def get_policy(self, policy_id: str) -> dict[str, Any]:
        return await self._send("GET", f"/api/policies/{_segment(policy_id)}")

    async def update_policy(self, policy_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._send("PATCH", f"/api/policies/{_segment(policy_id)}", json=body)

    async def delete_policy(self, policy_id: str) -> None:
        await self._send("DELETE", f"/api/policies/{_segment(policy_id)}")

    async def list_lineage(self, *, filters: dict[str, str | None], page: int = 1, limit: int = 20) -> dict[str, Any]:
        return await self._send("GET", "/api/lineage", params={**filters, "page": page, "limit": limit})

    async def get_invocation(self, invocation_id: str) -> dict[str, Any]:
        return await self._send("GET", f"/api/lineage/{_segment(invocation_id)}")

    async def lineage_graph(self, *, selectors: dict[str, str | None], depth: int) -> dict[str, Any]:
        return await self._send("GET", "/api/lineage/graph", params={**selectors, "depth": depth})

    async def user_lineage(self, email: str, *, page: int = 1, limit: int = 100) -> dict[str, Any]:
        return await self._send("GET", f"/api/lineage/user/{_segment(email)}", params={"page": page, "limit": limit})

    async def erase_user_lineage(self, email: str) -> dict[str, Any]:
        return await self._send("DELETE", f"/api/lineage/user/{_segment(email)}")

    async def list_workflows(self) -> dict[str, Any]:
        return await self._send("GET", "/api/workflows")

    async def execute_workflow(self, workflow_id: str, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self._send(
            "POST", f"/api/workflows/{_segment(workflow_id)}/execute", json={"inputs": inputs or {}}
        )
