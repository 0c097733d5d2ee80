{{/* Chart name and version, as used by the helm.sh/chart label. */}}
{{- define "vipfarm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels common to every object. */}}
{{- define "vipfarm.labels" -}}
helm.sh/chart: {{ include "vipfarm.chart" . }}
app.kubernetes.io/name: vipfarm
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vipfarm
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "operator"). */}}
{{- define "vipfarm.selectorLabels" -}}
app.kubernetes.io/name: vipfarm
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The container image. */}}
{{- define "vipfarm.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Name of the heartbeat Secret. */}}
{{- define "vipfarm.heartbeatSecretName" -}}
{{- required "heartbeat.secretName must be set" .Values.heartbeat.secretName -}}
{{- end -}}
