package deploy

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"maps"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

const (
	chartDir       = "helm/progress-sync"
	releaseName    = "focus"
	releaseNS      = "sync"
	fullname       = "focus-progress-sync"
	metricsPort    = 9187
	testDBURL      = "postgresql://progress_sync:s3cret-pw@db.abcdefgh.supabase.co:5432/postgres?sslmode=require"
	testToken      = "fake-test-token-not-a-secret"
	nonRootUID     = 65532
	chartSecretKey = "DATABASE_URL"
)

// minimalValues is the least an install needs: the defaults plus the two secrets.
const minimalValues = `
secrets:
  databaseUrl: ` + testDBURL + `
  hubspotAccessToken: ` + testToken + `
`

// customValues exercises the non-default paths.
const customValues = `
image:
  repository: registry.example.com/focus/progress-sync
  digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
existingSecret: progress-sync-credentials
existingSecretKeys:
  databaseUrl: database-url
  hubspotAccessToken: hubspot-token
config:
  rateLimit: 190/10s
  logLevel: debug
graceSeconds: 30
terminationGracePeriodSeconds: 90
extraArgs: ["--recheck-unmatched=30m", "--daily-limit-pause=10m"]
statusPage: {enabled: false}
extraEnv:
  - name: GOMEMLIMIT
    value: 400MiB
resources:
  requests: {cpu: 100m, memory: 128Mi}
  limits: {cpu: "2", memory: 512Mi}
nodeSelector: {workload: sync}
tolerations:
  - {key: dedicated, operator: Equal, value: sync, effect: NoSchedule}
podAnnotations: {team: growth}
metrics:
  serviceMonitor:
    enabled: true
    labels: {release: kube-prometheus-stack}
  prometheusRule:
    enabled: true
    labels: {release: kube-prometheus-stack}
    alerts:
      slotLag: {bytes: 268435456}
`

// manifests are the rendered objects of one release, decoded strictly: a misspelt field in a
// template fails the test instead of being dropped by the API server.
type manifests struct {
	deployment     *appsv1.Deployment
	service        *corev1.Service
	secret         *corev1.Secret
	configMap      *corev1.ConfigMap
	serviceMonitor *serviceMonitor
	prometheusRule *prometheusRule
	networkPolicy  *networkingv1.NetworkPolicy
	notes          string
	kinds          []string
}

// serviceMonitor is the part of monitoring.coreos.com/v1 ServiceMonitor the chart uses.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Interval      string `json:"interval"`
			ScrapeTimeout string `json:"scrapeTimeout"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// prometheusRule is monitoring.coreos.com/v1 PrometheusRule.
type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []rule `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

type rule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

// render renders the chart as `helm install focus deploy/helm/progress-sync -n sync -f -`
// would, with values (YAML) over the chart's defaults, and the schema checked.
func render(t *testing.T, values string) (map[string]string, error) {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	vals, err := chartutil.ReadValues([]byte(values))
	if err != nil {
		t.Fatalf("values: %v", err)
	}
	opts := chartutil.ReleaseOptions{Name: releaseName, Namespace: releaseNS, Revision: 1, IsInstall: true}
	top, err := chartutil.ToRenderValues(ch, vals, opts, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	// Strict: a template that reads a value the chart does not define fails.
	return engine.Engine{Strict: true}.Render(ch, top)
}

func mustRender(t *testing.T, values string) manifests {
	t.Helper()
	files, err := render(t, values)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	var m manifests
	for _, name := range slices.Sorted(maps.Keys(files)) {
		content := files[name]
		switch {
		case strings.HasSuffix(name, "NOTES.txt"):
			m.notes = content
			continue
		case strings.HasPrefix(path.Base(name), "_"):
			continue
		}
		for _, doc := range releaseutil.SplitManifests(content) {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			var tm metav1.TypeMeta
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Fatalf("%s: %v\n%s", name, err, doc)
			}
			m.kinds = append(m.kinds, tm.Kind)
			var into any
			switch tm.APIVersion + "/" + tm.Kind {
			case "apps/v1/Deployment":
				m.deployment = &appsv1.Deployment{}
				into = m.deployment
			case "v1/Service":
				m.service = &corev1.Service{}
				into = m.service
			case "v1/Secret":
				m.secret = &corev1.Secret{}
				into = m.secret
			case "v1/ConfigMap":
				m.configMap = &corev1.ConfigMap{}
				into = m.configMap
			case "monitoring.coreos.com/v1/ServiceMonitor":
				m.serviceMonitor = &serviceMonitor{}
				into = m.serviceMonitor
			case "networking.k8s.io/v1/NetworkPolicy":
				m.networkPolicy = &networkingv1.NetworkPolicy{}
				into = m.networkPolicy
			case "monitoring.coreos.com/v1/PrometheusRule":
				m.prometheusRule = &prometheusRule{}
				into = m.prometheusRule
			default:
				t.Fatalf("%s: unexpected %s %s", name, tm.APIVersion, tm.Kind)
			}
			if err := decodeStrict(doc, into); err != nil {
				t.Fatalf("%s: %v\n%s", name, err, doc)
			}
		}
	}
	if m.deployment == nil || m.service == nil {
		t.Fatalf("rendered %v, want at least a Deployment and a Service", m.kinds)
	}
	return m
}

