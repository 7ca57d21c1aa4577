"""The local stack, demo and development tooling (not part of the runtime package)."""
