{{/* The workload's name (agent, tool or the shared service): everything else is named after it. */}}
{{- define "authz-sidecar.name" -}}
{{- .Values.workload.name | default .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "authz-sidecar.serviceAccount" -}}
{{- .Values.workload.serviceAccount.name | default (include "authz-sidecar.name" .) -}}
{{- end -}}

{{- define "authz-sidecar.labels" -}}
app.kubernetes.io/part-of: authz-sidecar
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The pod's labels: app.kubernetes.io/name selects it (Services, NetworkPolicies, OPA's labels);
authz-sidecar.io/trio selects it for SPIRE registration. */}}
{{- define "authz-sidecar.selector" -}}
app.kubernetes.io/name: {{ include "authz-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "authz-sidecar.image" -}}
{{- if .digest -}}{{ .repository }}@{{ .digest }}{{- else -}}{{ .repository }}:{{ .tag }}{{- end -}}
{{- end -}}

{{/* Restricted PodSecurity for every container the chart adds. */}}
{{- define "authz-sidecar.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "authz-sidecar.socketDir" -}}/run/spiffe/workload{{- end -}}

{{/* Refuse settings that would deploy something that cannot work or is not safe. */}}
{{- define "authz-sidecar.validate" -}}
{{- if not (has .Values.mode (list "egress" "ingress" "istio")) -}}
{{- fail (printf "mode must be egress, ingress or istio, not %q" .Values.mode) -}}
{{- end -}}
{{- if and (ne .Values.mode "istio") (not .Values.workload.containers) -}}
{{- fail (printf "mode=%s needs workload.containers (the agent or tool beside the trio)" .Values.mode) -}}
{{- end -}}
{{- /* The agent or tool must not reach the Workload API or the trio's sockets (the pod boundary). */ -}}
{{- $reserved := list "spiffe-workload-api" "authz-run" "sidecar-config" "opa-config" "opa-service-token" "xfcc-secret" "signing-keys" "redis-password" "redis-sentinel-password" "redis-tls" -}}
{{- range $container := .Values.workload.containers -}}
{{- range $mount := $container.volumeMounts | default list -}}
{{- if or (has $mount.name $reserved) (hasPrefix "/run/authz" $mount.mountPath) (hasPrefix "/run/spiffe" $mount.mountPath) (hasPrefix "/run/secrets/authz" $mount.mountPath) -}}
{{- fail (printf "workload container %s must not mount %s at %s: only the trio reaches the Workload API, its sockets and its secrets" $container.name $mount.name $mount.mountPath) -}}
{{- end -}}
{{- end -}}
{{- range $env := $container.env | default list -}}
{{- if eq $env.name "SPIFFE_ENDPOINT_SOCKET" -}}
{{- fail (printf "workload container %s must not be given SPIFFE_ENDPOINT_SOCKET: only the trio reaches the Workload API" $container.name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.mode "egress") (not .Values.egress.tools) -}}
{{- fail "mode=egress needs egress.tools: the tool services the agent may reach (anything else is 403)" -}}
{{- end -}}
{{- if not .Values.opa.bundle.signingKey -}}
{{- fail "opa.bundle.signingKey: the PEM public key your bundles are signed with (OPA activates only verified bundles)" -}}
{{- end -}}
{{- if eq .Values.mode "istio" -}}
{{- if ne .Values.state.backend "redis" -}}
{{- fail "mode=istio runs several replicas: state.backend must be redis (one state for all of them)" -}}
{{- end -}}
{{- if not .Values.signingKeys.existingSecret -}}
{{- fail "mode=istio runs several replicas: signingKeys.existingSecret must name the Secret of signing keys they share" -}}
{{- end -}}
{{- end -}}
{{- if not (has .Values.state.backend (list "memory" "redis")) -}}
{{- fail (printf "state.backend must be memory or redis, not %q" .Values.state.backend) -}}
{{- end -}}
{{- if and (eq .Values.state.backend "memory") (gt (int (include "authz-sidecar.replicas" .)) 1) -}}
{{- fail "several replicas with state.backend=memory would each keep their own tasks and limits: use redis" -}}
{{- end -}}
{{- $r := .Values.state.redis -}}
{{- if not (has $r.mode (list "single" "cluster" "sentinel")) -}}
{{- fail (printf "state.redis.mode must be single, cluster or sentinel, not %q" $r.mode) -}}
{{- end -}}
{{- if and $r.deploy (ne $r.mode "single") -}}
{{- fail "state.redis.deploy runs one Valkey server: use state.redis.mode=single with it" -}}
{{- end -}}
{{- if and $r.deploy (not $r.passwordSecret.name) -}}
{{- fail "state.redis.deploy needs state.redis.passwordSecret.name (the bundled server's password)" -}}
{{- end -}}
{{- if and (eq .Values.state.backend "redis") (eq $r.mode "cluster") (not $r.clusterNodes) -}}
{{- fail "state.redis.clusterNodes (host:port seeds) for state.redis.mode=cluster" -}}
{{- end -}}
{{- if and (eq .Values.state.backend "redis") (eq $r.mode "sentinel") (not (and $r.sentinel.nodes $r.sentinel.service)) -}}
{{- fail "state.redis.sentinel.nodes and state.redis.sentinel.service for state.redis.mode=sentinel" -}}
{{- end -}}
{{- if and (eq .Values.state.backend "redis") (eq $r.mode "single") (not $r.url) (not $r.deploy) -}}
{{- fail "state.redis.mode=single needs state.redis.url (or state.redis.deploy=true)" -}}
{{- end -}}
{{- if and (not .Values.spiffe.csi.enabled) (not .Values.spiffe.hostPath) -}}
{{- fail "spiffe: enable csi or give hostPath (the SPIRE agent's socket directory)" -}}
{{- end -}}
{{- end -}}

{{- define "authz-sidecar.replicas" -}}
{{- if eq .Values.mode "istio" -}}
{{- if .Values.istio.autoscaling.enabled }}{{ .Values.istio.autoscaling.minReplicas }}{{ else }}{{ .Values.istio.replicas }}{{ end -}}
{{- else -}}
{{- .Values.workload.replicas -}}
{{- end -}}
{{- end -}}

{{/* Envoy's config: the committed rendering of envoy/envoy.yaml for the mode (files/envoy-<mode>.yaml,
from devstack/envoy_config.py), with only the deployment's own data set here: the node, and
- egress: the prototype tool (virtual host `tickets`, cluster `tool_tickets`) repeated for each of
  egress.tools, changing only the virtual host's name and domains, the cluster's name and address,
  and the SPIFFE ID the tool must present;
- ingress: the trust domain of the client-certificate SAN matcher and the tool's loopback port.
Every check, header, route and reply setting stays the template's. */}}
{{- define "authz-sidecar.envoyConfig" -}}
{{- $envoy := .Files.Get (printf "files/envoy-%s.yaml" .Values.mode) | fromYaml -}}
{{- $_ := set $envoy "node" (dict "id" (include "authz-sidecar.name" .) "cluster" .Release.Namespace) -}}
{{- $resources := $envoy.static_resources -}}
{{- $listener := index $resources.listeners 0 -}}
{{- $hcm := (index (index $listener.filter_chains 0).filters 0).typed_config -}}
{{- if eq .Values.mode "egress" -}}
{{- $prototype := "tickets" -}}
{{- $vhosts := list -}}
{{- range $vhost := $hcm.route_config.virtual_hosts -}}
{{- if eq $vhost.name $prototype -}}
{{- range $tool := $.Values.egress.tools -}}
{{- $copy := deepCopy $vhost -}}
{{- $_ := set $copy "name" $tool.name -}}
{{- $_ := set $copy "domains" (list $tool.host (printf "%s:*" $tool.host)) -}}
{{- /* every forwarding route: the MCP endpoint's and the final one */ -}}
{{- range $route := $copy.routes -}}
{{- if hasKey $route "route" -}}
{{- $_ := set $route.route "cluster" (printf "tool_%s" $tool.name) -}}
{{- end -}}
{{- end -}}
{{- $vhosts = append $vhosts $copy -}}
{{- end -}}
{{- else -}}
{{- $vhosts = append $vhosts $vhost -}}
{{- end -}}
{{- end -}}
{{- $_ := set $hcm.route_config "virtual_hosts" $vhosts -}}
{{- $clusters := list -}}
{{- range $cluster := $resources.clusters -}}
{{- if eq $cluster.name (printf "tool_%s" $prototype) -}}
{{- range $tool := $.Values.egress.tools -}}
{{- $copy := deepCopy $cluster -}}
{{- $name := printf "tool_%s" $tool.name -}}
{{- $_ := set $copy "name" $name -}}
{{- $_ := set $copy.load_assignment "cluster_name" $name -}}
{{- $address := (index (index $copy.load_assignment.endpoints 0).lb_endpoints 0).endpoint.address.socket_address -}}
{{- $_ := set $address "address" $tool.host -}}
{{- $_ := set $address "port_value" (int $tool.port) -}}
{{- $validation := $copy.transport_socket.typed_config.common_tls_context.combined_validation_context.default_validation_context -}}
{{- $_ := set (index $validation.match_typed_subject_alt_names 0).matcher "exact" (required (printf "egress.tools[%s].spiffeId" $tool.name) $tool.spiffeId) -}}
{{- $clusters = append $clusters $copy -}}
{{- end -}}
{{- else -}}
{{- $clusters = append $clusters $cluster -}}
{{- end -}}
{{- end -}}
{{- $_ := set $resources "clusters" $clusters -}}
{{- $_ := set (index $listener.address.socket_address) "port_value" (int .Values.egress.port) -}}
{{- else if eq .Values.mode "ingress" -}}
{{- $tls := (index $listener.filter_chains 0).transport_socket.typed_config.common_tls_context -}}
{{- $san := index $tls.combined_validation_context.default_validation_context.match_typed_subject_alt_names 0 -}}
{{- $_ := set $san.matcher "prefix" (printf "spiffe://%s/" .Values.trustDomain) -}}
{{- range $cluster := $resources.clusters -}}
{{- if eq $cluster.name "tool" -}}
{{- $address := (index (index $cluster.load_assignment.endpoints 0).lb_endpoints 0).endpoint.address.socket_address -}}
{{- $_ := set $address "port_value" (int $.Values.ingress.toolPort) -}}
{{- end -}}
{{- end -}}
{{- $_ := set (index $listener.address.socket_address) "port_value" (int .Values.ingress.port) -}}
{{- end -}}
{{- toYaml $envoy -}}
{{- end -}}

{{/* The sidecar's state section from state.* (docs/configuration.md, "state"). */}}
{{- define "authz-sidecar.stateConfig" -}}
{{- $r := .Values.state.redis -}}
{{- if eq .Values.state.backend "memory" -}}
backend: memory
{{- else -}}
backend: redis
redis_mode: {{ $r.mode }}
{{- if eq $r.mode "single" }}
redis_url: {{ $r.url | default (printf "redis://%s-redis:6379/0" (include "authz-sidecar.name" .)) | quote }}
{{- else if eq $r.mode "cluster" }}
redis_cluster_nodes: {{ $r.clusterNodes | toJson }}
{{- else }}
sentinel_nodes: {{ $r.sentinel.nodes | toJson }}
sentinel_service: {{ $r.sentinel.service | quote }}
{{- with $r.sentinel.username }}
sentinel_username: {{ . | quote }}
{{- end }}
{{- if $r.sentinel.passwordSecret.name }}
sentinel_password_file: /run/secrets/authz-redis-sentinel/{{ $r.sentinel.passwordSecret.key }}
{{- end }}
{{- end }}
{{- with $r.username }}
redis_username: {{ . | quote }}
{{- end }}
{{- if $r.passwordSecret.name }}
redis_password_file: /run/secrets/authz-redis/{{ $r.passwordSecret.key }}
{{- end }}
{{- if and $r.tls.enabled (ne $r.mode "single") }}
redis_tls: true
{{- end }}
{{- if $r.tls.caSecret }}
redis_ca_file: /run/secrets/authz-redis-tls/ca.crt
{{- end }}
{{- end -}}
{{- end -}}

{{/* The sidecar's config: the mode's base (files/sidecar-<mode>.yaml), the chart's values, then
sidecar.config merged over it. */}}
{{- define "authz-sidecar.sidecarConfig" -}}
{{- $config := .Files.Get (printf "files/sidecar-%s.yaml" .Values.mode) | fromYaml -}}
{{- $_ := set $config.identity "trust_domains" (list .Values.trustDomain) -}}
{{- $_ := set $config.opa "decision_path" .Values.opa.decisionPath -}}
{{- $_ := set $config "state" (include "authz-sidecar.stateConfig" . | fromYaml) -}}
{{- $_ := set $config "shutdown" (dict "drain_delay_seconds" .Values.sidecar.drain.delaySeconds "drain_timeout_seconds" .Values.sidecar.drain.timeoutSeconds) -}}
{{- if .Values.signingKeys.existingSecret -}}
{{- $_ := set $config "credentials" (dict "keys_dir" "/run/secrets/authz-keys") -}}
{{- end -}}
{{- if eq .Values.mode "istio" -}}
{{- $url := .Values.istio.publicUrl | default (printf "http://%s.%s.svc.cluster.local:9191" (include "authz-sidecar.name" .) .Release.Namespace) -}}
{{- $_ := set $config "approvals" (dict "public_url" $url) -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite $config (deepCopy .Values.sidecar.config)) -}}
{{- end -}}

{{/* OPA's config: files/opa.yaml with the service URLs, bundle and key from opa.*. */}}
{{- define "authz-sidecar.opaConfig" -}}
{{- $config := .Files.Get "files/opa.yaml" | fromYaml -}}
{{- $b := .Values.opa.bundle -}}
{{- $_ := set $config.services.bundles "url" $b.serviceUrl -}}
{{- $_ := set $config.services.decision_logs "url" .Values.opa.decisionLogs.serviceUrl -}}
{{- $_ := set $config.bundles.authz "resource" $b.resource -}}
{{- $_ := set $config.bundles.authz "polling" (dict "min_delay_seconds" (int $b.polling.minDelaySeconds) "max_delay_seconds" (int $b.polling.maxDelaySeconds)) -}}
{{- $_ := set $config.bundles.authz "signing" (dict "keyid" $b.keyId) -}}
{{- $_ := set $config "keys" (dict $b.keyId (dict "algorithm" $b.algorithm)) -}}
{{- toYaml $config -}}
{{- end -}}