// decodeStrict decodes a manifest as the API server does with field validation Strict:
// field names are case-sensitive, and unknown or duplicate fields are errors. (encoding/json
// would match readOnlyRootFileSystem to readOnlyRootFilesystem; the API server drops it.)
func decodeStrict(doc string, into any) error {
	j, err := yaml.YAMLToJSON([]byte(doc))
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(j, into, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

func TestHelmDefaults(t *testing.T) {
	m := mustRender(t, minimalValues)
	slices.Sort(m.kinds)
	if !slices.Equal(m.kinds, []string{"Deployment", "Secret", "Service"}) {
		t.Errorf("rendered %v, want Deployment, Secret, Service (monitoring off by default)", m.kinds)
	}
	d := m.deployment
	checkDeployment(t, d, 20)
	checkService(t, m.service, d)
	if args := container(t, d).Args; slices.Contains(args, "--no-status-page") {
		t.Errorf("args %q: the status page is on by default", args)
	}

	// The chart-made Secret holds both values, and the pod reads them from it.
	if m.secret == nil {
		t.Fatal("no Secret rendered from secrets.*")
	}
	if m.secret.Name != fullname || m.secret.Namespace != releaseNS {
		t.Errorf("Secret %s/%s, want %s/%s", m.secret.Namespace, m.secret.Name, releaseNS, fullname)
	}
	for key, want := range map[string]string{"DATABASE_URL": testDBURL, "HUBSPOT_ACCESS_TOKEN": testToken} {
		if got := string(m.secret.Data[key]); got != want {
			t.Errorf("Secret data %s = %q, want %q", key, got, want)
		}
	}
	c := container(t, d)
	checkSecretRef(t, c, "DATABASE_URL", fullname, "DATABASE_URL")
	checkTokenFile(t, d, fullname, "HUBSPOT_ACCESS_TOKEN")
	if d.Spec.Template.Annotations["checksum/secret"] == "" {
		t.Error("no checksum/secret annotation: a changed secret would not roll the pod")
	}

	// Every setting of the binary is wired, with the defaults of docs/contract.md §4.
	env := envMap(c)
	for _, name := range settingEnvs(t) {
		// The token comes as HUBSPOT_ACCESS_TOKEN_FILE; the alert webhook as a file, when alerts are on.
		if _, ok := env[name]; !ok && name != "HUBSPOT_ACCESS_TOKEN" && !strings.HasPrefix(name, "PROGRESS_SYNC_ALERT_WEBHOOK") {
			t.Errorf("the container does not set %s", name)
		}
	}
	for name, want := range map[string]string{
		"PROGRESS_SYNC_LISTEN":      "0.0.0.0:9187",
		"HUBSPOT_BASE_URL":          "https://api.hubapi.com",
		"HUBSPOT_API_VERSION":       "2026-09",
		"PROGRESS_SYNC_SLOT":        "progress_sync",
		"PROGRESS_SYNC_PUBLICATION": "progress_sync",
		"PROGRESS_SYNC_DEBOUNCE":    "3s",
		"PROGRESS_SYNC_MAX_DELAY":   "30s",
		"PROGRESS_SYNC_RATE_LIMIT":  "100/10s",
		"PROGRESS_SYNC_RECONCILE":   "24h",
		"PROGRESS_SYNC_MODEL":       "course_progress",
		"LOG_LEVEL":                 "info",
		"LOG_FORMAT":                "json",
		"PROGRESS_SYNC_ALERT_AFTER": "5m",
	} {
		if ev, ok := env[name]; !ok || ev.Value != want {
			t.Errorf("%s = %+v, want %q", name, ev, want)
		}
	}

	// Secrets never appear in plain text outside the Secret.
	files, _ := render(t, minimalValues)
	for name, content := range files {
		if strings.HasSuffix(name, "secret.yaml") {
			continue
		}
		if strings.Contains(content, "s3cret-pw") || strings.Contains(content, testToken) ||
			strings.Contains(content, base64.StdEncoding.EncodeToString([]byte(testToken))) {
			t.Errorf("%s holds a secret value", name)
		}
	}
	if !strings.Contains(m.notes, "backfill --dry-run") || !strings.Contains(m.notes, "existingSecret") {
		t.Errorf("NOTES.txt should warn about the first backfill and suggest existingSecret:\n%s", m.notes)
	}
}

func TestHelmCustomValues(t *testing.T) {
	m := mustRender(t, customValues)
	if m.secret != nil {
		t.Error("a Secret was rendered although existingSecret is set")
	}
	d := m.deployment
	checkDeployment(t, d, 30)
	checkService(t, m.service, d)
	c := container(t, d)
	checkSecretRef(t, c, "DATABASE_URL", "progress-sync-credentials", "database-url")
	checkTokenFile(t, d, "progress-sync-credentials", "hubspot-token")

	if want := "registry.example.com/focus/progress-sync@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"; c.Image != want {
		t.Errorf("image %q, want %q", c.Image, want)
	}
	if want := []string{"run", "--grace=30s", "--no-status-page", "--recheck-unmatched=30m", "--daily-limit-pause=10m"}; !slices.Equal(c.Args, want) {
		t.Errorf("args %q, want %q", c.Args, want)
	}
	env := envMap(c)
	if env["PROGRESS_SYNC_RATE_LIMIT"].Value != "190/10s" || env["LOG_LEVEL"].Value != "debug" || env["GOMEMLIMIT"].Value != "400MiB" {
		t.Errorf("config or extraEnv not passed: %+v", c.Env)
	}
	for res, want := range map[string]string{"requests.cpu": "100m", "requests.memory": "128Mi", "limits.cpu": "2", "limits.memory": "512Mi"} {
		list := c.Resources.Requests
		if strings.HasPrefix(res, "limits.") {
			list = c.Resources.Limits
		}
		got := list[corev1.ResourceName(res[strings.Index(res, ".")+1:])]
		if got.Cmp(resource.MustParse(want)) != 0 {
			t.Errorf("resources %s = %s, want %s", res, got.String(), want)
		}
	}
	spec := d.Spec.Template.Spec
	if spec.NodeSelector["workload"] != "sync" || len(spec.Tolerations) != 1 || spec.Tolerations[0].Key != "dedicated" {
		t.Errorf("nodeSelector %v / tolerations %v not passed", spec.NodeSelector, spec.Tolerations)
	}
	if d.Spec.Template.Annotations["team"] != "growth" {
		t.Errorf("podAnnotations not passed: %v", d.Spec.Template.Annotations)
	}

	sm := m.serviceMonitor
	if sm == nil {
		t.Fatal("no ServiceMonitor although metrics.serviceMonitor.enabled")
	}
	if sm.Labels["release"] != "kube-prometheus-stack" {
		t.Errorf("ServiceMonitor labels %v lack release=kube-prometheus-stack", sm.Labels)
	}
	for k, v := range sm.Spec.Selector.MatchLabels {
		if m.service.Labels[k] != v {
			t.Errorf("ServiceMonitor selects %s=%s, which the Service does not carry", k, v)
		}
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints %+v, want port metrics, path /metrics", sm.Spec.Endpoints)
	}

	checkAlerts(t, m.prometheusRule)
}

// checkAlerts asserts the alerts the runbook documents, each on the metric it is about.
func checkAlerts(t *testing.T, pr *prometheusRule) {
	t.Helper()
	if pr == nil {
		t.Fatal("no PrometheusRule although metrics.prometheusRule.enabled")
	}
	if pr.Labels["release"] != "kube-prometheus-stack" {
		t.Errorf("PrometheusRule labels %v lack release=kube-prometheus-stack", pr.Labels)
	}
	rules := map[string]rule{}
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			rules[r.Alert] = r
		}
	}
	sel := fmt.Sprintf(`namespace=%q, job=%q`, releaseNS, fullname)
	want := map[string][]string{
		"ProgressSyncDown":                          {"up{" + sel + "}"},
		"ProgressSyncSlotLagHigh":                   {"progress_sync_slot_lag_bytes{" + sel + "} > 268435456"},
		"ProgressSyncSlotWALNotReserved":            {"progress_sync_slot_wal_status{" + sel + `, status!="reserved"} == 1`},
		"ProgressSyncSlotLost":                      {`progress_sync_slot_wal_status{` + sel + `, status=~"unreserved|lost"} == 1`},
		"ProgressSyncNoRecentFlush":                 {"progress_sync_last_flush_timestamp_seconds{" + sel + "} > 900", "progress_sync_pending_students{" + sel + "} > 0"},
		"ProgressSyncUnmatchedGrowing":              {"delta(progress_sync_problem_students{" + sel + `, kind="unmatched"}[6h]) > 25`},
		"ProgressSyncHubSpotDailyLimitReached":      {`increase(progress_sync_hubspot_rate_limited_total{` + sel + `, policy="DAILY"}[30m]) > 0`},
		"ProgressSyncCommitToHubSpotSlow":           {"progress_sync_commit_to_hubspot_seconds_bucket{" + sel + "}"},
		"ProgressSyncHubSpotOverwritesSyncedValues": {"increase(progress_sync_reconcile_drift_total{" + sel + "}[3d])) > 50"},
		"ProgressSyncReconcileOverdue":              {"time() - progress_sync_reconcile_last_complete_timestamp_seconds{" + sel + "} > 259200"},
	}
	for name, parts := range want {
		r, ok := rules[name]
		if !ok {
			t.Errorf("alert %s is missing (have %v)", name, slices.Sorted(maps.Keys(rules)))
			continue
		}
		for _, p := range parts {
			if !strings.Contains(r.Expr, p) {
				t.Errorf("alert %s: expr %q lacks %q", name, r.Expr, p)
			}
		}
		if s := r.Labels["severity"]; s != "warning" && s != "critical" {
			t.Errorf("alert %s: severity %q", name, s)
		}
		if r.Annotations["summary"] == "" || r.Annotations["description"] == "" ||
			!strings.HasPrefix(r.Annotations["runbook_url"], "https://") || !strings.Contains(r.Annotations["runbook_url"], "runbook.md#") {
			t.Errorf("alert %s: annotations %v need summary, description and runbook_url", name, r.Annotations)
		}
		if strings.Count(r.Expr, "(") != strings.Count(r.Expr, ")") || strings.Count(r.Expr, "{") != strings.Count(r.Expr, "}") {
			t.Errorf("alert %s: unbalanced expression %q", name, r.Expr)
		}
		if r.For != "" {
			if _, err := time.ParseDuration(r.For); err != nil {
				t.Errorf("alert %s: for %q: %v", name, r.For, err)
			}
		}
	}
	// Prometheus templates in annotations survive Helm's templating.
	if s := rules["ProgressSyncSlotLagHigh"].Annotations["summary"]; !strings.Contains(s, "{{ $value | humanize1024 }}") {
		t.Errorf("slot lag summary %q lost its Prometheus template", s)
	}
}

