"""An OpenID AuthZEN 1.0 Policy Decision Point over the sidecar's OPA (docs/authzen.md).

- :mod:`.model`      requests: validation, batch defaults and semantics
- :mod:`.evaluate`   the policy entrypoint, batch semantics, action search
- :mod:`.discovery`  the PDP metadata document
- :mod:`.routes`     the HTTP binding (aiohttp), PEP authentication
- :mod:`.log`        one decision-log line per evaluation
"""
