{{/* The release's name for every object: <release>-umarvel-search, or the release name
when it already says umarvel-search. */}}
{{- define "umarvel-search.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select one component's pods. Call with (dict "root" $ "component" "api"). */}}
{{- define "umarvel-search.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of a component's objects. */}}
{{- define "umarvel-search.labels" -}}
{{ include "umarvel-search.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: umarvel-search
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* An image reference: repository and tag, the chart's appVersion when the tag is empty.
Call with one of .Values.image.api or .Values.image.worker and the root. */}}
{{- define "umarvel-search.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* One variable read from the Secret. Call with (dict "root" $ "name" VAR "key" KEY). */}}
{{- define "umarvel-search.secretVar" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ required "secret.name: the name of an existing Secret" .root.Values.secret.name }}
      key: {{ .key }}
{{- end -}}

{{/* The connections of the API and the workers: database, Redis, media keys and the
Milvus token, each from the Secret. */}}
{{- define "umarvel-search.connectionEnv" -}}
{{- $keys := .Values.secret.keys -}}
{{ include "umarvel-search.secretVar" (dict "root" . "name" "UMARVEL_DATABASE_URL" "key" (required "secret.keys.databaseUrl" $keys.databaseUrl)) }}
{{ include "umarvel-search.secretVar" (dict "root" . "name" "UMARVEL_REDIS_URL" "key" (required "secret.keys.redisUrl" $keys.redisUrl)) }}
{{ include "umarvel-search.secretVar" (dict "root" . "name" "UMARVEL_MEDIA_S3_ACCESS_KEY" "key" (required "secret.keys.s3AccessKey" $keys.s3AccessKey)) }}
{{ include "umarvel-search.secretVar" (dict "root" . "name" "UMARVEL_MEDIA_S3_SECRET_KEY" "key" (required "secret.keys.s3SecretKey" $keys.s3SecretKey)) }}
{{- if $keys.milvusToken }}
{{ include "umarvel-search.secretVar" (dict "root" . "name" "UMARVEL_MILVUS_TOKEN" "key" $keys.milvusToken) }}
{{- end }}
{{- end -}}

{{/* The pod-level fields every pod shares. */}}
{{- define "umarvel-search.podCommon" -}}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* Restarts the pods that read the ConfigMap when it changes. */}}
{{- define "umarvel-search.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end -}}