func checkDeployment(t *testing.T, d *appsv1.Deployment, graceSeconds int) {
	t.Helper()
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 {
		t.Errorf("replicas %v, want 1: one consumer per replication slot", d.Spec.Replicas)
	}
	if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType || d.Spec.Strategy.RollingUpdate != nil {
		t.Errorf("strategy %+v, want Recreate: a rollout must not run two consumers", d.Spec.Strategy)
	}
	if d.Namespace != releaseNS {
		t.Errorf("namespace %q, want %q", d.Namespace, releaseNS)
	}
	for k, v := range d.Spec.Selector.MatchLabels {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template's labels", k, v)
		}
	}
	spec := d.Spec.Template.Spec
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != nonRootUID ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext %+v, want runAsNonRoot, runAsUser %d, seccomp RuntimeDefault", psc, nonRootUID)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("the service account token is mounted; the pod never calls the Kubernetes API")
	}
	if spec.TerminationGracePeriodSeconds == nil || *spec.TerminationGracePeriodSeconds <= int64(graceSeconds) {
		t.Errorf("terminationGracePeriodSeconds %v, want more than --grace %ds", spec.TerminationGracePeriodSeconds, graceSeconds)
	}

	c := container(t, d)
	if len(c.Args) < 2 || c.Args[0] != "run" || c.Args[1] != "--grace="+strconv.Itoa(graceSeconds)+"s" {
		t.Errorf("args %q, want run --grace=%ds ...", c.Args, graceSeconds)
	}
	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Fatal("container has no securityContext")
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Error("root filesystem is writable")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Error("privilege escalation is allowed")
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != nonRootUID:
		t.Errorf("container runs as %v (nonRoot %v), want %d", sc.RunAsUser, sc.RunAsNonRoot, nonRootUID)
	case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
		t.Errorf("capabilities %+v, want drop [ALL] and none added", sc.Capabilities)
	case sc.Privileged != nil && *sc.Privileged:
		t.Error("container is privileged")
	}

	if len(c.Ports) != 1 || c.Ports[0].Name != "metrics" || c.Ports[0].ContainerPort != metricsPort {
		t.Errorf("ports %+v, want metrics %d", c.Ports, metricsPort)
	}
	if v := envMap(c)["PROGRESS_SYNC_LISTEN"].Value; v != fmt.Sprintf("0.0.0.0:%d", metricsPort) {
		t.Errorf("PROGRESS_SYNC_LISTEN %q: the probes cannot reach a container that listens on loopback", v)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("no HTTP %s probe", p.name)
			continue
		}
		port := p.probe.HTTPGet.Port
		if p.probe.HTTPGet.Path != p.path || (port.String() != "metrics" && port.IntValue() != metricsPort) {
			t.Errorf("%s probe %s on port %s, want %s on metrics (%d)", p.name, p.probe.HTTPGet.Path, port.String(), p.path, metricsPort)
		}
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := c.Resources.Requests[r]; !ok || q.IsZero() {
			t.Errorf("no %s request", r)
		}
	}
	if q, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok || q.IsZero() {
		t.Error("no memory limit")
	}
	// A read-only root needs a writable /tmp for anything that writes temporary files.
	mounted := false
	for _, vm := range c.VolumeMounts {
		mounted = mounted || vm.MountPath == "/tmp"
	}
	if !mounted {
		t.Error("no writable /tmp")
	}
}

