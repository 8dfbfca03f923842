"""External Agents: the governed gateway for invoking agents on other platforms, as a Kailash plugin.

The repository root is this package (see pyproject.toml); every module is imported as `external_agents.<...>`.
A host Kailash app adds the whole feature to its Nexus app with one call (see README, "Embedding"):

    import external_agents
    external_agents.install(app, load_settings(), workflows={"greeting": greeting})

`install` is resolved on first use: importing the package alone loads nothing of Kailash or Nexus, so the
command line (`external-agents --help`) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from external_agents.nexus_app import InstallError, install

__all__ = ["InstallError", "install"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from external_agents import nexus_app

        return getattr(nexus_app, name)
    raise AttributeError(f"module 'external_agents' has no attribute {name!r}")
