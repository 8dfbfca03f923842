"""Identity headers are UTF-8, over REST with raw bytes, on SQLite and PostgreSQL (issue 11, point 7).

Before, Starlette's latin-1 reading stored `zoë@exämple.com` as `zoÃ«@exÃ¤mple.com`, so neither a user's
access request nor a GDPR erasure by the real address found the person's invocations.
"""

from __future__ import annotations

from urllib.parse import quote

from external_agents.channels.remote_client import RemoteGateway
from tests.factories import IDENTITY, invoke, register, rows
from tests.platform_server import ScriptedResponse

EMAIL = "zoë@exämple.com"
NAME = "Zoë Ünïcødé 😀"
SYSTEM = "système-ß"


def utf8_identity() -> dict[str, bytes]:
    return {
        **{name: value.encode() for name, value in IDENTITY.items()},
        "X-External-User-Email": EMAIL.encode("utf-8"),
        "X-External-User-Name": NAME.encode("utf-8"),
        "X-External-System": SYSTEM.encode("utf-8"),
        "X-External-Context": '{"role": "rédactrice"}'.encode(),
    }


async def test_utf8_headers_round_trip_and_erasure_finds_them(gateway, client, org, platform_server) -> None:
    path = f"/utf8-{org.organization_id}"
    platform_server.script(path, ScriptedResponse(200, body={"ok": True}))
    agent = await register(client, org, platform_server, path=path)

    response = await client.post(
        f"/api/external-agents/{agent['id']}/invoke",
        json={"input": "hello"},
        headers={**org.headers, **utf8_identity()},
    )

    assert response.status_code == 200, response.text
    invocation_id = response.json()["invocation_id"]
    [row] = await rows(
        gateway,
        "SELECT external_user_email, external_user_name, external_system FROM invocation_lineage WHERE id = :id",
        id=invocation_id,
    )
    assert (row["external_user_email"], row["external_user_name"], row["external_system"]) == (EMAIL, NAME, SYSTEM)
    # The platform received the identity as sent, too.
    assert platform_server.requests(path)[-1].json()["external_user"]["email"] == EMAIL

    found = await client.get(f"/api/lineage/user/{quote(EMAIL)}", headers=org.headers)
    assert found.status_code == 200
    assert [item["invocation_id"] for item in found.json()["items"]] == [invocation_id]

    erased = await client.delete(f"/api/lineage/user/{quote(EMAIL)}", headers=org.headers)
    assert erased.status_code == 200, erased.text
    [after] = await rows(
        gateway,
        "SELECT external_user_email, external_user_name FROM invocation_lineage WHERE id = :id",
        id=invocation_id,
    )
    assert after["external_user_email"] != EMAIL and after["external_user_name"] != NAME


async def test_a_header_that_is_not_utf8_is_a_400_naming_it(client, org, platform_server) -> None:
    agent = await register(client, org, platform_server, path=f"/utf8-bad-{org.organization_id}")

    response = await invoke(client, org, agent["id"], headers={"X-External-User-Name": b"Zo\xeb"})  # latin-1 ë

    assert response.status_code == 400
    assert response.json()["detail"] == "X-External-User-Name: the header value is not valid UTF-8"
    assert platform_server.requests(f"/utf8-bad-{org.organization_id}") == []


async def test_the_remote_client_sends_identity_as_utf8(gateway, client, org, platform_server) -> None:
    path = f"/utf8-remote-{org.organization_id}"
    platform_server.script(path, ScriptedResponse(200, body={"ok": True}))
    agent = await register(client, org, platform_server, path=path)
    client.headers.update(org.headers)

    outcome = await RemoteGateway(client).invoke(
        agent["id"],
        identity={
            "external_user_id": "u-1",
            "external_user_email": EMAIL,
            "external_user_name": NAME,
            "external_system": SYSTEM,
            "external_session_id": "s-1",
        },
        body={"input": "hello"},
    )

    [row] = await rows(
        gateway,
        "SELECT external_user_email, external_user_name FROM invocation_lineage WHERE id = :id",
        id=outcome["invocation_id"],
    )
    assert (row["external_user_email"], row["external_user_name"]) == (EMAIL, NAME)
