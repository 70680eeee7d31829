{{/* Chart name, at most 63 characters. */}}
{{- define "progress-sync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: the release name, with the chart name unless it holds it. */}}
{{- define "progress-sync.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "progress-sync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "progress-sync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "progress-sync.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "progress-sync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "progress-sync.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret that holds DATABASE_URL and HUBSPOT_ACCESS_TOKEN. */}}
{{- define "progress-sync.secretName" -}}
{{- if .Values.existingSecret -}}
{{- .Values.existingSecret -}}
{{- else -}}
{{- include "progress-sync.fullname" . -}}
{{- end -}}
{{- end -}}

{{- define "progress-sync.databaseUrlKey" -}}
{{- if .Values.existingSecret -}}{{ .Values.existingSecretKeys.databaseUrl }}{{- else -}}DATABASE_URL{{- end -}}
{{- end -}}

{{- define "progress-sync.hubspotTokenKey" -}}
{{- if .Values.existingSecret -}}{{ .Values.existingSecretKeys.hubspotAccessToken }}{{- else -}}HUBSPOT_ACCESS_TOKEN{{- end -}}
{{- end -}}

{{- define "progress-sync.alertWebhookKey" -}}
{{- if .Values.existingSecret -}}{{ .Values.existingSecretKeys.alertWebhook }}{{- else -}}ALERT_WEBHOOK{{- end -}}
{{- end -}}

{{/* Stops the install with one clear line when the values cannot work. */}}
{{- define "progress-sync.validate" -}}
{{- $fromValues := or .Values.secrets.databaseUrl .Values.secrets.hubspotAccessToken -}}
{{- if and .Values.existingSecret $fromValues -}}
{{- fail "progress-sync: set either existingSecret or secrets.databaseUrl/secrets.hubspotAccessToken, not both" -}}
{{- end -}}
{{- if not .Values.existingSecret -}}
{{- if not .Values.secrets.databaseUrl -}}
{{- fail "progress-sync: no DATABASE_URL: set existingSecret (a Secret with keys DATABASE_URL and HUBSPOT_ACCESS_TOKEN) or secrets.databaseUrl" -}}
{{- end -}}
{{- if not .Values.secrets.hubspotAccessToken -}}
{{- fail "progress-sync: no HUBSPOT_ACCESS_TOKEN: set existingSecret (a Secret with keys DATABASE_URL and HUBSPOT_ACCESS_TOKEN) or secrets.hubspotAccessToken" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.alerts.enabled (not .Values.existingSecret) (not .Values.secrets.alertWebhook) -}}
{{- fail "progress-sync: alerts.enabled needs the webhook's URL: set secrets.alertWebhook, or existingSecret with the key existingSecretKeys.alertWebhook" -}}
{{- end -}}
{{- if and .Values.secrets.alertWebhook (not .Values.alerts.enabled) -}}
{{- fail "progress-sync: secrets.alertWebhook is set but alerts.enabled is false: set alerts.enabled: true, or remove the URL" -}}
{{- end -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (int .Values.graceSeconds) -}}
{{- fail (printf "progress-sync: terminationGracePeriodSeconds (%d) must exceed graceSeconds (%d), or the pod is killed while it pushes what is due" (int .Values.terminationGracePeriodSeconds) (int .Values.graceSeconds)) -}}
{{- end -}}
{{- end -}}

{{/* PromQL matchers for this release's series. */}}
{{- define "progress-sync.promSelector" -}}
{{- if .Values.metrics.prometheusRule.selector -}}
{{- .Values.metrics.prometheusRule.selector -}}
{{- else -}}
{{- printf "namespace=%q, job=%q" .Release.Namespace (include "progress-sync.fullname" .) -}}
{{- end -}}
{{- end -}}
