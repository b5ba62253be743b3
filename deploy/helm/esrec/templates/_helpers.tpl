{{/* Labels every object carries; "name" is the component (esrec-relay, ...). */}}
{{- define "esrec.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/part-of: esrec
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{- end }}

{{- define "esrec.secretName" -}}
{{ .Values.secrets.existingSecret | default (printf "%s-secrets" .Release.Name) }}
{{- end }}

{{/* One esrec container: image, ESREC_* from the ConfigMap and Secret, the CA mount. */}}
{{- define "esrec.container" -}}
- name: {{ .container }}
  image: "{{ .root.Values.image.repository }}:{{ .root.Values.image.tag }}"
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  args: {{ toJson .args }}
  envFrom:
    - configMapRef: {name: {{ .root.Release.Name }}-config}
    - secretRef: {name: {{ include "esrec.secretName" .root }}}
  ports:
    - {name: {{ .portName }}, containerPort: {{ .port }}}
  readinessProbe:  # 503 while a server is retried or nothing serves yet
    httpGet: {path: /healthz, port: {{ .portName }}}
    periodSeconds: {{ .readyPeriod | default 10 }}
  livenessProbe:
    {{- if .live }}
    httpGet: {path: {{ .live }}, port: {{ .portName }}}  # 503 only when the loop stopped
    {{- else }}
    tcpSocket: {port: {{ .portName }}}
    {{- end }}
    periodSeconds: 15
    failureThreshold: 4
  resources: {{ toJson .resources }}
  volumeMounts:
    - {name: cache, mountPath: /var/cache/esrec}  # the image's XDG_CACHE_HOME
  {{- if .root.Values.elasticsearch.caSecret }}
    - {name: es-ca, mountPath: /etc/esrec/ca, readOnly: true}
  {{- end }}
{{- end }}

{{/* The cache: pulled model versions and the towers' kept weights, kept while the pod
lives (a restarted container starts without pulling or checking them again). */}}
{{- define "esrec.volumes" -}}
volumes:
  - name: cache
    emptyDir: {}
{{- if .Values.elasticsearch.caSecret }}
  - name: es-ca
    secret: {secretName: {{ .Values.elasticsearch.caSecret }}}
{{- end }}
{{- end }}
