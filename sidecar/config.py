"""Sidecar configuration: one YAML file, overridden by ``AUTHZ_*`` environment variables.

Environment overrides use ``__`` between levels, e.g. ``AUTHZ_OPA__URL`` or
``AUTHZ_IDENTITY__JWT_SVID__AUDIENCES='[a, b]'``; values are parsed as YAML scalars/flow.
Every key and default is documented in docs/configuration.md.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sidecar.errors import Kind, SidecarError
from sidecar.spiffe_types import SpiffeId, TrustDomain

ENV_PREFIX = "AUTHZ_"
ENV_CONFIG_FILE = "AUTHZ_CONFIG"


class ConfigError(SidecarError):
    """The configuration is invalid; the message names the offending key."""

    KIND = Kind.INVALID
    CODE = "config"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def _header_name(value: str) -> str:
    """Lower case, as every header lookup is: ``X-Agent-Task-Token`` must not silently match nothing."""
    name = value.strip().lower()
    if not name or not set(name) <= _TCHARS:
        raise ValueError(f"{value!r} is not an HTTP header name")
    return name


HeaderName = Annotated[str, AfterValidator(_header_name)]


def is_loopback(host: str) -> bool:
    """Whether a listener bound to ``host`` is reachable only from this network namespace."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


class ListenConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(9191, ge=0, le=65535)
    path_prefix: str = "/authz"
    # The check endpoint on a unix socket (in a directory only Envoy's and the sidecar's users can
    # open), so an agent sharing the pod's loopback cannot ask for a decision itself. When set,
    # host:port serves only the agent and approver API (tasks, approvals, JWKS).
    socket: Path | None = None

    @field_validator("path_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        if value and (not value.startswith("/") or value.endswith("/")):
            raise ValueError("must be empty or start with '/' and not end with '/'")
        return value


class AdminConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(9192, ge=0, le=65535)


class OpaConfig(_Strict):
    url: str = "http://127.0.0.1:8181"
    decision_path: str = "agent/authz/decision"
    timeout_ms: int = Field(500, gt=0, le=60_000)
    max_connections: int = Field(64, gt=0)
    # Calls the sidecar refuses before asking the policy are reported to OPA at this rule path so
    # that OPA's decision log lists every refused call (sidecar/refusals.py); null: not reported.
    refusals_path: str | None = "agent/refusals/decision"
    refusals_max_in_flight: int = Field(16, gt=0, le=1024)
    # Agent profile: each request body in the input once, in its most specific form (input.mcp,
    # parsed_body or the text), or "all": the text, parsed_body and input.mcp, as the plugin
    # sends the first two. OPA parses the whole input on every query.
    input_body: Literal["once", "all"] = "once"

    @field_validator("url")
    @classmethod
    def _url_shape(cls, value: str) -> str:
        if not value.startswith(("http://", "https://", "unix://")):
            raise ValueError("must start with http://, https:// or unix://")
        return value.rstrip("/")

    @field_validator("decision_path")
    @classmethod
    def _path_shape(cls, value: str) -> str:
        return _rule_path(value)

    @field_validator("refusals_path")
    @classmethod
    def _refusals_path_shape(cls, value: str | None) -> str | None:
        return None if value is None else _rule_path(value)


class XfccConfig(_Strict):
    trusted_secret_file: Path | None = None
    secret_header: HeaderName = "x-authz-xfcc-secret"


class JwtSvidConfig(_Strict):
    audiences: list[str] = Field(default_factory=lambda: ["authz-sidecar"], min_length=1)
    algorithms: list[str] = Field(
        default_factory=lambda: ["ES256", "ES384", "RS256", "RS384", "PS256", "PS384"],
        min_length=1,
    )
    bundle_files: dict[str, Path] = Field(default_factory=dict)
    workload_api_socket: str | None = None
    max_token_bytes: int = Field(8192, gt=0)
    strip_from_upstream: bool = True

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        allowed = {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
        bad = [a for a in value if a not in allowed]
        if bad:
            raise ValueError(f"unsupported algorithms {bad}; JWT-SVIDs use RS*, ES* or PS*")
        return value

    @field_validator("bundle_files")
    @classmethod
    def _bundle_domains(cls, value: dict[str, Path]) -> dict[str, Path]:
        for name in value:
            _trust_domain(name)
        return value


IdentitySource = Literal["xfcc", "jwt_svid", "pod"]
DEFAULT_SOURCES: tuple[IdentitySource, ...] = ("xfcc", "jwt_svid")


class PodIdentityConfig(_Strict):
    spiffe_id: str | None = None


class IdentityConfig(_Strict):
    sources: list[IdentitySource] = Field(default_factory=lambda: list(DEFAULT_SOURCES), min_length=1)
    required: bool = True
    trust_domains: list[str] = Field(default_factory=lambda: ["demo.local"], min_length=1)
    max_delegation_depth: int = Field(8, ge=0)
    xfcc: XfccConfig = Field(default_factory=XfccConfig)
    jwt_svid: JwtSvidConfig = Field(default_factory=JwtSvidConfig)
    pod: PodIdentityConfig = Field(default_factory=PodIdentityConfig)

    @field_validator("trust_domains")
    @classmethod
    def _valid_domains(cls, value: list[str]) -> list[str]:
        return [_trust_domain(name) for name in value]


class RequestBodyConfig(_Strict):
    max_bytes: int = Field(1_048_576, gt=0)
    allow_partial: bool = False
    # Envoy's with_request_body.max_request_bytes, the same number rendered into its config: a
    # body that fills the buffer is treated as truncated (the largest body judged whole is one
    # byte less), because Envoy does not flag a body of exactly the limit as partial.
    envoy_max_request_bytes: int = Field(65_536, gt=1)

    @model_validator(mode="after")
    def _buffer_within_reads(self) -> RequestBodyConfig:
        if self.envoy_max_request_bytes > self.max_bytes:
            raise ValueError(
                f"envoy_max_request_bytes ({self.envoy_max_request_bytes}) exceeds max_bytes ({self.max_bytes}):"
                " the sidecar would refuse check requests Envoy sends"
            )
        return self


class LogConfig(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    decisions: bool = True
    redact: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)  # field names (sidecar/logs.py)


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return value


HostPort = Annotated[str, AfterValidator(_host_port)]


class StateConfig(_Strict):
    backend: Literal["memory", "redis"] = "memory"
    # Which Redis: one instance at redis_url, a Redis Cluster found from redis_cluster_nodes, or
    # the primary the sentinels in sentinel_nodes name for sentinel_service.
    redis_mode: Literal["single", "cluster", "sentinel"] = "single"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster_nodes: list[HostPort] = Field(default_factory=list)
    sentinel_nodes: list[HostPort] = Field(default_factory=list)
    sentinel_service: str = ""
    # ACL user and a file holding its password (read at start; a password in redis_url works too).
    redis_username: str | None = None
    redis_password_file: Path | None = None
    sentinel_username: str | None = None
    sentinel_password_file: Path | None = None
    # TLS: rediss:// in redis_url (single), redis_tls for cluster and sentinel (nodes and sentinels).
    redis_tls: bool = False
    redis_ca_file: Path | None = None
    redis_cert_file: Path | None = None  # client certificate, when the server asks for one
    redis_key_file: Path | None = None
    key_prefix: str = "authz:"
    timeout_ms: int = Field(500, gt=0, le=60_000)
    # Redis operations in flight at once (more wait for a turn); each holds at most two connections.
    max_connections: int = Field(64, gt=0, le=10_000)
    # Revocations and approval consumption are acknowledged only once this many replicas have
    # them (WAIT); null: 1 in cluster and sentinel mode, 0 (no WAIT) for a single instance.
    replica_acks: int | None = Field(None, ge=0, le=16)
    replica_ack_timeout_ms: int = Field(100, gt=0, le=60_000)

    @field_validator("key_prefix")
    @classmethod
    def _no_hash_tag(cls, value: str) -> str:
        # The store puts a hash tag ({...}) in every key so a script's keys share a Cluster slot;
        # a brace in the prefix would become the tag instead.
        if "{" in value or "}" in value:
            raise ValueError("must not contain '{' or '}' (the store adds its own hash tags)")
        return value

    @model_validator(mode="after")
    def _mode_settings(self) -> StateConfig:
        scheme = self.redis_url.partition("://")[0]
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"state.redis_url must be redis://, rediss:// or unix://, not {scheme}://")
        if self.redis_mode == "cluster" and not self.redis_cluster_nodes:
            raise ValueError("state.redis_mode cluster needs state.redis_cluster_nodes (host:port seeds)")
        if self.redis_mode == "sentinel" and not (self.sentinel_nodes and self.sentinel_service):
            raise ValueError("state.redis_mode sentinel needs state.sentinel_nodes and state.sentinel_service")
        if self.redis_mode == "single" and self.redis_tls and scheme != "rediss":
            raise ValueError("state.redis_tls in single mode: use a rediss:// state.redis_url instead")
        if (self.redis_cert_file is None) != (self.redis_key_file is None):
            raise ValueError("state.redis_cert_file and state.redis_key_file go together")
        tls = self.redis_tls if self.redis_mode != "single" else scheme == "rediss"
        if not tls and (self.redis_ca_file or self.redis_cert_file):
            raise ValueError("state.redis_ca_file and state.redis_cert_file need TLS (rediss:// or state.redis_tls)")
        if self.effective_replica_acks and self.replica_ack_timeout_ms >= self.timeout_ms:
            raise ValueError("state.replica_ack_timeout_ms must be below state.timeout_ms (the socket timeout)")
        return self

    @property
    def effective_replica_acks(self) -> int:
        if self.replica_acks is not None:
            return self.replica_acks
        return 0 if self.redis_mode == "single" else 1


class TasksConfig(_Strict):
    enabled: bool = True
    decision_path: str = "agent/tasks/decision"
    issuer: str = "authz-sidecar"
    token_header: HeaderName = "x-agent-task-token"
    max_ttl_seconds: int = Field(3600, gt=0)
    max_delegation_depth: int = Field(4, ge=0)

    @field_validator("decision_path")
    @classmethod
    def _path_shape(cls, value: str) -> str:
        return _rule_path(value)


class CredentialsConfig(_Strict):
    keys_dir: Path | None = None
    algorithm: Literal["ES256", "ES384", "RS256"] = "ES256"
    max_ttl_seconds: int = Field(300, gt=0, le=3600)
    reload_seconds: float = Field(10.0, gt=0)


class SessionsConfig(_Strict):
    enabled: bool = True
    recent_window: int = Field(20, ge=0, le=1000)
    max_labels: int = Field(64, ge=0, le=10_000)
    idle_ttl_seconds: int = Field(3600, gt=0)
    inflight_timeout_seconds: int = Field(30, gt=0)
    # The agent's own history (input.agent_history) remembers a label this long after it was last
    # recorded: the longest label window a policy can use.
    agent_label_retention_seconds: int = Field(86_400, gt=0)


class ApprovalsConfig(_Strict):
    enabled: bool = True
    decision_path: str = "agent/approvals/decision"
    header: HeaderName = "x-agent-approval-id"
    default_ttl_seconds: int = Field(900, gt=0)
    max_ttl_seconds: int = Field(86_400, gt=0)
    max_pending_per_agent: int = Field(20, gt=0, le=10_000)
    public_url: str = "http://127.0.0.1:9191"
    webhook_url: str | None = None
    webhook_secret_file: Path | None = None
    oidc_issuer: str | None = None
    oidc_audience: str = "authz-sidecar-approvals"
    oidc_jwks_file: Path | None = None
    oidc_jwks_url: str | None = None

    @field_validator("decision_path")
    @classmethod
    def _path_shape(cls, value: str) -> str:
        return _rule_path(value)


def _rule_path(value: str) -> str:
    parts = value.strip("/").split("/")
    if not all(p and p.replace("_", "").replace("-", "").isalnum() for p in parts):
        raise ValueError("must be a '/'-separated rule path such as agent/authz/decision")
    return "/".join(parts)


def _trust_domain(name: str) -> str:
    try:
        return str(TrustDomain(name).name)
    except Exception as exc:  # the spiffe package's errors are not ValueErrors
        raise ValueError(str(exc)) from None


class ShadowConfig(_Strict):
    """A candidate policy asked beside the live one, never enforced (sidecar/shadow.py). Off unless
    ``decision_path`` (a second path in the same OPA) or ``opa_url`` (a second OPA) is set."""

    decision_path: str | None = None  # default with opa_url: opa.decision_path
    opa_url: str | None = None  # default with decision_path: opa.url
    timeout_ms: int = Field(250, gt=0, le=60_000)
    max_in_flight: int = Field(32, gt=0, le=10_000)

    @field_validator("decision_path")
    @classmethod
    def _path_shape(cls, value: str | None) -> str | None:
        return None if value is None else _rule_path(value)

    @field_validator("opa_url")
    @classmethod
    def _url_shape(cls, value: str | None) -> str | None:
        return None if value is None else OpaConfig._url_shape(value)


class GrpcConfig(_Strict):
    """Envoy ext_authz gRPC mode (``envoy.service.auth.v3.Authorization/Check``), beside the HTTP listener."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9193, ge=0, le=65535)
    socket: Path | None = None  # serve gRPC on this unix socket instead of host:port


class McpResponsesConfig(_Strict):
    """The MCP response path: an Envoy ext_proc server (sidecar/mcp_response/, docs/mcp.md)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9194, ge=0, le=65535)
    socket: Path | None = None  # serve ext_proc on this unix socket instead of host:port
    decision_path: str = "agent/response/decision"  # which items stay visible, what output is redacted
    pending_ttl_seconds: float = Field(60.0, gt=0, le=3600)  # how long an allowed call waits for its response
    max_pending: int = Field(10_000, gt=0, le=1_000_000)
    pin_ttl_seconds: int = Field(86_400, gt=0)  # how long a session's pinned tool definitions live

    @field_validator("decision_path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _rule_path(value)


class ShutdownConfig(_Strict):
    """What SIGTERM does: fail /readyz at once, keep answering for ``drain_delay_seconds`` (so load
    balancers and Envoy stop sending new checks), then close the listeners and give the checks in
    flight up to ``drain_timeout_seconds`` to finish before exiting."""

    drain_delay_seconds: float = Field(5.0, ge=0, le=300)
    drain_timeout_seconds: float = Field(20.0, gt=0, le=600)


class AuthzenConfig(_Strict):
    """The OpenID AuthZEN 1.0 PDP on the API listener (sidecar/authzen/, docs/authzen.md)."""

    enabled: bool = True
    decision_path: str = "authzen/decision"  # the AuthZEN entrypoint: {subject, action, resource, context}
    # The policy's candidate actions for the Action Search API; null turns that endpoint off.
    actions_path: str | None = "authzen/actions"
    # Who may ask (exact SPIFFE IDs); empty: any JWT-SVID of identity.trust_domains.
    callers: list[str] = Field(default_factory=list)
    # policy_decision_point in the metadata; default: the scheme and Host the PEP used.
    base_url: str | None = None
    max_evaluations: int = Field(1000, gt=0, le=100_000)
    max_body_bytes: int = Field(1_048_576, gt=0)
    concurrency: int = Field(16, gt=0, le=1024)  # OPA queries in flight for one execute_all batch

    @field_validator("decision_path", "actions_path")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        return None if value is None else _rule_path(value)

    @field_validator("callers")
    @classmethod
    def _caller_ids(cls, value: list[str]) -> list[str]:
        """Each as the parsed ID prints, which is how a verified caller is compared to it."""
        ids = []
        for caller in value:
            try:
                ids.append(str(SpiffeId(caller)))
            except Exception as exc:  # the spiffe package's errors are not ValueErrors
                raise ValueError(f"{caller!r} is not a SPIFFE ID: {exc}") from None
        return ids

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("https://", "http://")) or "?" in value or "#" in value:
            raise ValueError("must be an http(s) URL without query or fragment")
        return value.rstrip("/")


