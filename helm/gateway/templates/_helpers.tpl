{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release already contains it. */}}
{{- define "gateway.fullname" -}}
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

{{- define "gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gateway.labels" -}}
helm.sh/chart: {{ include "gateway.chart" . }}
{{ include "gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: websocket-gateway
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the pods read: the operator's or the chart's. */}}
{{- define "gateway.secretName" -}}
{{- default (include "gateway.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
terminationGracePeriodSeconds: preStop sleep + the gateway's own drain
(max of deadline and delay + period, rounded up to seconds) + margin, unless set.
*/}}
{{- define "gateway.terminationGracePeriodSeconds" -}}
{{- $l := .Values.lifecycle }}
{{- if not (kindIs "invalid" $l.terminationGracePeriodSeconds) }}
{{- int64 $l.terminationGracePeriodSeconds }}
{{- else }}
{{- $d := .Values.config.drain }}
{{- $drainMs := max (int64 $d.deadlineMs) (add (int64 $d.delayMs) (int64 $d.periodMs)) }}
{{- $drainS := div (add $drainMs 999) 1000 }}
{{- add (int64 $l.preStopSleepSeconds) $drainS (int64 $l.terminationGraceMarginSeconds) }}
{{- end }}
{{- end }}

{{/* TOML string / array of strings (JSON escapes are valid TOML basic strings). */}}
{{- define "gateway.tomlString" -}}
{{- toJson (toString .) }}
{{- end }}
