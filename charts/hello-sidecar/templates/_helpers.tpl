{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "hello-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "hello-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "hello-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels of every resource. */}}
{{- define "hello-sidecar.labels" -}}
helm.sh/chart: {{ include "hello-sidecar.chart" . }}
{{ include "hello-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels shared by every resource of the release. */}}
{{- define "hello-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hello-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
"<fullname>-<suffix>" within 63 characters: the full name is cut, never the suffix, so that names with different
suffixes stay different however long the release name (Helm allows 53 characters). Called with (list . suffix).
*/}}
{{- define "hello-sidecar.suffixedName" -}}
{{- $suffix := index . 1 }}
{{- printf "%s-%s" (include "hello-sidecar.fullname" (index . 0) | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{/* Backend resource name. */}}
{{- define "hello-sidecar.backendName" -}}
{{- include "hello-sidecar.suffixedName" (list . "backend") }}
{{- end }}

{{/* Client resource name. */}}
{{- define "hello-sidecar.clientName" -}}
{{- include "hello-sidecar.suffixedName" (list . "client") }}
{{- end }}

{{/* The client's service account. */}}
{{- define "hello-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hello-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference. */}}
{{- define "hello-sidecar.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The sidecar's --target: this chart's backend Service, port "grpc", unless overridden. */}}
{{- define "hello-sidecar.target" -}}
{{- default (printf "kubernetes:///%s.%s:grpc" (include "hello-sidecar.backendName" .) .Release.Namespace) .Values.sidecar.target }}
{{- end }}

{{/* Every target the sidecar watches (--target and each route's), as a JSON list. */}}
{{- define "hello-sidecar.targets" -}}
{{- $targets := list (include "hello-sidecar.target" .) }}
{{- range .Values.sidecar.routes }}
{{- $targets = append $targets .target }}
{{- end }}
{{- $targets | toJson }}
{{- end }}

{{/*
The namespaces whose EndpointSlices the sidecar watches, as a sorted JSON list: from each
kubernetes:///svc.ns:port target the part after the first dot, or the release namespace (where the pod runs)
when a target names none. static:/// targets need no RBAC.
*/}}
{{- define "hello-sidecar.targetNamespaces" -}}
{{- $namespaces := list }}
{{- range include "hello-sidecar.targets" . | fromJsonArray }}
{{- if hasPrefix "kubernetes:///" . }}
{{- $service := regexReplaceAll ":[^:]*$" (trimPrefix "kubernetes:///" .) "" }}
{{- $parts := splitList "." $service }}
{{- if gt (len $parts) 1 }}
{{- $namespaces = append $namespaces (index $parts 1) }}
{{- else }}
{{- $namespaces = append $namespaces $.Release.Namespace }}
{{- end }}
{{- end }}
{{- end }}
{{- $namespaces | uniq | sortAlpha | toJson }}
{{- end }}

{{/*
Name of the RBAC objects in namespace $ns: the release's full name in its own namespace; elsewhere the full name,
the release namespace and 8 hex digits of sha256("<release namespace>/<full name>"), so that releases whose
names read the same once joined by "-" (release a in b-c, release a-b in c), or are cut at 63 characters, still
get objects of their own.
*/}}
{{- define "hello-sidecar.rbacName" -}}
{{- $root := index . 0 }}{{ $ns := index . 1 }}
{{- $fullname := include "hello-sidecar.fullname" $root }}
{{- if eq $ns $root.Release.Namespace }}
{{- $fullname }}
{{- else }}
{{- $hash := printf "%s/%s" $root.Release.Namespace $fullname | sha256sum | trunc 8 }}
{{- printf "%s-%s" (printf "%s-%s" $fullname $root.Release.Namespace | trunc 54 | trimSuffix "-") $hash }}
{{- end }}
{{- end }}

{{/* "true" when a template context is this chart's (Chart.yaml's hello-sidecar/chart annotation). */}}
{{- define "hello-sidecar.isThisChart" -}}
{{- eq (index .Chart.Annotations "hello-sidecar/chart") "hello-sidecar" }}
{{- end }}

{{/*
The sidecar container, as a native sidecar (an init container with restartPolicy: Always): it starts before the
app and stops after it. Every flag comes from this chart's .Values.sidecar. Use it from a chart that depends on
this one, with that chart's own context:
  initContainers:
    {{- include "hello-sidecar.sidecarContainer" . | nindent 4 }}
Called from another chart, `.` holds that chart's .Values and .Chart, so the container is rendered from this
chart's context instead, found in .Subcharts by the annotation in Chart.yaml (so an `alias:` works too).
*/}}
{{- define "hello-sidecar.sidecarContainer" -}}
{{- $ctx := . }}
{{- if ne (include "hello-sidecar.isThisChart" .) "true" }}
{{- $ctx = dict }}
{{- range $_, $sub := (.Subcharts | default dict) }}
{{- if eq (include "hello-sidecar.isThisChart" $sub) "true" }}{{ $ctx = $sub }}{{ end }}
{{- end }}
{{- if not $ctx }}
{{- fail (printf "hello-sidecar.sidecarContainer: chart %s does not depend on hello-sidecar (none in .Subcharts)" .Chart.Name) }}
{{- end }}
{{- end }}
{{- with $ctx }}
{{- $s := .Values.sidecar -}}
- name: hello-sidecar
  image: {{ include "hello-sidecar.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  restartPolicy: Always
  args:
    - sidecar
    {{- range $s.routes }}
    {{- if eq .service "hello.v1.HelloService" }}
    {{- fail "sidecar.routes: hello.v1.HelloService is routed by sidecar.target (HELLO_SIDECAR_TARGET); set sidecar.target instead of a route for it" }}
    {{- end }}
    - {{ printf "--route=%s=%s" .service .target | quote }}
    {{- end }}
    {{- range $s.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    - name: HELLO_SIDECAR_TARGET
      value: {{ include "hello-sidecar.target" . | quote }}
    {{- with $s.serviceConfig }}
    - name: HELLO_SIDECAR_SERVICE_CONFIG
      value: {{ . | quote }}
    {{- end }}
    - name: HELLO_SIDECAR_LISTEN
      value: {{ $s.listen | quote }}
    - name: HELLO_SIDECAR_ADMIN
      value: {{ printf "0.0.0.0:%v" $s.adminPort | quote }}
    {{- with $s.descriptorSet }}
    - name: HELLO_SIDECAR_DESCRIPTOR_SET
      value: {{ . | quote }}
    {{- end }}
    {{- with $s.kubeconfig }}
    - name: HELLO_SIDECAR_KUBECONFIG
      value: {{ . | quote }}
    {{- end }}
    - name: HELLO_SIDECAR_DEFAULT_TIMEOUT
      value: {{ $s.defaultTimeout | quote }}
    - name: HELLO_SIDECAR_FAILFAST_TIMEOUT
      value: {{ $s.failfastTimeout | quote }}
    - name: HELLO_SIDECAR_CONNECT_TIMEOUT
      value: {{ $s.connectTimeout | quote }}
    - name: HELLO_SIDECAR_MAX_CONCURRENT_CALLS
      value: {{ int64 $s.maxConcurrentCalls | quote }}
    - name: HELLO_SIDECAR_MAX_MESSAGE_BYTES
      value: {{ int64 $s.maxMessageBytes | quote }}
    - name: HELLO_SIDECAR_RETRY_BUDGET
      value: {{ $s.retryBudget | quote }}
    - name: HELLO_SIDECAR_EJECT_AFTER
      value: {{ int64 $s.ejectAfter | quote }}
    - name: HELLO_SIDECAR_MAX_HEADER_BYTES
      value: {{ int64 $s.maxHeaderBytes | quote }}
    - name: HELLO_SIDECAR_KEEPALIVE_INTERVAL
      value: {{ $s.keepaliveInterval | quote }}
    - name: HELLO_SIDECAR_EWMA_DECAY
      value: {{ $s.ewmaDecay | quote }}
    {{- with $s.accessLog }}
    - name: HELLO_SIDECAR_ACCESS_LOG
      value: {{ . | quote }}
    {{- end }}
    - name: HELLO_SIDECAR_IP_FAMILY
      value: {{ $s.ipFamily | quote }}
    - name: HELLO_SIDECAR_THREADS
      value: {{ $s.threads | quote }}
    - name: HELLO_SIDECAR_DRAIN_TIMEOUT
      value: {{ $s.drainTimeout | quote }}
    - name: HELLO_SIDECAR_LOG_FORMAT
      value: {{ .Values.logFormat | quote }}
    - name: RUST_LOG
      value: {{ .Values.logLevel | quote }}
    {{- with $s.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with include "hello-sidecar.mtls.sidecarEnv" . }}{{ . | trim | nindent 4 }}{{- end }}
  {{- with include "hello-sidecar.sidecarVolumeMounts" . }}{{ . | trim | nindent 2 }}{{- end }}
  ports:
    - name: admin
      containerPort: {{ $s.adminPort }}
      protocol: TCP
  startupProbe:
    httpGet: {path: /ready, port: admin}
    periodSeconds: 1
    failureThreshold: 60
  readinessProbe:
    httpGet: {path: /ready, port: admin}
    periodSeconds: 5
  livenessProbe:
    httpGet: {path: /live, port: admin}
    periodSeconds: 10
  resources:
    {{- toYaml $s.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
{{- end }}
{{- end }}

{{/* Pod-level scheduling settings shared by every pod. */}}
{{- define "hello-sidecar.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Where sidecar.descriptorSetConfigMap is mounted in the sidecar container. */}}
{{- define "hello-sidecar.descriptorSetDir" -}}
/etc/hello-sidecar/descriptor-sets
{{- end }}

{{/* The sidecar container's mounts: its mTLS certificate, the descriptor sets' ConfigMap. */}}
{{- define "hello-sidecar.sidecarVolumeMounts" -}}
{{- $items := include "hello-sidecar.mtls.volumeMountItems" . | trim }}
{{- if or $items .Values.sidecar.descriptorSetConfigMap }}
volumeMounts:
{{- with $items }}
{{ . | indent 2 }}
{{- end }}
{{- if .Values.sidecar.descriptorSetConfigMap }}
  - name: descriptor-sets
    mountPath: {{ include "hello-sidecar.descriptorSetDir" . }}
    readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/* Pod volumes of a client pod (the client Deployment, the helm test pod): the sidecar's certificate and its
descriptor sets' ConfigMap. */}}
{{- define "hello-sidecar.clientVolumes" -}}
{{- $items := include "hello-sidecar.mtls.clientVolumeItems" . | trim }}
{{- if or $items .Values.sidecar.descriptorSetConfigMap }}
volumes:
{{- with $items }}
{{ . | indent 2 }}
{{- end }}
{{- with .Values.sidecar.descriptorSetConfigMap }}
  - name: descriptor-sets
    configMap:
      name: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}