func checkService(t *testing.T, s *corev1.Service, d *appsv1.Deployment) {
	t.Helper()
	if len(s.Spec.Ports) != 1 || s.Spec.Ports[0].Port != metricsPort || s.Spec.Ports[0].TargetPort.String() != "metrics" {
		t.Errorf("service ports %+v, want %d -> metrics", s.Spec.Ports, metricsPort)
	}
	if len(s.Spec.Selector) == 0 {
		t.Fatal("service has no selector")
	}
	for k, v := range s.Spec.Selector {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("service selects %s=%s, which the pod does not carry", k, v)
		}
	}
	if !s.Spec.PublishNotReadyAddresses {
		t.Error("publishNotReadyAddresses is off: metrics would vanish exactly when /readyz fails")
	}
}

func container(t *testing.T, d *appsv1.Deployment) corev1.Container {
	t.Helper()
	cs := d.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("%d containers, want 1", len(cs))
	}
	return cs[0]
}

func envMap(c corev1.Container) map[string]corev1.EnvVar {
	m := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		m[e.Name] = e
	}
	return m
}

func checkSecretRef(t *testing.T, c corev1.Container, env, secret, key string) {
	t.Helper()
	e, ok := envMap(c)[env]
	if !ok || e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
		t.Errorf("%s is not read from a Secret: %+v", env, e)
		return
	}
	ref := e.ValueFrom.SecretKeyRef
	if ref.Name != secret || ref.Key != key || (ref.Optional != nil && *ref.Optional) {
		t.Errorf("%s from secret %s key %s (optional %v), want secret %s key %s", env, ref.Name, ref.Key, ref.Optional, secret, key)
	}
}

