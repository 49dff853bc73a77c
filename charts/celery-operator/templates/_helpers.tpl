{{/* Names, labels and the image reference, shared by every template. */}}

{{- define "celery-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The full name of every object: release name + chart name, unless one already contains the other. */}}
{{- define "celery-operator.fullname" -}}
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

{{- define "celery-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* What selects the operator pod: stable across upgrades (Deployment selectors are immutable). */}}
{{- define "celery-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "celery-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The standard labels on every object of the chart but the CRDs: those of the operator. */}}
{{- define "celery-operator.labels" -}}
helm.sh/chart: {{ include "celery-operator.chart" . }}
{{ include "celery-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: celery-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The CRDs' labels: the standard ones, with component "crds". */}}
{{- define "celery-operator.crdLabels" -}}
helm.sh/chart: {{ include "celery-operator.chart" . }}
app.kubernetes.io/name: {{ include "celery-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: crds
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: celery-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "celery-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "celery-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "celery-operator.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
The namespaced rules of the operator, used by the ClusterRole (all namespaces) and by the Role in
each watched namespace alike. Derived from the API server's audit log of the operator running under
this chart (tests/e2e/test_chart_rbac.py) and from operator/celery_operator/kube.py; no wildcards.
*/}}
{{- define "celery-operator.namespacedRules" -}}
# TaskQueues: kopf lists and watches them and patches its bookkeeping annotations on them (the
# handlers get the object from the watch: no "get"); the reconciler and the scaler
# server-side-apply their status.
- apiGroups: ["celery-operator.dev"]
  resources: ["taskqueues"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["celery-operator.dev"]
  resources: ["taskqueues/status"]
  verbs: ["patch"]
# PeriodicJobs (the beat issue): the same, for the schedules the TaskQueues' beats carry.
- apiGroups: ["celery-operator.dev"]
  resources: ["periodicjobs"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["celery-operator.dev"]
  resources: ["periodicjobs/status"]
  verbs: ["patch"]
# The children of a TaskQueue: kopf indexes them (list, watch), the reconciler reads one by name
# before writing (get: never adopt what it does not own), server-side-applies it (patch; a
# server-side apply that creates the object is authorized as "create" as well, so both) and
# deletes what is no longer wanted (a queue removed, Flower disabled, persistence dropped).
# Secrets: the `<tq>-broker` Secret, and the user's Secret named in spec.broker.urlSecretRef.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "secrets", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# NetworkPolicies: the TaskQueue's own (spec.networkPolicy), handled as the children above.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The scaler sets the replicas of autoscaled worker Deployments through the scale subresource,
# under its own field manager.
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
# Pods of our children: kopf indexes the worker pods (list, watch); the reconciler lists a
# TaskQueue's pods by label while one of its Deployments has not rolled out, to name the kubelet's
# reason when they cannot run (image pull, config, crash loop, OOM); the scaler merge-patches the
# controller.kubernetes.io/pod-deletion-cost annotation on worker pods, so scale-down removes idle
# workers first, and deletes a worker pod found stuck (workers.health.action Restart).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "patch", "delete"]
# The worker pods' readiness gate celery-operator.dev/consuming, set from the workers' heartbeats.
- apiGroups: [""]
  resources: ["pods/status"]
  verbs: ["patch"]
# Events on TaskQueues and PeriodicJobs, on state changes (kopf's own event posting is off); the
# reconciler lists the Events about the broker's volume claim while it is Pending, to name why it
# cannot bind (the binder's or the provisioner's message).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
{{- end -}}

{{/* Cluster-scoped reads kopf makes in both modes. */}}
{{- define "celery-operator.clusterRules" -}}
# kopf watches the CRDs, to notice when the TaskQueue/PeriodicJob resources appear or change (e.g.
# CRDs established after the operator started) without a restart.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end -}}

{{/* Cluster-scoped reads kopf makes only when it watches a list of namespaces. */}}
{{- define "celery-operator.namespaceDiscoveryRules" -}}
# kopf lists and watches namespaces to match --namespace against the namespaces that exist (it
# starts and stops its per-namespace watches as they come and go). Names only: no access to
# anything inside another namespace.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end -}}
