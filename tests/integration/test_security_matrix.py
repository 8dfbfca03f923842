"""The security matrix: every route the app serves and every MCP tool, against every kind of caller.

Routes are enumerated from the running app (ours, Nexus's own, /metrics, /mcp, the /ws socket), not listed by
hand: a route nobody classified fails the test. For each route:

- no key, a malformed Authorization header, and a revoked key -> 401 (a WebSocket handshake is refused too);
- another organisation's admin key -> 404 for a route naming one of our resources, and no body anywhere
  carries any of our data (ids, names, emails, session ids, inputs); what it asks to change stays unchanged;
- a key of our organisation holding every permission except the one a route needs -> 403, nothing changed;
- our admin key (the operator organisation's key for /metrics, which spans organisations) -> served: the
  control that makes the refusals above mean something.

The same for each MCP tool (a refusal is a tool error carrying REST's status code). Then: webhook URLs that
point at private, loopback, link-local or metadata addresses are refused by an app with
EXTERNAL_AGENT_ALLOW_PRIVATE_WEBHOOKS=false (literal addresses and names at registration, names that resolve
to one at delivery), metadata addresses even when private webhooks are allowed, and a platform's redirect is
never followed. Last, API keys are looked up by their SHA-256 and compared with hmac.compare_digest on
fixed-length hashes.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
import sqlalchemy as sa

from external_agents.stores.api_keys import PERMISSIONS, create_api_key, hash_key, revoke_api_key
from tests.factories import Org, app_client, make_settings, new_org, running_app
from tests.platform_server import PlatformServer, ScriptedResponse

PUBLIC = "public"
AUTHENTICATED = "authenticated"  # any valid key; the route holds no organisation's data

# Every /api route and our own /metrics, with the permission it needs. Nexus's own routes are AUTHENTICATED.
PERMISSION_OF: dict[tuple[str, str], str] = {
    ("GET", "/api/version"): PUBLIC,
    ("GET", "/api/health"): PUBLIC,
    ("POST", "/api/external-agents"): "create:external_agent",
    ("GET", "/api/external-agents"): "read:external_agent",
    ("GET", "/api/external-agents/{agent_id}"): "read:external_agent",
    ("PATCH", "/api/external-agents/{agent_id}"): "update:external_agent",
    ("DELETE", "/api/external-agents/{agent_id}"): "delete:external_agent",
    ("GET", "/api/external-agents/{agent_id}/governance-status"): "read:external_agent",
    ("POST", "/api/external-agents/{agent_id}/invoke"): "invoke:external_agent",
    ("GET", "/api/external-agents/{agent_id}/invocations"): "read:external_agent",
    ("GET", "/api/lineage"): "read:lineage",
    ("GET", "/api/lineage/graph"): "read:lineage",
    ("GET", "/api/lineage/export"): "read:lineage",
    ("GET", "/api/lineage/user/{email:path}"): "read:lineage",
    ("DELETE", "/api/lineage/user/{email:path}"): "erase:lineage",
    ("GET", "/api/lineage/{invocation_id}"): "read:lineage",
    ("POST", "/api/policies"): "manage:policy",
    ("GET", "/api/policies"): "manage:policy",
    ("GET", "/api/policies/{policy_id}"): "manage:policy",
    ("PATCH", "/api/policies/{policy_id}"): "manage:policy",
    ("DELETE", "/api/policies/{policy_id}"): "manage:policy",
    ("GET", "/api/workflows"): "read:external_agent",
    ("POST", "/api/workflows/{workflow_id}/execute"): "invoke:external_agent",
    ("GET", "/metrics"): "read:metrics",
    ("POST", "/mcp"): AUTHENTICATED,  # each tool checks its own permission, below
}
# Path parameters that name one of our organisation's resources: another organisation must get a 404.
RESOURCE_PARAMETERS = ("{agent_id}", "{invocation_id}", "{policy_id}")
MCP_PERMISSION_OF = {
    "list_agents": "read:external_agent",
    "get_agent": "read:external_agent",
    "governance_status": "read:external_agent",
    "list_invocations": "read:external_agent",
    "list_workflows": "read:external_agent",
    "register_agent": "create:external_agent",
    "invoke_agent": "invoke:external_agent",
    "execute_workflow": "invoke:external_agent",
    "list_lineage": "read:lineage",
    "get_invocation": "read:lineage",
    "lineage_graph": "read:lineage",
    "user_lineage": "read:lineage",
    "erase_user_lineage": "erase:lineage",
}
MCP_RESOURCE_TOOLS = ("get_agent", "governance_status", "list_invocations", "invoke_agent", "get_invocation")


def served_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every HTTP route and ("WS", path) of every WebSocket route the app serves."""
    found: set[tuple[str, str]] = set()

    def walk(routes: list[Any]) -> None:
        for route in routes:
            if hasattr(route, "effective_candidates"):  # FastAPI's included router
                for candidate in route.effective_candidates():
                    if hasattr(candidate, "effective_candidates"):
                        walk([candidate])
                    else:
                        add(candidate.original_route, candidate.path)
            elif hasattr(route, "routes") and not hasattr(route, "endpoint"):  # a Mount
                walk(route.routes)
            else:
                add(route, route.path)

    def add(route: Any, path: str) -> None:
        if type(route).__name__.endswith("WebSocketRoute"):
            found.add(("WS", path))
            return
        methods = getattr(route, "methods", None) or {"POST"}  # a bare ASGI endpoint (/mcp): JSON-RPC is POST
        found.update((method, path) for method in methods if method != "HEAD")

    walk(app.routes)
    return found


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        return f"{unquote(self.path)} {self.params} {json.dumps(self.body)}"