// checkTokenFile asserts that the HubSpot key reaches the container as a file from the Secret's
// key, mounted read-only and named by HUBSPOT_ACCESS_TOKEN_FILE, and never as a variable.
func checkTokenFile(t *testing.T, d *appsv1.Deployment, secret, key string) {
	t.Helper()
	checkSecretFile(t, d, "HUBSPOT_ACCESS_TOKEN", secret, key)
}

// checkSecretFile checks that the secret setting env comes as a file (env_FILE) read from
// key of the Secret secret, in a read-only mount kubelet keeps up to date.
func checkSecretFile(t *testing.T, d *appsv1.Deployment, env, secret, key string) {
	t.Helper()
	c := container(t, d)
	vars := envMap(c)
	if _, ok := vars[env]; ok {
		t.Errorf("%s is set: it must come as a file", env)
	}
	path := vars[env+"_FILE"].Value
	var mount *corev1.VolumeMount
	for i, vm := range c.VolumeMounts {
		if strings.HasPrefix(path, vm.MountPath+"/") {
			mount = &c.VolumeMounts[i]
		}
	}
	if mount == nil || !mount.ReadOnly || mount.SubPath != "" {
		t.Fatalf("%s_FILE=%q is not in a read-only mount without subPath (which kubelet would never update): %+v", env, path, c.VolumeMounts)
	}
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Name != mount.Name {
			continue
		}
		s := v.Secret
		if s == nil || s.SecretName != secret || len(s.Items) != 1 || s.Items[0].Key != key ||
			mount.MountPath+"/"+s.Items[0].Path != path || s.DefaultMode == nil || *s.DefaultMode&0o007 != 0 {
			t.Errorf("volume %s: %+v, want secret %s key %s at %s, not world-readable", v.Name, s, secret, key, path)
		}
		return
	}
	t.Errorf("no volume %s", mount.Name)
}