class TracingConfig(_Strict):
    """OpenTelemetry tracing (sidecar/tracing.py): off unless ``endpoint`` is set.

    Off, the sidecar still reads a W3C ``traceparent`` (the decision record's ``trace_id``) and passes
    it on to OPA; on, it also records spans and exports them over OTLP.
    """

    # The OTLP collector: http/protobuf, e.g. http://otel-collector:4318/v1/traces; grpc, e.g. http://otel-collector:4317.
    endpoint: str | None = None
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    # Share of traces recorded and exported, decided on the trace id: the agent's sampled flag is not
    # trusted (a hostile agent could otherwise have every call exported).
    sampling_ratio: float = Field(1.0, ge=0.0, le=1.0)
    service_name: str = Field("authz-sidecar", min_length=1)
    # OTLP export is best effort: a slow or dead collector never delays a decision.
    export_timeout_ms: int = Field(10_000, gt=0)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None


class PluginConfig(_Strict):
    """The opa-envoy-plugin profile's options, named as the plugin names them."""

    dry_run: bool = False  # decide and log, but always allow (the plugin's dry-run)
    skip_request_body_parse: bool = False  # no parsed_body / truncated_body in the input


Profile = Literal["agent", "opa-envoy-plugin"]


class Config(_Strict):
    """The whole sidecar configuration."""

    # agent: the agent input and verdicts (README "How a request is decided"); opa-envoy-plugin:
    # the plugin's input and result handling, so policies written for it run unchanged.
    profile: Profile = "agent"
    plugin: PluginConfig = Field(default_factory=PluginConfig)
    listen: ListenConfig = Field(default_factory=ListenConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    opa: OpaConfig = Field(default_factory=OpaConfig)
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    request_body: RequestBodyConfig = Field(default_factory=RequestBodyConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    credentials: CredentialsConfig = Field(default_factory=CredentialsConfig)
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)
    approvals: ApprovalsConfig = Field(default_factory=ApprovalsConfig)
    grpc: GrpcConfig = Field(default_factory=GrpcConfig)
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    authzen: AuthzenConfig = Field(default_factory=AuthzenConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    mcp_responses: McpResponsesConfig = Field(default_factory=McpResponsesConfig)

    @model_validator(mode="after")
    def _shadow_is_another_policy(self) -> Config:
        shadow = self.shadow
        same_opa = shadow.opa_url is None or shadow.opa_url == self.opa.url
        same_path = (shadow.decision_path or self.opa.decision_path) == self.opa.decision_path
        if (shadow.decision_path or shadow.opa_url) and same_opa and same_path:
            raise ValueError(
                "shadow.decision_path is the live opa.decision_path on the same OPA: the shadow would compare the"
                " live policy with itself; name the candidate's path, or its OPA in shadow.opa_url"
            )
        return self

    @model_validator(mode="after")
    def _pod_identity_on_loopback_only(self) -> Config:
        # The pod source names every caller without a credential as the pod: on a listener that
        # others can reach, any of them would be the pod.
        if "pod" not in self.identity.sources:
            return self
        exposed = []
        if not is_loopback(self.listen.host):  # the agent API then names its callers the pod too
            exposed.append(f"listen.host {self.listen.host!r}")
        if self.grpc.enabled and self.grpc.socket is None and not is_loopback(self.grpc.host):
            exposed.append(f"grpc.host {self.grpc.host!r}")
        if exposed:
            raise ValueError(
                "identity.sources has 'pod', which treats every caller without a credential (of the check"
                " endpoint and the agent API) as the pod, so those listeners must be unix sockets (listen.socket,"
                f" grpc.socket) or loopback-only (127.0.0.1, ::1 or localhost), not {' and '.join(exposed)}"
            )
        return self


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (or ``$AUTHZ_CONFIG``), apply ``AUTHZ_*`` overrides, validate."""
    env = os.environ if environ is None else environ
    if path is None and env.get(ENV_CONFIG_FILE):
        path = Path(env[ENV_CONFIG_FILE])
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        raw = loaded or {}
    for name, value in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and name != ENV_CONFIG_FILE:
            _apply_override(raw, name, value)
    return validate_config(raw)


def validate_config(raw: Mapping[str, Any]) -> Config:
    """Validate a config mapping; errors name the dotted key."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "<top level>"
            message = err["msg"]
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(f"{key}: {message}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def _apply_override(raw: dict[str, Any], name: str, value: str) -> None:
    keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
    if not all(keys):
        raise ConfigError(f"environment variable {name}: empty key segment")
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"environment variable {name}: {key} is not a section")
        node = child
    try:
        node[keys[-1]] = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError:
        node[keys[-1]] = value