@dataclass
class World:
    """Organisation A's resources and keys, and organisation B's admin."""

    a: Org
    b: Org
    operator_key: str
    revoked_key: str
    lacking: dict[str, str]
    agent_id: str
    spare_agent_id: str
    policy_id: str
    spare_policy_id: str
    invocation_id: str
    email: str
    spare_email: str
    session_id: str
    markers: tuple[str, ...]


def identity(w: World) -> dict[str, str]:
    return {
        "X-External-User-ID": f"user-of-{w.a.organization_id}",
        "X-External-User-Email": w.email,
        "X-External-System": "matrix",
        "X-External-Session-ID": w.session_id,
    }


def call_for(method: str, path: str, w: World, *, spare: bool = False) -> Call:
    """A well-formed request for the route, naming A's resources (the spare ones for a destructive control)."""
    agent = w.spare_agent_id if spare else w.agent_id
    policy = w.spare_policy_id if spare else w.policy_id
    concrete = (
        path.replace("{agent_id}", agent)
        .replace("{policy_id}", policy)
        .replace("{invocation_id}", w.invocation_id)
        .replace("{email:path}", quote(w.spare_email if spare else w.email))
        .replace("{workflow_id}", "notify_agent")
    )
    for name in ("{signal_name}", "{query_name}", "{request_id}", "{resource_name}"):
        concrete = concrete.replace(name, "x")
    bodies: dict[tuple[str, str], Any] = {
        ("POST", "/api/external-agents"): {
            "name": f"created-{uuid.uuid4().hex[:8]}",
            "platform": "custom_http",
            "platform_config": {"url": "http://127.0.0.1:9/never"},
        },
        ("PATCH", "/api/external-agents/{agent_id}"): {"description": "changed by the matrix"},
        ("POST", "/api/external-agents/{agent_id}/invoke"): {"input": "matrix"},
        ("POST", "/api/policies"): {
            "name": f"p-{uuid.uuid4().hex[:8]}",
            "effect": "deny",
            "conditions": [{"type": "environment", "environments": ["never"]}],
        },
        ("PATCH", "/api/policies/{policy_id}"): {"description": "changed by the matrix"},
        ("POST", "/api/workflows/{workflow_id}/execute"): {
            "inputs": {"notify": {"agent_id": agent, "input": "matrix", "identity": lower_identity(w)}}
        },
        ("POST", "/mcp"): {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
    }
    params = {"session_id": w.session_id} if path == "/api/lineage/graph" else {}
    headers = identity(w) if path.endswith("/invoke") else {}
    if path == "/mcp":
        headers = {"Accept": "application/json, text/event-stream"}
    return Call(method, concrete, params, bodies.get((method, path)), headers)


def lower_identity(w: World) -> dict[str, str]:
    return {
        "external_user_id": f"user-of-{w.a.organization_id}",
        "external_user_email": w.email,
        "external_system": "matrix",
        "external_session_id": w.session_id,
    }


async def send(http: httpx.AsyncClient, call: Call, key: str | None, *, authorization: str | None = None):
    headers = dict(call.headers)
    if authorization is not None:
        headers["Authorization"] = authorization
    elif key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return await http.request(
        call.method, call.path, params=call.params, json=call.body if call.body is not None else None, headers=headers
    )


def leaked(w: World, call: Call, response: httpx.Response) -> list[str]:
    """A's markers found in a response to B, leaving out what B itself put in the request."""
    seen = response.text + " " + " ".join(f"{k}: {v}" for k, v in response.headers.items())
    sent = call.text()
    return [marker for marker in w.markers if marker in seen and marker not in sent]


@pytest.fixture(scope="module")
async def world(gateway, _platform_server_session: PlatformServer) -> World:
    engine = gateway.external_agents.engine
    a, b = await new_org(gateway), await new_org(gateway)
    # The operator's organisation (the bootstrap one) reads /metrics, which spans every organisation.
    operator = await new_org(gateway, ["read:metrics"], gateway.external_agents.settings.kaizen_bootstrap_org)
    _row, revoked_key = await create_api_key(engine, organization_id=a.organization_id, name="r", permissions=["admin"])
    assert await revoke_api_key(engine, key_id=_row["id"])
    lacking = {}
    for permission in PERMISSIONS:
        others = [p for p in PERMISSIONS if p not in (permission, "admin")]
        _row, lacking[permission] = await create_api_key(
            engine, organization_id=a.organization_id, name=f"without {permission}", permissions=others
        )
    transport = httpx.ASGITransport(app=gateway.fastapi_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:

        async def post(path: str, body: dict[str, Any], **headers: str) -> dict[str, Any]:
            response = await http.post(path, json=body, headers={**a.headers, **headers})
            assert response.status_code in (200, 201), response.text
            return response.json()

        unique = uuid.uuid4().hex[:10]
        agents = [
            await post(
                "/api/external-agents",
                {
                    "name": f"secret-agent-{unique}-{n}",
                    "platform": "custom_http",
                    "platform_config": {"url": _platform_server_session.url(f"/matrix-{unique}")},
                    "requests_per_minute": 1000,
                },
            )
            for n in range(2)
        ]
        policies = [
            await post(
                "/api/policies",
                {
                    "name": f"secret-policy-{unique}-{n}",
                    "effect": "deny",
                    "conditions": [{"type": "environment", "environments": [f"never-{unique}"]}],
                },
            )
            for n in range(2)
        ]
        email, session_id = f"person-{unique}@a.example", f"session-{unique}"
        invocation = await post(
            f"/api/external-agents/{agents[0]['id']}/invoke",
            {"input": f"private input {unique}"},
            **{
                "X-External-User-ID": f"user-of-{a.organization_id}",
                "X-External-User-Email": email,
                "X-External-System": "matrix",
                "X-External-Session-ID": session_id,
            },
        )
    return World(
        a=a,
        b=b,
        operator_key=operator.api_key,
        revoked_key=revoked_key,
        lacking=lacking,
        agent_id=agents[0]["id"],
        spare_agent_id=agents[1]["id"],
        policy_id=policies[0]["policy_id"],
        spare_policy_id=policies[1]["policy_id"],
        invocation_id=invocation["invocation_id"],
        email=email,
        spare_email=f"nobody-{unique}@a.example",
        session_id=session_id,
        markers=(
            a.organization_id,
            agents[0]["id"],
            agents[1]["id"],
            agents[0]["name"],
            policies[0]["policy_id"],
            policies[0]["name"],
            invocation["invocation_id"],
            invocation["trace_id"],
            email,
            session_id,
            f"private input {unique}",
        ),
    )


@pytest.fixture
async def http(gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(gateway) as client:
        yield client


def permission_of(route: tuple[str, str]) -> str:
    return PERMISSION_OF.get(route, AUTHENTICATED)


def test_every_api_route_is_classified(gateway):
    served = served_routes(gateway.fastapi_app)
    unclassified = sorted(r for r in served if r[1].startswith("/api") and r not in PERMISSION_OF)
    stale = sorted(r for r in PERMISSION_OF if r not in served)
    assert not unclassified, f"classify these routes in PERMISSION_OF: {unclassified}"
    assert not stale, f"no longer served: {stale}"
    # The walk over the app's routes finds at least everything the OpenAPI schema documents.
    documented = set(gateway.fastapi_app.openapi()["paths"])
    assert documented <= {path.replace(":path", "") for _, path in served}


async def test_without_a_valid_key_every_route_but_health_and_version_is_401(gateway, http, world):
    refused: dict[str, list[str]] = {}
    for method, path in sorted(served_routes(gateway.fastapi_app)):
        if method == "WS":
            continue
        call = call_for(method, path, world)
        credentials = {
            "no key": (None, None),
            "revoked key": (world.revoked_key, None),
            "unknown key": ("eak_" + "x" * 43, None),
            "basic auth": (None, "Basic " + "YTpi"),
            "empty bearer": (None, "Bearer "),
        }
        for label, (key, authorization) in credentials.items():
            response = await send(http, call, key, authorization=authorization)
            expected = 200 if permission_of((method, path)) == PUBLIC else 401
            if response.status_code != expected:
                refused.setdefault(f"{method} {path}", []).append(f"{label}: {response.status_code}")
            elif expected == 401:
                assert response.json()["error_code"] == "UNAUTHORIZED"
                assert response.headers["WWW-Authenticate"] == "Bearer"
    assert not refused, refused


async def websocket_handshake(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    """Open a WebSocket at the ASGI level; returns what the app sent before closing or accepting."""
    sent: list[dict[str, Any]] = []
    inbox = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "websocket.disconnect", "code": 1000}

    async def send_message(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"gateway.test"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("gateway.test", 80),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
    }
    await app(scope, receive, send_message)
    return sent


async def test_websocket_routes_refuse_a_handshake_without_a_valid_key(gateway, world):
    sockets = [path for method, path in served_routes(gateway.fastapi_app) if method == "WS"]
    assert sockets, "the app serves no WebSocket route: drop this test"
    for path in sockets:
        for headers in ([], [(b"authorization", f"Bearer {world.revoked_key}".encode())]):
            sent = await websocket_handshake(gateway.fastapi_app, path, headers)
            assert sent[0]["type"] == "websocket.http.response.start", sent
            assert sent[0]["status"] == 401
            assert all(m["type"] != "websocket.accept" for m in sent)
        accepted = await websocket_handshake(
            gateway.fastapi_app, path, [(b"authorization", f"Bearer {world.a.api_key}".encode())]
        )
        assert accepted[0]["type"] == "websocket.accept", accepted


async def test_another_organisation_gets_404_for_our_resources_and_never_our_data(gateway, http, world):
    findings: dict[str, str] = {}
    for method, path in sorted(served_routes(gateway.fastapi_app)):
        if method == "WS" or permission_of((method, path)) == PUBLIC:
            continue
        call = call_for(method, path, world)
        response = await send(http, call, world.b.api_key)
        route = f"{method} {path}"
        names_ours = any(p in path for p in RESOURCE_PARAMETERS) or path.endswith("/execute")
        if names_ours and response.status_code != 404:
            findings[route] = f"{response.status_code} instead of 404: {response.text[:120]}"
        if response.status_code >= 500:
            findings[route] = f"{response.status_code}: {response.text[:120]}"
        if found := leaked(world, call, response):
            findings[route] = f"{response.status_code} carries A's {found}"
    assert not findings, findings
    await assert_a_unchanged(http, world)


async def assert_a_unchanged(http: httpx.AsyncClient, w: World) -> None:
    agent = await http.get(f"/api/external-agents/{w.agent_id}", headers=w.a.headers)
    assert agent.status_code == 200 and agent.json()["description"] != "changed by the matrix"
    policy = await http.get(f"/api/policies/{w.policy_id}", headers=w.a.headers)
    assert policy.status_code == 200 and policy.json()["description"] != "changed by the matrix"
    invocation = await http.get(f"/api/lineage/{w.invocation_id}", headers=w.a.headers)
    assert invocation.status_code == 200 and invocation.json()["external_user"]["email"] == w.email


async def test_a_key_lacking_the_routes_permission_is_403_and_changes_nothing(gateway, http, world):
    findings: dict[str, str] = {}
    for method, path in sorted(served_routes(gateway.fastapi_app)):
        permission = permission_of((method, path))
        if method == "WS" or permission in (PUBLIC, AUTHENTICATED):
            continue
        response = await send(http, call_for(method, path, world), world.lacking[permission])
        if response.status_code != 403 or permission not in response.json()["detail"]:
            findings[f"{method} {path}"] = f"{response.status_code}: {response.text[:120]}"
    assert not findings, findings
    await assert_a_unchanged(http, world)


async def test_our_admin_key_is_served_on_every_route(gateway, http, world):
    refused: dict[str, str] = {}
    routes = sorted(served_routes(gateway.fastapi_app), key=lambda r: r[0] == "DELETE")
    for method, path in routes:
        if method == "WS":
            continue
        key = world.operator_key if path == "/metrics" else world.a.api_key
        response = await send(http, call_for(method, path, world, spare=True), key)
        nexus_placeholder = not path.startswith(("/api", "/mcp", "/metrics"))
        if response.status_code in (401, 403) or response.status_code >= 500:
            refused[f"{method} {path}"] = f"{response.status_code}: {response.text[:120]}"
        elif response.status_code == 404 and not nexus_placeholder:
            refused[f"{method} {path}"] = f"404: {response.text[:120]}"
    assert not refused, refused


# ---------------------------------------------------------------------------------------------------------
# MCP tools: the same matrix, through tools/call.
# ---------------------------------------------------------------------------------------------------------


async def mcp(http: httpx.AsyncClient, key: str, method: str, params: dict[str, Any] | None = None) -> httpx.Response:
    return await http.post(
        "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}},
        headers={"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"},
    )


def tool_arguments(name: str, w: World) -> dict[str, Any]:
    return {
        "get_agent": {"agent_id": w.agent_id},
        "governance_status": {"agent_id": w.agent_id},
        "list_invocations": {"agent_id": w.agent_id},
        "invoke_agent": {"agent_id": w.agent_id, "input": "matrix", **lower_identity(w)},
        "get_invocation": {"invocation_id": w.invocation_id},
        "lineage_graph": {"session_id": w.session_id},
        "user_lineage": {"email": w.email},
        "erase_user_lineage": {"email": w.email},
        "list_lineage": {"external_user_email": w.email},
        "register_agent": {
            "name": f"mcp-{uuid.uuid4().hex[:8]}",
            "platform": "custom_http",
            "platform_config": {"url": "http://127.0.0.1:9/never"},
        },
        "execute_workflow": {
            "workflow_id": "notify_agent",
            "inputs": {"notify": {"agent_id": w.agent_id, "input": "matrix", "identity": lower_identity(w)}},
        },
    }.get(name, {})


def tool_error_status(response: httpx.Response) -> int | None:
    """The REST status code a tool error carries, or None when the tool succeeded."""
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    if not result.get("isError"):
        return None
    text = result["content"][0]["text"]
    return json.loads(text[text.index("{") :])["status_code"]


async def test_every_mcp_tool_is_classified_and_scoped(http, world):
    listed = await mcp(http, world.a.api_key, "tools/list")
    tools = {tool["name"] for tool in listed.json()["result"]["tools"]}
    assert tools == set(MCP_PERMISSION_OF), f"classify new tools in MCP_PERMISSION_OF: {tools ^ set(MCP_PERMISSION_OF)}"
    findings: dict[str, str] = {}
    for name in [*sorted(tools - {"erase_user_lineage"}), "erase_user_lineage"]:
        arguments = tool_arguments(name, world)
        params = {"name": name, "arguments": arguments}
        lacking = await mcp(http, world.lacking[MCP_PERMISSION_OF[name]], "tools/call", params)
        if tool_error_status(lacking) != 403:
            findings[f"{name} without {MCP_PERMISSION_OF[name]}"] = lacking.text[:160]
        other = await mcp(http, world.b.api_key, "tools/call", params)
        status = tool_error_status(other)
        if name in (*MCP_RESOURCE_TOOLS, "execute_workflow") and status != 404:
            findings[f"{name} by another organisation"] = other.text[:160]
        sent = json.dumps(arguments)
        if found := [m for m in world.markers if m in other.text and m not in sent]:
            findings[f"{name} by another organisation carries"] = str(found)
    assert not findings, findings
    await assert_a_unchanged(http, world)


async def test_mcp_without_a_valid_key_is_401_for_every_method(http, world):
    for key in (None, world.revoked_key):
        for method in ("GET", "POST", "DELETE"):
            headers = {"Accept": "application/json, text/event-stream"}
            if key:
                headers["Authorization"] = f"Bearer {key}"
            response = await http.request(
                method, "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers
            )
            assert response.status_code == 401, (method, key, response.text)


# ---------------------------------------------------------------------------------------------------------
# Webhook URLs (SSRF) and redirects.
# ---------------------------------------------------------------------------------------------------------

REFUSED_WEBHOOK_HOSTS = [
    "127.0.0.1",
    "127.1",
    "2130706433",
    "0x7f000001",
    "0.0.0.0",  # noqa: S104 (a webhook host to refuse, not a bind address)
    "10.1.2.3",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",
    "169.254.169.254",
    "169.254.1.1",
    "100.100.100.200",
    "[::1]",
    "[fe80::1]",
    "[fd00:ec2::254]",
    "[::ffff:127.0.0.1]",
    "[64:ff9b::a9fe:a9fe]",
    "localhost",
    "api.localhost",
    "metadata.google.internal",
]
URL_FIELDS = [
    ("custom_http", {}, "url"),
    ("slack", {}, "webhook_url"),
    ("discord", {}, "webhook_url"),
    ("teams", {}, "webhook_url"),
]


@pytest.fixture(scope="module")
async def strict_gateway(tmp_path_factory: pytest.TempPathFactory):
    """An app as production runs it: private webhooks refused (the shared test app allows them)."""
    data_dir = tmp_path_factory.mktemp("strict-webhooks")
    settings = make_settings(
        f"sqlite:///{data_dir}/strict.db", str(data_dir), external_agent_allow_private_webhooks=False
    )
    async with running_app(settings) as app:
        yield app


@pytest.fixture
async def strict(strict_gateway) -> AsyncIterator[tuple[httpx.AsyncClient, Org]]:
    async with app_client(strict_gateway) as client:
        yield client, await new_org(strict_gateway)


@pytest.mark.parametrize("host", REFUSED_WEBHOOK_HOSTS)
async def test_private_loopback_link_local_and_metadata_webhooks_are_refused(strict, host):
    http, org = strict
    refused = []
    for platform, config, url_field in URL_FIELDS:
        for scheme in ("https", "http"):
            url = f"{scheme}://{host}/hook"
            body = {
                "name": f"ssrf-{uuid.uuid4().hex[:8]}",
                "platform": platform,
                "platform_config": {**config, url_field: url},
            }
            created = await http.post("/api/external-agents", json=body, headers=org.headers)
            if created.status_code != 400 or url_field not in created.json()["detail"]:
                refused.append(f"{platform} {url}: {created.status_code} {created.text[:100]}")
    oauth = {
        "name": f"ssrf-{uuid.uuid4().hex[:8]}",
        "platform": "custom_http",
        "platform_config": {"url": "https://agents.example.com/hook"},
        "auth_config": {
            "auth_type": "oauth2",
            "credentials": {"client_id": "c", "client_secret": "s", "token_url": f"https://{host}/token"},
        },
    }
    created = await http.post("/api/external-agents", json=oauth, headers=org.headers)
    if created.status_code != 400:
        refused.append(f"oauth2 token_url https://{host}/token: {created.status_code}")
    patched_agent = await http.post(
        "/api/external-agents",
        json={
            "name": f"ok-{uuid.uuid4().hex[:8]}",
            "platform": "custom_http",
            "platform_config": {"url": "https://agents.example.com/hook"},
        },
        headers=org.headers,
    )
    assert patched_agent.status_code == 201, patched_agent.text
    patched = await http.patch(
        f"/api/external-agents/{patched_agent.json()['id']}",
        json={"platform_config": {"url": f"https://{host}/hook"}},
        headers=org.headers,
    )
    if patched.status_code != 400:
        refused.append(f"PATCH to https://{host}/hook: {patched.status_code}")
    assert not refused, refused


async def test_a_name_resolving_to_a_private_address_is_refused_at_delivery_without_sending(strict):
    http, org = strict
    # This machine's own name resolves through /etc/hosts to loopback or a private address on any normal host.
    name = socket.gethostname().lower()
    addresses = {info[4][0] for info in socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)}
    assert any(not ipaddress.ip_address(a.split("%")[0]).is_global for a in addresses), (name, addresses)
    created = await http.post(
        "/api/external-agents",
        json={
            "name": f"dns-{uuid.uuid4().hex[:8]}",
            "platform": "custom_http",
            "platform_config": {"url": f"https://{name}/hook"},
        },
        headers=org.headers,
    )
    assert created.status_code == 201, created.text  # no DNS at registration: it must not depend on it
    agent_id = created.json()["id"]
    response = await http.post(
        f"/api/external-agents/{agent_id}/invoke",
        json={"input": "x"},
        headers={
            **org.headers,
            "X-External-User-ID": "u",
            "X-External-User-Email": "u@example.com",
            "X-External-System": "s",
            "X-External-Session-ID": "s",
        },
    )
    assert response.status_code == 502, response.text
    assert f"host {name} resolves to" in response.json()["detail"]
    status = (await http.get(f"/api/external-agents/{agent_id}/governance-status", headers=org.headers)).json()
    assert status["budget"]["daily_spent_usd"] == 0  # never sent, so the reservation was released


async def test_metadata_addresses_are_refused_even_when_private_webhooks_are_allowed(http, world):
    for host in ("169.254.169.254", "metadata.google.internal", "[fd00:ec2::254]", "100.100.100.200"):
        body = {
            "name": f"meta-{uuid.uuid4().hex[:8]}",
            "platform": "custom_http",
            "platform_config": {"url": f"http://{host}/latest/meta-data/"},
        }
        response = await http.post("/api/external-agents", json=body, headers=world.a.headers)
        assert response.status_code == 400 and "metadata" in response.json()["detail"], response.text


async def test_a_platform_redirect_is_never_followed(http, world, platform_server: PlatformServer):
    path = f"/redirecting-{uuid.uuid4().hex[:6]}"
    platform_server.script(path, ScriptedResponse(307, headers={"Location": platform_server.url("/internal-only")}))
    created = await http.post(
        "/api/external-agents",
        json={"name": f"redirect-{uuid.uuid4().hex[:8]}", "platform": "custom_http",
              "platform_config": {"url": platform_server.url(path)}},
        headers=world.a.headers,
    )  # fmt: skip
    response = await http.post(
        f"/api/external-agents/{created.json()['id']}/invoke",
        json={"input": "x"},
        headers={**world.a.headers, **identity(world)},
    )
    assert response.status_code == 502 and "redirects are not followed" in response.json()["detail"]
    assert len(platform_server.requests(path)) == 1 and platform_server.requests("/internal-only") == []


# ---------------------------------------------------------------------------------------------------------
# API keys: hashed lookups, constant-time comparison.
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def compare_digest_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, Any]]]:
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    yield calls


async def test_api_keys_are_looked_up_by_hash_and_compared_in_constant_time(gateway, world, compare_digest_calls):
    from external_agents.stores.api_keys import authenticate

    engine = gateway.external_agents.engine
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        statements.append(f"{statement} {parameters!r}")

    sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        caller = await authenticate(engine, world.a.api_key)
        wrong = [world.a.api_key[:-1] + ("A" if world.a.api_key[-1] != "A" else "B"), "eak_short", "x" * 10_000]
        refused = [await authenticate(engine, key) for key in wrong]
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert caller is not None and caller.organization_id == world.a.organization_id
    assert refused == [None, None, None]
    # The one comparison in Python: presented hash against stored hash, both 64 hex characters.
    assert compare_digest_calls == [(hash_key(world.a.api_key), hash_key(world.a.api_key))]
    assert all(len(hash_key(key)) == 64 for key in [world.a.api_key, *wrong])
    # The database only ever sees the hash: a plaintext key never reaches SQL (or its logs).
    assert not any(key in statement for statement in statements for key in [world.a.api_key, *wrong])
    assert any(hash_key(world.a.api_key) in statement for statement in statements)