// TestHelmRefusesBadValues: an install that cannot work stops with one clear line.
func TestHelmModelFile(t *testing.T) {
	const model = "model: mine\nstudents:\n  table: public.users\n  id: id\n  email: email\nproperties: |\n  SELECT id, 0 AS total_xp FROM public.users WHERE id = ANY($1::uuid[])\n"
	values := minimalValues + "modelFile: |\n" + indent(model, "  ")
	m := mustRender(t, values)
	if m.configMap == nil || strings.TrimSpace(m.configMap.Data["model.yaml"]) != strings.TrimSpace(model) {
		t.Fatalf("the model's ConfigMap holds %+v, want the file as given", m.configMap)
	}
	d := m.deployment
	c := container(t, d)
	if ev := envMap(c)["PROGRESS_SYNC_MODEL"]; ev.Value != "/etc/progress-sync/model/model.yaml" {
		t.Fatalf("PROGRESS_SYNC_MODEL = %q, want the mounted file", ev.Value)
	}
	mounted := false
	for _, vm := range c.VolumeMounts {
		mounted = mounted || (vm.MountPath == "/etc/progress-sync/model" && vm.ReadOnly)
	}
	volume := false
	for _, v := range d.Spec.Template.Spec.Volumes {
		volume = volume || (v.ConfigMap != nil && v.ConfigMap.Name == m.configMap.Name)
	}
	if !mounted || !volume || d.Spec.Template.Annotations["checksum/model"] == "" {
		t.Fatalf("the model is not mounted read-only from its ConfigMap with a checksum (mounted %v, volume %v, annotations %v)", mounted, volume, d.Spec.Template.Annotations)
	}
	other := mustRender(t, minimalValues+"modelFile: |\n"+indent(strings.Replace(model, "0 AS", "1 AS", 1), "  "))
	if other.deployment.Spec.Template.Annotations["checksum/model"] == d.Spec.Template.Annotations["checksum/model"] {
		t.Fatal("an edited model does not roll the pod")
	}
	builtin := mustRender(t, minimalValues+"config:\n  model: lesson_progress\n")
	if ev := envMap(container(t, builtin.deployment))["PROGRESS_SYNC_MODEL"]; ev.Value != "lesson_progress" || builtin.configMap != nil {
		t.Fatalf("config.model lesson_progress: PROGRESS_SYNC_MODEL = %q, ConfigMap %v", ev.Value, builtin.configMap)
	}
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n"+prefix) + "\n"
}

