"""Benchmark harness (``./taskw bench``): one upstream behind Envoy alone, behind Envoy with
authz-sidecar in HTTP and in gRPC ext_authz mode, and behind Envoy with opa-envoy-plugin, in one
run. Results are ratios between setups measured in the same run; see bench/README.md.
"""
