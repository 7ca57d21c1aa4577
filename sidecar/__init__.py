"""authz-sidecar: an OPA-backed Envoy ext_authz sidecar for AI agents."""

__version__ = "0.1.0"
