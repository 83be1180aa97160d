{{/*
mTLS mode (values: mtls.*): cert-manager issues one Certificate per workload, named by its service account as a
SPIFFE ID (spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT). The client's sidecar presents its certificate
and checks the backend's identity; the backend pods run `hello-sidecar inbound` in front of the app, which then
listens on loopback only. Everything here renders nothing while mtls.enabled is false.
*/}}

{{/* Where the workload's certificate secret is mounted (tls.crt, tls.key, ca.crt as cert-manager writes them). */}}
{{- define "hello-sidecar.mtls.dir" -}}/var/run/secrets/hello-sidecar/mtls{{- end }}

{{/* The backend's service account: its identity. */}}
{{- define "hello-sidecar.mtls.backendServiceAccount" -}}
{{- default (include "hello-sidecar.backendName" .) .Values.mtls.backendServiceAccount }}
{{- end }}

{{/* SPIFFE ID of the client (its service account). */}}
{{- define "hello-sidecar.mtls.clientId" -}}
{{- printf "spiffe://%s/ns/%s/sa/%s" .Values.mtls.trustDomain .Release.Namespace (include "hello-sidecar.serviceAccountName" .) }}
{{- end }}

{{/* SPIFFE ID of the backend (its service account). */}}
{{- define "hello-sidecar.mtls.backendId" -}}
{{- printf "spiffe://%s/ns/%s/sa/%s" .Values.mtls.trustDomain .Release.Namespace (include "hello-sidecar.mtls.backendServiceAccount" .) }}
{{- end }}

{{/* Secret names of the two certificates. */}}
{{- define "hello-sidecar.mtls.clientSecret" -}}
{{- include "hello-sidecar.suffixedName" (list . "client-mtls") }}
{{- end }}
{{- define "hello-sidecar.mtls.backendSecret" -}}
{{- include "hello-sidecar.suffixedName" (list . "backend-mtls") }}
{{- end }}

{{/* The sidecar's extra env: its certificate and the backend's expected identity. */}}
{{- define "hello-sidecar.mtls.sidecarEnv" -}}
{{- if .Values.mtls.enabled }}
- name: HELLO_SIDECAR_TLS_CERT
  value: {{ include "hello-sidecar.mtls.dir" . }}/tls.crt
- name: HELLO_SIDECAR_TLS_KEY
  value: {{ include "hello-sidecar.mtls.dir" . }}/tls.key
- name: HELLO_SIDECAR_TLS_CA
  value: {{ include "hello-sidecar.mtls.dir" . }}/ca.crt
- name: HELLO_SIDECAR_TLS_SERVER_IDENTITY
  value: {{ include "hello-sidecar.mtls.backendId" . | quote }}
{{- end }}
{{- end }}

{{/* The certificate's mount, in a container. */}}
{{- define "hello-sidecar.mtls.volumeMounts" -}}
{{- with include "hello-sidecar.mtls.volumeMountItems" . }}
volumeMounts:
{{ . | trim | indent 2 }}
{{- end }}
{{- end }}

{{/* The certificate's mount as list items (the sidecar adds its own, see hello-sidecar.sidecarVolumeMounts). */}}
{{- define "hello-sidecar.mtls.volumeMountItems" -}}
{{- if .Values.mtls.enabled }}
- name: mtls
  mountPath: {{ include "hello-sidecar.mtls.dir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* The certificate's volume of a client pod, as list items (see hello-sidecar.clientVolumes). */}}
{{- define "hello-sidecar.mtls.clientVolumeItems" -}}
{{- if .Values.mtls.enabled }}
- name: mtls
  secret:
    secretName: {{ include "hello-sidecar.mtls.clientSecret" . }}
{{- end }}
{{- end }}

{{/* Pod-level additions of the backend: its own service account (its identity) and its certificate. */}}
{{- define "hello-sidecar.mtls.backendPod" -}}
{{- if .Values.mtls.enabled }}
serviceAccountName: {{ include "hello-sidecar.mtls.backendServiceAccount" . }}
volumes:
  - name: mtls
    secret:
      secretName: {{ include "hello-sidecar.mtls.backendSecret" . }}
{{- end }}
{{- end }}

{{/* The app's probes when it listens on loopback only: one real call from inside the container. */}}
{{- define "hello-sidecar.mtls.appProbes" -}}
readinessProbe:
  exec:
    command: [/usr/local/bin/hello-sidecar, call, {{ printf "--addr=127.0.0.1:%v" .Values.backend.port | quote }}, --name=probe, --timeout=1s]
  periodSeconds: 2
  timeoutSeconds: 2
livenessProbe:
  exec:
    command: [/usr/local/bin/hello-sidecar, call, {{ printf "--addr=127.0.0.1:%v" .Values.backend.port | quote }}, --name=probe, --timeout=1s]
  periodSeconds: 10
  timeoutSeconds: 2
{{- end }}

{{/* The inbound proxy container of a backend pod: TLS on the pod's port, the app on loopback behind it. */}}
{{- define "hello-sidecar.mtls.inboundContainer" -}}
{{- if .Values.mtls.enabled }}
- name: inbound
  image: {{ include "hello-sidecar.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["inbound"]
  env:
    - name: HELLO_SIDECAR_LISTEN
      value: {{ printf "0.0.0.0:%v" .Values.mtls.inboundPort | quote }}
    - name: HELLO_SIDECAR_ADMIN
      value: {{ printf "0.0.0.0:%v" .Values.mtls.inboundAdminPort | quote }}
    - name: HELLO_SIDECAR_FORWARD
      value: {{ printf "127.0.0.1:%v" .Values.backend.port | quote }}
    - name: HELLO_SIDECAR_TLS_CERT
      value: {{ include "hello-sidecar.mtls.dir" . }}/tls.crt
    - name: HELLO_SIDECAR_TLS_KEY
      value: {{ include "hello-sidecar.mtls.dir" . }}/tls.key
    - name: HELLO_SIDECAR_TLS_CA
      value: {{ include "hello-sidecar.mtls.dir" . }}/ca.crt
    - name: HELLO_SIDECAR_ALLOW
      value: {{ join "," (concat (list (include "hello-sidecar.mtls.clientId" .)) .Values.mtls.allow) | quote }}
    - name: HELLO_SIDECAR_DRAIN_TIMEOUT
      value: {{ .Values.backend.drainTimeout | quote }}
    - name: HELLO_SIDECAR_LOG_FORMAT
      value: {{ .Values.logFormat | quote }}
    - name: RUST_LOG
      value: {{ .Values.logLevel | quote }}
  ports:
    - name: grpc-mtls
      containerPort: {{ .Values.mtls.inboundPort }}
      protocol: TCP
    - name: inbound-admin
      containerPort: {{ .Values.mtls.inboundAdminPort }}
      protocol: TCP
  readinessProbe:
    httpGet: {path: /ready, port: inbound-admin}
    periodSeconds: 5
  livenessProbe:
    httpGet: {path: /live, port: inbound-admin}
    periodSeconds: 10
  {{- with include "hello-sidecar.mtls.volumeMounts" . }}{{ . | trim | nindent 2 }}{{- end }}
  resources:
    {{- toYaml .Values.mtls.inboundResources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
{{- end }}
{{- end }}
