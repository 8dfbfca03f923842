"""The gateway's operations, below every channel: REST, MCP and the command line translate a request into one
of these and its typed result or error back into their own answer (status code, tool error, exit code).

`operations` holds what a caller may do (one method per operation, permission checked), `administration` what
an operator with database access does without a key (API keys, key rotation, retention), `metrics` the
Prometheus registry every invocation is counted in.
"""
