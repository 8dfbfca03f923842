"""The host's own error types. The name clashes with `external_agents.errors` on purpose: the embedding test
proves each package keeps its own (a host's `errors.py` once shadowed ours)."""

from __future__ import annotations


class ValidationError(ValueError):
    """Input the host's nodes cannot take."""
