"""`python -m external_agents.channels.cli`: the same command line as the `external-agents` console script."""

from external_agents.channels.cli import main

main()
