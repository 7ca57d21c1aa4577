"""xds-protos and opentelemetry-proto write the same files; the OTLP exporter needs the latter's.

``./taskw`` and the Dockerfiles install opentelemetry-proto again, last. If that step is lost, the
exporter cannot be imported and a sidecar with ``tracing.endpoint`` set would not start.
"""

from __future__ import annotations

from importlib import import_module


def test_opentelemetry_protos_are_opentelemetry_protos_own() -> None:
    common = import_module("opentelemetry.proto.common.v1.common_pb2")
    assert hasattr(common, "InstrumentationScope"), (
        f"{common.__file__} is xds-protos' older copy: reinstall opentelemetry-proto last (./taskw does)"
    )
    import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    import_module("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
