{{- define "authz-sidecar.probe" -}}
{{- $p := index . 0 -}}
{{- $get := index . 1 -}}
httpGet: {{ $get | toJson }}
{{- range $key, $value := $p }}
{{ $key }}: {{ $value }}
{{- end }}
{{- end -}}
{{/* OPA: the signed bundle from the bundle service, its API on a unix socket in /run/authz. */}}
{{- define "authz-sidecar.opaContainer" -}}
- name: opa
  image: {{ include "authz-sidecar.image" .Values.images.opa }}
  imagePullPolicy: {{ .Values.imagePullPolicy }}
  # A native sidecar: started before the sidecar (and the agent), stopped after them.
  restartPolicy: Always
  args:
  - run
  - --server
  # OPA's API on a unix socket in /run/authz: only the sidecar asks it; the agent can neither
  # read the policy and its data nor run queries. The diagnostic port has /health and /metrics.
  - --addr=unix:///run/authz/opa.sock
  - --unix-socket-perm=660
  - --diagnostic-addr=0.0.0.0:8282
  - --config-file=/etc/opa/opa.yaml
  - --set-file=keys.{{ .Values.opa.bundle.keyId }}.key=/etc/opa/keys/bundle-signing.pub
  - --log-format=json
  # Data kept in OPA's evaluation form: fewer allocations per decision (README "Performance").
  - --optimize-store-for-read-speed
  # No access-log lines per query: each is a decision, in the decision log (README "Performance").
  - --log-level-request=debug
  env:  # the labels of every decision-log event (opa.yaml)
  - name: POD_NAME
    valueFrom: {fieldRef: {fieldPath: metadata.name}}
  - name: POD_NAMESPACE
    valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
  - name: POD_APP
    valueFrom: {fieldRef: {fieldPath: "metadata.labels['app.kubernetes.io/name']"}}
  # Go's runtime (opa.goRuntime: README "Performance"), and a soft memory limit at the container's:
  # with GOGC raised, the collector works harder near the limit instead of OPA being killed at it.
  {{- range $name, $value := .Values.opa.goRuntime }}
  - name: {{ $name }}
    value: {{ $value | quote }}
  {{- end }}
  {{- if not (hasKey .Values.opa.goRuntime "GOMEMLIMIT") }}
  - name: GOMEMLIMIT
    valueFrom: {resourceFieldRef: {resource: limits.memory}}
  {{- end }}
  ports:
  - {name: opa-diag, containerPort: 8282}
  # Started once it answers (the sidecar then starts); ready only with an activated, verified bundle.
  startupProbe: {{- include "authz-sidecar.probe" (list .Values.opa.probes.startup (dict "path" "/health" "port" "opa-diag")) | nindent 4 }}
  livenessProbe: {{- include "authz-sidecar.probe" (list .Values.opa.probes.liveness (dict "path" "/health" "port" "opa-diag")) | nindent 4 }}
  readinessProbe: {{- include "authz-sidecar.probe" (list .Values.opa.probes.readiness (dict "path" "/health?bundles" "port" "opa-diag")) | nindent 4 }}
  volumeMounts:
  - {name: opa-config, mountPath: /etc/opa, readOnly: true}
  - {name: bundle-key, mountPath: /etc/opa/keys, readOnly: true}
  - {name: authz-run, mountPath: /run/authz}
  - {name: opa-service-token, mountPath: /etc/opa/token, readOnly: true}
  resources: {{- toYaml .Values.opa.resources | nindent 4 }}
  securityContext: {{- include "authz-sidecar.containerSecurity" . | nindent 4 }}
{{- end -}}

{{/* authz-sidecar: the check endpoint (a unix socket in /run/authz, or :9191 for the mesh in
istio mode), the agent API, and /healthz /readyz /metrics on :9192. */}}
{{- define "authz-sidecar.sidecarContainer" -}}
{{- $istio := eq .Values.mode "istio" -}}
{{- $r := .Values.state.redis -}}
{{- $redis := eq .Values.state.backend "redis" -}}
- name: authz-sidecar
  image: {{ include "authz-sidecar.image" .Values.images.sidecar }}
  imagePullPolicy: {{ .Values.imagePullPolicy }}
  {{- if not $istio }}
  restartPolicy: Always  # a native sidecar: started before the agent, stopped after it
  {{- end }}
  args: [serve, --config, /etc/authz-sidecar/sidecar.yaml]
  env:
  - {name: SPIFFE_ENDPOINT_SOCKET, value: "unix://{{ include "authz-sidecar.socketDir" . }}/{{ .Values.spiffe.socketName }}"}
  {{- if eq .Values.mode "egress" }}
  # The pod's SPIFFE ID, as SPIRE registers it, for the `pod` identity source.
  - name: POD_NAMESPACE
    valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
  - name: POD_SERVICE_ACCOUNT
    valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}
  - {name: AUTHZ_IDENTITY__POD__SPIFFE_ID, value: "spiffe://{{ .Values.trustDomain }}/ns/$(POD_NAMESPACE)/sa/$(POD_SERVICE_ACCOUNT)"}
  {{- end }}
  ports:
  - {name: authz-admin, containerPort: 9192}
  {{- if $istio }}
  - {name: authz-check, containerPort: 9191}
  {{- end }}
  startupProbe: {{- include "authz-sidecar.probe" (list .Values.sidecar.probes.startup (dict "path" "/healthz" "port" "authz-admin")) | nindent 4 }}
  livenessProbe: {{- include "authz-sidecar.probe" (list .Values.sidecar.probes.liveness (dict "path" "/healthz" "port" "authz-admin")) | nindent 4 }}
  # Ready only when OPA has activated a verified bundle and JWT bundles have arrived; 503 from
  # the first moment of a SIGTERM (it drains, then exits).
  readinessProbe: {{- include "authz-sidecar.probe" (list .Values.sidecar.probes.readiness (dict "path" "/readyz" "port" "authz-admin")) | nindent 4 }}
  volumeMounts:
  - {name: sidecar-config, mountPath: /etc/authz-sidecar, readOnly: true}
  - {name: authz-run, mountPath: /run/authz}
  - {name: spiffe-workload-api, mountPath: {{ include "authz-sidecar.socketDir" . }}, readOnly: true}
  - {name: sidecar-tmp, mountPath: /tmp}
  {{- if ne .Values.mode "egress" }}
  - {name: xfcc-secret, mountPath: /run/secrets/authz, readOnly: true}
  {{- end }}
  {{- if .Values.signingKeys.existingSecret }}
  - {name: signing-keys, mountPath: /run/secrets/authz-keys, readOnly: true}
  {{- end }}
  {{- if and $redis $r.passwordSecret.name }}
  - {name: redis-password, mountPath: /run/secrets/authz-redis, readOnly: true}
  {{- end }}
  {{- if and $redis (eq $r.mode "sentinel") $r.sentinel.passwordSecret.name }}
  - {name: redis-sentinel-password, mountPath: /run/secrets/authz-redis-sentinel, readOnly: true}
  {{- end }}
  {{- if and $redis $r.tls.caSecret }}
  - {name: redis-tls, mountPath: /run/secrets/authz-redis-tls, readOnly: true}
  {{- end }}
  resources: {{- toYaml .Values.sidecar.resources | nindent 4 }}
  securityContext: {{- include "authz-sidecar.containerSecurity" . | nindent 4 }}
{{- end -}}
