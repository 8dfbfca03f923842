"""External Agents: the governed gateway for invoking agents on other platforms, as a Kailash plugin.

The repository root is this package (see pyproject.toml); every module is imported as `external_agents.<...>`.
"""
