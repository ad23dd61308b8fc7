{{/* Name of the chart, overridable. */}}
{{- define "slipway-serving.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name when it already holds the chart's name. */}}
{{- define "slipway-serving.fullname" -}}
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

{{- define "slipway-serving.selectorLabels" -}}
app.kubernetes.io/name: {{ include "slipway-serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "slipway-serving.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "slipway-serving.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: serving
app.kubernetes.io/part-of: slipway
{{- end }}

{{- define "slipway-serving.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "slipway-serving.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image by digest; by tag (or appVersion) only when no digest is given. */}}
{{- define "slipway-serving.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Grace period: preStop + drain + 5 s unless given; a given one must exceed both. */}}
{{- define "slipway-serving.grace" -}}
{{- $need := add .Values.lifecycle.preStopSeconds .Values.lifecycle.drainSeconds }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $need 5 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) (int $need) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be longer than lifecycle.preStopSeconds + lifecycle.drainSeconds (%v): raise it, or leave it empty to compute it" .Values.terminationGracePeriodSeconds $need) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Series selector of this release's targets (a ServiceMonitor sets namespace and service). */}}
{{- define "slipway-serving.selector" -}}
namespace="{{ .Release.Namespace }}", service="{{ include "slipway-serving.fullname" . }}"
{{- end }}
