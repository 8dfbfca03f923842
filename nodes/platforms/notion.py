"""Notion: records the invocation as a new page in a database (`POST /v1/pages`).

The page title goes into the database's title property (`title_property`, "Name" in a new database) and the
input into paragraph blocks. Notion caps a rich-text item at 2000 characters and a request at 100 child
blocks, so the input is split into 2000-character paragraphs and truncated past that. The integration token
comes from `platform_config.token` or from the agent's credentials (auth_type bearer_token). The output is the
created page's id and URL.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from external_agents.errors import ValidationError
from external_agents.nodes.platforms.base import (
    DeliveryRequest,
    OutgoingRequest,
    PlatformAdapter,
    PlatformAnswer,
    check_fields,
    check_header_value,
    facts,
    json_object,
    optional_http_url,
    optional_str,
    render_input,
    require_str,
    truncate,
    utf16_len,
)

DEFAULT_API_BASE_URL = "https://api.notion.com"
NOTION_VERSION = "2022-06-28"
DEFAULT_TITLE_PROPERTY = "Name"
MAX_RICH_TEXT = 2000
MAX_CHILDREN = 100
# One block is kept for the who-and-where line.
MAX_INPUT_BLOCKS = MAX_CHILDREN - 1
_DATABASE_ID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


class NotionAdapter(PlatformAdapter):
    platform = "notion"
    url_field = "api_base_url"
    default_url = DEFAULT_API_BASE_URL
    secret_fields = ("token",)

    def validate_config(self, platform_config: dict[str, Any]) -> dict[str, Any]:
        check_fields(
            platform_config,
            allowed=("database_id", "token", "title_property", "api_base_url"),
            prefix="platform_config",
        )
        database_id = require_str(platform_config, "database_id")
        if not _DATABASE_ID.fullmatch(database_id):
            raise ValidationError("platform_config.database_id must be a Notion database id (32 hex digits)")
        config: dict[str, Any] = {"database_id": database_id}
        token = optional_str(platform_config, "token")
        if token is not None:
            check_header_value(token, field="platform_config.token")
            config["token"] = token
        title_property = optional_str(platform_config, "title_property", max_length=200)
        if title_property is not None:
            config["title_property"] = title_property
        api_base_url = optional_http_url(platform_config, "api_base_url")
        if api_base_url is not None:
            config["api_base_url"] = api_base_url.rstrip("/")
        return config

    def build_request(self, request: DeliveryRequest) -> OutgoingRequest:
        config = request.platform_config
        token = config.get("token") or request.credentials.get("token")
        if not token:
            raise ValidationError(
                "notion needs platform_config.token or an integration token in auth_config.credentials.token"
            )
        text, _ = render_input(request.input)
        summary = " · ".join(f"{name}: {value}" for name, value in facts(request))
        children = [_paragraph(chunk) for chunk in split_text(text, MAX_RICH_TEXT, max_chunks=MAX_INPUT_BLOCKS)]
        children.append(_paragraph(truncate(summary, MAX_RICH_TEXT)))
        title = truncate(f"{request.agent_name} · {request.invocation_id}", MAX_RICH_TEXT)
        payload = {
            "parent": {"database_id": config["database_id"]},
            "properties": {
                config.get("title_property") or DEFAULT_TITLE_PROPERTY: {
                    "title": [{"type": "text", "text": {"content": title}}]
                }
            },
            "children": children,
        }
        base = config.get("api_base_url") or DEFAULT_API_BASE_URL
        return OutgoingRequest.json(
            method="POST",
            url=f"{base}/v1/pages",
            payload=payload,
            headers={"Authorization": f"Bearer {token}", "Notion-Version": NOTION_VERSION},
        )

    def parse_response(self, response: httpx.Response) -> PlatformAnswer:
        page = json_object(response) or {}
        return PlatformAnswer({"page_id": page.get("id"), "url": page.get("url")})


def split_text(text: str, limit: int, *, max_chunks: int) -> list[str]:
    """`text` in pieces of at most `limit` UTF-16 units; the last piece ends in an ellipsis when cut."""
    chunks: list[str] = []
    rest = text
    while rest:
        if len(chunks) == max_chunks - 1:
            chunks.append(truncate(rest, limit))
            break
        piece = _prefix(rest, limit)
        chunks.append(piece)
        rest = rest[len(piece) :]
    return chunks


def _prefix(text: str, limit: int) -> str:
    """A prefix of `text` of at most `limit` UTF-16 units (astral characters count two)."""
    end = min(len(text), limit)
    while (over := utf16_len(text[:end]) - limit) > 0:
        end -= (over + 1) // 2
    return text[:end]


def _paragraph(text: str) -> dict[str, Any]:
    return {
        "object": "block",
        "type": "paragraph",
        "paragraph": {"rich_text": [{"type": "text", "text": {"content": text}}]},
    }