func TestHelmRefusesBadValues(t *testing.T) {
	for _, tc := range []struct{ name, values, want string }{
		{"no secrets", ``, "no DATABASE_URL"},
		{"no token", "secrets: {databaseUrl: '" + testDBURL + "'}", "no HUBSPOT_ACCESS_TOKEN"},
		{"both sources", minimalValues + "existingSecret: creds\n", "not both"},
		{"grace too long", minimalValues + "graceSeconds: 60\nterminationGracePeriodSeconds: 60\n", "must exceed graceSeconds"},
		{"bad slot name", minimalValues + "config: {slot: Progress-Sync}\n", "slot"},
		{"bad log format", minimalValues + "config: {logFormat: xml}\n", "logFormat"},
		{"alerts without a webhook", minimalValues + "alerts: {enabled: true}\n", "alerts.enabled needs the webhook's URL"},
		{"a webhook with alerts off", minimalValues + "  alertWebhook: https://hooks.slack.com/services/T/B/x\n", "alerts.enabled is false"},
		{"a webhook that is no URL", minimalValues + "  alertWebhook: hooks.slack.com\nalerts: {enabled: true}\n", "alertWebhook"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, tc.values)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("render: %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

// TestHelmLint runs Helm's own linter (`helm lint --strict`) on the defaults and on the
// custom values.
func TestHelmLint(t *testing.T) {
	// Helm's engine logs each `fail` it skips while linting; the messages are checked below.
	log.SetOutput(io.Discard)
	defer log.SetOutput(os.Stderr)
	for name, values := range map[string]string{"defaults": "", "minimal": minimalValues, "custom": customValues} {
		vals, err := chartutil.ReadValues([]byte(values))
		if err != nil {
			t.Fatal(err)
		}
		l := lint.All(chartDir, vals, releaseNS, false)
		for _, msg := range l.Messages {
			if msg.Severity >= support.WarningSev {
				t.Errorf("%s: helm lint: %s", name, msg)
			} else {
				t.Logf("%s: helm lint: %s", name, msg)
			}
		}
	}
}

// TestHelmDashboard renders the Grafana dashboard ConfigMap (off by default) and checks that it
// carries the sidecar's label and a dashboard whose every panel queries something.
func TestHelmDashboard(t *testing.T) {
	files, err := render(t, minimalValues)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(files["progress-sync/templates/dashboard.yaml"]) != "" {
		t.Fatal("the dashboard is rendered although dashboards.enabled is false")
	}
	files, err = render(t, minimalValues+"dashboards:\n  enabled: true\n")
	if err != nil {
		t.Fatal(err)
	}
	var cm corev1.ConfigMap
	if err := yaml.Unmarshal([]byte(files["progress-sync/templates/dashboard.yaml"]), &cm); err != nil {
		t.Fatal(err)
	}
	if cm.Labels["grafana_dashboard"] != "1" || cm.Namespace != releaseNS {
		t.Fatalf("ConfigMap %s/%s labels %v, want grafana_dashboard=1", cm.Namespace, cm.Name, cm.Labels)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal([]byte(cm.Data["progress-sync.json"]), &dash); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	if dash.UID == "" || len(dash.Panels) < 10 {
		t.Fatalf("dashboard uid %q with %d panels", dash.UID, len(dash.Panels))
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 || !strings.Contains(p.Targets[0].Expr, "progress_sync_") {
			t.Errorf("panel %q queries no progress-sync metric: %+v", p.Title, p.Targets)
		}
	}
}

// TestHelmNetworkPolicy: off by default; on, the pod's port answers only the peers the values
// name, on the container's port, and outgoing traffic is left alone. On without peers is
// refused: an empty from would let every pod in.
func TestHelmNetworkPolicy(t *testing.T) {
	if m := mustRender(t, minimalValues); m.networkPolicy != nil {
		t.Fatal("a NetworkPolicy by default")
	}
	m := mustRender(t, minimalValues+`
networkPolicy:
  enabled: true
  from:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: monitoring
      podSelector:
        matchLabels:
          app.kubernetes.io/name: prometheus
`)
	np := m.networkPolicy
	if np == nil {
		t.Fatal("no NetworkPolicy with networkPolicy.enabled")
	}
	if np.Namespace != releaseNS || !maps.Equal(np.Spec.PodSelector.MatchLabels, m.deployment.Spec.Selector.MatchLabels) {
		t.Errorf("NetworkPolicy %s selects %v, want the Deployment's pods %v in %s", np.Namespace, np.Spec.PodSelector.MatchLabels, m.deployment.Spec.Selector.MatchLabels, releaseNS)
	}
	if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) {
		t.Errorf("policy types %v, want Ingress only (the service must reach PostgreSQL and HubSpot)", np.Spec.PolicyTypes)
	}
	if len(np.Spec.Ingress) != 1 || len(np.Spec.Ingress[0].From) != 1 || len(np.Spec.Ingress[0].Ports) != 1 {
		t.Fatalf("ingress %+v, want one rule: the named peer, one port", np.Spec.Ingress)
	}
	rule := np.Spec.Ingress[0]
	peer := rule.From[0]
	if peer.NamespaceSelector == nil || peer.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "monitoring" ||
		peer.PodSelector == nil || peer.PodSelector.MatchLabels["app.kubernetes.io/name"] != "prometheus" {
		t.Errorf("peer %+v, want Prometheus pods in the monitoring namespace", peer)
	}
	port := container(t, m.deployment).Ports[0]
	if p := rule.Ports[0].Port; p == nil || p.StrVal != port.Name {
		t.Errorf("port %v, want the container's port %q", p, port.Name)
	}
	if _, err := render(t, minimalValues+"networkPolicy:\n  enabled: true\n"); err == nil || !strings.Contains(err.Error(), "networkPolicy.from") {
		t.Errorf("enabled without peers rendered (err %v), want a refusal naming networkPolicy.from", err)
	}
}

// TestHelmAlerts: with alerts on, the webhook's URL comes from the Secret as a file, never in
// the pod's environment or another manifest; off, nothing of it is rendered.
func TestHelmAlerts(t *testing.T) {
	const hook = "https://hooks.slack.com/services/T000/B000/not-a-real-secret"
	if c := container(t, mustRender(t, minimalValues).deployment); envMap(c)["PROGRESS_SYNC_ALERT_WEBHOOK_FILE"].Value != "" {
		t.Error("alerts are on by default")
	}
	values := minimalValues + "  alertWebhook: " + hook + "\nalerts: {enabled: true, after: 10m}\n"
	m := mustRender(t, values)
	if got := string(m.secret.Data["ALERT_WEBHOOK"]); got != hook {
		t.Errorf("Secret ALERT_WEBHOOK = %q, want the URL", got)
	}
	checkSecretFile(t, m.deployment, "PROGRESS_SYNC_ALERT_WEBHOOK", m.secret.Name, "ALERT_WEBHOOK")
	if after := envMap(container(t, m.deployment))["PROGRESS_SYNC_ALERT_AFTER"].Value; after != "10m" {
		t.Errorf("PROGRESS_SYNC_ALERT_AFTER = %q, want 10m", after)
	}
	files, _ := render(t, values)
	for name, content := range files {
		if !strings.HasSuffix(name, "secret.yaml") && strings.Contains(content, "not-a-real-secret") {
			t.Errorf("%s holds the webhook's URL", name)
		}
	}
	existing := strings.Replace(customValues, "  hubspotAccessToken: hubspot-token\n", "  hubspotAccessToken: hubspot-token\n  alertWebhook: slack-hook\n", 1) + "alerts: {enabled: true}\n"
	checkSecretFile(t, mustRender(t, existing).deployment, "PROGRESS_SYNC_ALERT_WEBHOOK", "progress-sync-credentials", "slack-hook")
}
