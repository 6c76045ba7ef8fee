{{/* The StatefulSet's name, and the headless Service's: pods are <fullname>-N. */}}
{{- define "proglog.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "proglog.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "proglog.labels" -}}
{{ include "proglog.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* A pod's stable DNS name, with $(POD_NAME) and $(POD_NAMESPACE) expanded by the kubelet. */}}
{{- define "proglog.podHost" -}}
{{- printf "%s.%s.$(POD_NAMESPACE).svc.%s" .pod (include "proglog.fullname" .root) .root.Values.clusterDomain -}}
{{- end -}}
