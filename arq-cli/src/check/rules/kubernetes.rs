//! kubernetes: the manifests under `deploy/k8s/` (every `*.yaml`/`*.yml` except
//! `kustomization.yaml`, each document on its own) run workloads hardened, sized, probed and
//! pinned, with the platform's HPA, PDB and a NetworkPolicy, and no removed API versions.
//!
//! YAML is parsed with `serde_norway` (the maintained fork of serde_yaml). Documents are split
//! on `---` lines first so each keeps its line range; a finding points at the first line of its
//! document that names the key it is about (or the document's first line).

use serde_norway::Value;

use crate::check::registry::{Rule, Severity};
use crate::check::suppress::Suppression;
use crate::check::{Ctx, Finding, SourceFile};

pub(crate) const RULES: &[Rule] = &[
    Rule::new(
        "kubernetes-parses",
        Severity::Error,
        "Every manifest under deploy/k8s is valid YAML with apiVersion and kind.",
        "Fix the syntax error at the reported line.",
    )
    .input(),
    Rule::new(
        "kubernetes-run-as-non-root",
        Severity::Error,
        "Every container runs as non-root (runAsNonRoot: true on the pod or container).",
        "securityContext: { runAsNonRoot: true, runAsUser: 65532 }",
    )
    .security("7.0"),
    Rule::new(
        "kubernetes-read-only-root-fs",
        Severity::Error,
        "Every container has a read-only root filesystem.",
        "securityContext: { readOnlyRootFilesystem: true } (mount an emptyDir where the service must write).",
    )
    .security("6.0"),
    Rule::new(
        "kubernetes-privilege-escalation",
        Severity::Error,
        "Every container sets allowPrivilegeEscalation: false.",
        "securityContext: { allowPrivilegeEscalation: false }",
    )
    .security("7.0"),
    Rule::new(
        "kubernetes-capabilities",
        Severity::Error,
        "Every container drops ALL capabilities.",
        "securityContext: { capabilities: { drop: [ALL] } }",
    )
    .security("6.0"),
    Rule::new(
        "kubernetes-resources",
        Severity::Error,
        "Every container has CPU and memory requests and limits.",
        "resources: { requests: { cpu: 100m, memory: 128Mi }, limits: { cpu: 500m, memory: 256Mi } }",
    ),
    Rule::new(
        "kubernetes-probes",
        Severity::Error,
        "Every container of a long-running workload has a readiness and a liveness probe.",
        "readinessProbe: { httpGet: { path: /health/ready, port: http } } and livenessProbe on /health/live.",
    ),
    Rule::new(
        "kubernetes-image-pinned",
        Severity::Error,
        "Every image is pinned: a digest, or a tag with a version number; never latest or no tag.",
        "image: registry/name:1.2.3 or registry/name@sha256:...",
    )
    .security("5.0"),
    Rule::new(
        "kubernetes-hpa",
        Severity::Error,
        "Every Deployment has a HorizontalPodAutoscaler with the platform's numbers (default min 2, max 10, CPU 70 %, memory 80 %).",
        "Add an autoscaling/v2 HorizontalPodAutoscaler whose scaleTargetRef names the Deployment.",
    ),
    Rule::new(
        "kubernetes-pdb",
        Severity::Error,
        "Every Deployment has a PodDisruptionBudget selecting its pods with the platform's minAvailable (default 1).",
        "Add a policy/v1 PodDisruptionBudget with minAvailable: 1 and the Deployment's pod labels.",
    ),
    Rule::new(
        "kubernetes-network-policy",
        Severity::Error,
        "Every Deployment's pods are selected by a NetworkPolicy.",
        "Add a networking.k8s.io/v1 NetworkPolicy whose podSelector matches the pods (default deny, then allow).",
    )
    .security("5.5"),
    Rule::new(
        "kubernetes-removed-api",
        Severity::Error,
        "No manifest uses an API version that Kubernetes has removed.",
        "Move to the stable version (apps/v1, policy/v1, autoscaling/v2, networking.k8s.io/v1, batch/v1).",
    ),
    Rule::new(
        "kubernetes-service-account-token",
        Severity::Error,
        "Pods do not automount the service-account token (automountServiceAccountToken: false).",
        "Set automountServiceAccountToken: false on the pod spec.",
    )
    .security("5.0"),
];

/// The annotation prefix of suppressions: `arq.dev/check-ignore.<rule>: "<reason>"`.
pub(crate) const IGNORE_ANNOTATION: &str = "arq.dev/check-ignore.";

/// One YAML document of a manifest.
#[derive(Debug, Clone)]
pub(crate) struct Doc {
    pub(crate) path: String,
    pub(crate) start: u32,
    pub(crate) end: u32,
    lines: Vec<String>,
    pub(crate) value: Value,
}

impl Doc {
    pub(crate) fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or("")
    }
    pub(crate) fn name(&self) -> Option<&str> {
        self.value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
    }
    /// The first line of the document naming `key` (after `from`, a line inside the document),
    /// or the document's first line.
    fn line_of(&self, key: &str, from: u32) -> u32 {
        let skip = from.saturating_sub(self.start) as usize;
        self.lines
            .iter()
            .enumerate()
            .skip(skip)
            .find(|(_, l)| {
                let t = l.trim_start().trim_start_matches("- ");
                t.starts_with(&format!("{key}:"))
            })
            .map_or(self.start.max(from), |(i, _)| {
                self.start + u32::try_from(i).unwrap_or(0)
            })
    }
}

fn manifests(ctx: &Ctx) -> impl Iterator<Item = &SourceFile> {
    ctx.files_where(|p| {
        p.starts_with("deploy/k8s/")
            && (p.ends_with(".yaml") || p.ends_with(".yml"))
            && !p.ends_with("kustomization.yaml")
            && !p.ends_with("kustomization.yml")
    })
}

fn split(f: &SourceFile) -> Vec<(u32, u32, Vec<String>)> {
    let mut out = Vec::new();
    let mut cur: Vec<String> = Vec::new();
    let mut start = 1u32;
    for (i, l) in f.text.lines().enumerate() {
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if l.starts_with("---") {
            if !cur.is_empty() {
                out.push((start, n - 1, std::mem::take(&mut cur)));
            }
            start = n + 1;
        } else {
            cur.push(l.to_owned());
        }
    }
    if !cur.is_empty() {
        let end = start + u32::try_from(cur.len()).unwrap_or(0) - 1;
        out.push((start, end, cur));
    }
    out
}

fn parse_all(ctx: &Ctx) -> (Vec<Doc>, Vec<Finding>) {
    let mut docs = Vec::new();
    let mut errs = Vec::new();
    for f in manifests(ctx) {
        for (start, end, lines) in split(f) {
            let body = lines.join("\n");
            if body
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
            {
                continue;
            }
            match serde_norway::from_str::<Value>(&body) {
                Ok(value) => {
                    let has = |k: &str| value.get(k).and_then(Value::as_str).is_some();
                    if !has("apiVersion") || !has("kind") {
                        errs.push(Finding::new(
                            "kubernetes-parses",
                            &f.rel,
                            start,
                            "document has no apiVersion or kind".to_owned(),
                        ));
                        continue;
                    }
                    docs.push(Doc {
                        path: f.rel.clone(),
                        start,
                        end,
                        lines,
                        value,
                    });
                }
                Err(e) => {
                    let line = e
                        .location()
                        .map_or(start, |l| start + u32::try_from(l.line()).unwrap_or(1) - 1);
                    errs.push(Finding::new(
                        "kubernetes-parses",
                        &f.rel,
                        line,
                        format!("not valid YAML: {e}"),
                    ));
                }
            }
        }
    }
    (docs, errs)
}

/// Every parsed document under deploy/k8s.
pub(crate) fn documents(ctx: &Ctx) -> Vec<Doc> {
    parse_all(ctx).0
}

/// `arq.dev/check-ignore.<rule>` annotations: each covers its own document.
pub(crate) fn suppressions(ctx: &Ctx) -> Vec<Suppression> {
    let mut out = Vec::new();
    for d in documents(ctx) {
        let Some(ann) = d
            .value
            .get("metadata")
            .and_then(|m| m.get("annotations"))
            .and_then(Value::as_mapping)
        else {
            continue;
        };
        for (k, v) in ann {
            let Some(rule) = k.as_str().and_then(|k| k.strip_prefix(IGNORE_ANNOTATION)) else {
                continue;
            };
            out.push(Suppression {
                rule: rule.to_owned(),
                reason: v.as_str().map(str::to_owned),
                origin_path: d.path.clone(),
                origin_line: d
                    .line_of(&format!("{IGNORE_ANNOTATION}{rule}"), d.start)
                    .max(
                        d.lines
                            .iter()
                            .position(|l| l.contains(IGNORE_ANNOTATION) && l.contains(rule))
                            .map_or(d.start, |i| d.start + u32::try_from(i).unwrap_or(0)),
                    ),
                path: Some(d.path.clone()),
                lines: Some((d.start, d.end)),
            });
        }
    }
    out
}

/// apiVersion/kind pairs Kubernetes removed (1.16, 1.22, 1.25, 1.26).
const REMOVED: &[(&str, &str)] = &[
    ("extensions/v1beta1", ""),
    ("apps/v1beta1", ""),
    ("apps/v1beta2", ""),
    ("policy/v1beta1", ""),
    ("autoscaling/v2beta1", ""),
    ("autoscaling/v2beta2", ""),
    ("networking.k8s.io/v1beta1", ""),
    ("batch/v1beta1", "CronJob"),
    ("rbac.authorization.k8s.io/v1beta1", ""),
    ("admissionregistration.k8s.io/v1beta1", ""),
    ("apiextensions.k8s.io/v1beta1", ""),
    ("storage.k8s.io/v1beta1", "CSIDriver"),
    ("flowcontrol.apiserver.k8s.io/v1beta1", ""),
];

fn pod_spec(v: &Value) -> Option<&Value> {
    let spec = v.get("spec")?;
    match v.get("kind").and_then(Value::as_str)? {
        "Pod" => Some(spec),
        "CronJob" => spec
            .get("jobTemplate")?
            .get("spec")?
            .get("template")?
            .get("spec"),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            spec.get("template")?.get("spec")
        }
        _ => None,
    }
}

fn pod_labels(v: &Value) -> Option<&serde_norway::Mapping> {
    v.get("spec")?
        .get("template")?
        .get("metadata")?
        .get("labels")?
        .as_mapping()
}

fn selects(selector: Option<&Value>, labels: Option<&serde_norway::Mapping>) -> bool {
    let Some(sel) = selector else { return false };
    let want = sel.get("matchLabels").and_then(Value::as_mapping);
    match (want, labels) {
        (None, _) => sel.as_mapping().is_none_or(|m| m.is_empty()), // `podSelector: {}` selects all
        (Some(w), Some(l)) => !w.is_empty() && w.iter().all(|(k, v)| l.get(k) == Some(v)),
        (Some(w), None) => w.is_empty(),
    }
}

fn truthy(v: Option<&Value>) -> Option<bool> {
    v.and_then(Value::as_bool)
}

fn num(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

fn image_pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) => tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
        None => false,
    }
}

pub(crate) fn check(ctx: &Ctx, out: &mut Vec<Finding>) {
    let (docs, errs) = parse_all(ctx);
    out.extend(errs);
    for d in &docs {
        let api = d
            .value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        if REMOVED
            .iter()
            .any(|(a, k)| *a == api && (k.is_empty() || *k == d.kind()))
        {
            out.push(Finding::new(
                "kubernetes-removed-api",
                &d.path,
                d.line_of("apiVersion", d.start),
                format!(
                    "{} {} uses removed API version {api}",
                    d.kind(),
                    d.name().unwrap_or("?")
                ),
            ));
        }
        workload(d, out);
    }
    let hpa = ctx.settings.hpa;
    for d in docs.iter().filter(|d| d.kind() == "Deployment") {
        let name = d.name().unwrap_or("?");
        let labels = pod_labels(&d.value);
        let what = format!("Deployment {name}");
        // HPA.
        let hpas: Vec<&Doc> = docs
            .iter()
            .filter(|h| h.kind() == "HorizontalPodAutoscaler")
            .filter(|h| {
                h.value
                    .get("spec")
                    .and_then(|s| s.get("scaleTargetRef"))
                    .and_then(|r| r.get("name"))
                    .and_then(Value::as_str)
                    == Some(name)
            })
            .collect();
        match hpas.first() {
            None => out.push(Finding::new(
                "kubernetes-hpa",
                &d.path,
                d.start,
                format!("{what} has no HorizontalPodAutoscaler"),
            )),
            Some(h) => {
                let spec = h.value.get("spec");
                let min = num(spec.and_then(|s| s.get("minReplicas")));
                let max = num(spec.and_then(|s| s.get("maxReplicas")));
                let target = |res: &str| {
                    spec.and_then(|s| s.get("metrics"))
                        .and_then(Value::as_sequence)
                        .and_then(|m| {
                            m.iter().find(|m| {
                                m.get("resource")
                                    .and_then(|r| r.get("name"))
                                    .and_then(Value::as_str)
                                    == Some(res)
                            })
                        })
                        .and_then(|m| m.get("resource")?.get("target")?.get("averageUtilization"))
                        .and_then(Value::as_u64)
                };
                let got = (min, max, target("cpu"), target("memory"));
                let want = (
                    Some(hpa.min_replicas),
                    Some(hpa.max_replicas),
                    Some(hpa.cpu_percent),
                    Some(hpa.memory_percent),
                );
                if got != want {
                    let show =
                        |v: Option<u64>| v.map_or_else(|| "unset".to_owned(), |v| v.to_string());
                    out.push(Finding::new(
                        "kubernetes-hpa",
                        &h.path,
                        h.line_of("spec", h.start),
                        format!(
                            "HorizontalPodAutoscaler for {what} has min {} / max {} / CPU {} % / memory {} %; the platform wants {} / {} / {} % / {} %",
                            show(got.0), show(got.1), show(got.2), show(got.3),
                            hpa.min_replicas, hpa.max_replicas, hpa.cpu_percent, hpa.memory_percent
                        ),
                    ));
                }
            }
        }
        // PDB.
        let pdb = docs.iter().find(|p| {
            p.kind() == "PodDisruptionBudget"
                && selects(p.value.get("spec").and_then(|s| s.get("selector")), labels)
        });
        match pdb {
            None => out.push(Finding::new(
                "kubernetes-pdb",
                &d.path,
                d.start,
                format!("{what} has no PodDisruptionBudget selecting its pods"),
            )),
            Some(p) => {
                let min = num(p.value.get("spec").and_then(|s| s.get("minAvailable")));
                if min != Some(hpa.pdb_min_available) {
                    out.push(Finding::new(
                        "kubernetes-pdb",
                        &p.path,
                        p.line_of("minAvailable", p.start),
                        format!(
                            "PodDisruptionBudget for {what} has minAvailable {}; the platform wants {}",
                            min.map_or_else(|| "unset".to_owned(), |v| v.to_string()),
                            hpa.pdb_min_available
                        ),
                    ));
                }
            }
        }
        // NetworkPolicy.
        let np = docs.iter().any(|n| {
            n.kind() == "NetworkPolicy"
                && selects(
                    n.value.get("spec").and_then(|s| s.get("podSelector")),
                    labels,
                )
        });
        if !np {
            out.push(Finding::new(
                "kubernetes-network-policy",
                &d.path,
                d.start,
                format!("{what} has no NetworkPolicy selecting its pods"),
            ));
        }
    }
}

fn workload(d: &Doc, out: &mut Vec<Finding>) {
    let Some(pod) = pod_spec(&d.value) else {
        return;
    };
    let Some(containers) = pod.get("containers").and_then(Value::as_sequence) else {
        return; // a partial patch
    };
    let kind = d.kind().to_owned();
    let obj = format!("{kind} {}", d.name().unwrap_or("?"));
    if truthy(pod.get("automountServiceAccountToken")) != Some(false) {
        out.push(Finding::new(
            "kubernetes-service-account-token",
            &d.path,
            d.line_of("automountServiceAccountToken", d.start)
                .max(d.line_of("spec", d.start)),
            format!("{obj} does not set automountServiceAccountToken: false"),
        ));
    }
    let pod_sc = pod.get("securityContext");
    let long_running = !matches!(kind.as_str(), "Job" | "CronJob");
    for c in containers {
        let cname = c.get("name").and_then(Value::as_str).unwrap_or("?");
        let cline = d.line_of("name", d.start);
        let cline = d
            .lines
            .iter()
            .position(|l| {
                let t = l.trim_start();
                t.starts_with("- name:") && t.trim_start_matches("- name:").trim() == cname
            })
            .map_or(cline, |i| d.start + u32::try_from(i).unwrap_or(0));
        let what = format!("container {cname} of {obj}");
        let sc = c.get("securityContext");
        let get = |k: &str| sc.and_then(|s| s.get(k));
        let at = |k: &str| d.line_of(k, cline);
        let non_root = truthy(get("runAsNonRoot"))
            .or_else(|| truthy(pod_sc.and_then(|s| s.get("runAsNonRoot"))));
        let uid0 = num(get("runAsUser")) == Some(0);
        if non_root != Some(true) || uid0 {
            out.push(Finding::new(
                "kubernetes-run-as-non-root",
                &d.path,
                at("runAsNonRoot").max(cline),
                format!("{what} may run as root (runAsNonRoot is not true)"),
            ));
        }
        if truthy(get("readOnlyRootFilesystem")) != Some(true) {
            out.push(Finding::new(
                "kubernetes-read-only-root-fs",
                &d.path,
                cline,
                format!("{what} does not set readOnlyRootFilesystem: true"),
            ));
        }
        if truthy(get("allowPrivilegeEscalation")) != Some(false) {
            out.push(Finding::new(
                "kubernetes-privilege-escalation",
                &d.path,
                cline,
                format!("{what} does not set allowPrivilegeEscalation: false"),
            ));
        }
        let drops_all = get("capabilities")
            .and_then(|c| c.get("drop"))
            .and_then(Value::as_sequence)
            .is_some_and(|d| {
                d.iter()
                    .any(|v| v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("all")))
            });
        if !drops_all {
            out.push(Finding::new(
                "kubernetes-capabilities",
                &d.path,
                cline,
                format!("{what} does not drop ALL capabilities"),
            ));
        }
        let res = c.get("resources");
        let mut missing = Vec::new();
        for part in ["requests", "limits"] {
            for r in ["cpu", "memory"] {
                if res
                    .and_then(|x| x.get(part))
                    .and_then(|x| x.get(r))
                    .is_none()
                {
                    missing.push(format!("{part}.{r}"));
                }
            }
        }
        if !missing.is_empty() {
            out.push(Finding::new(
                "kubernetes-resources",
                &d.path,
                cline,
                format!("{what} has no {}", missing.join(", ")),
            ));
        }
        if long_running {
            let mut probes = Vec::new();
            for p in ["readinessProbe", "livenessProbe"] {
                if c.get(p).is_none() {
                    probes.push(p);
                }
            }
            if !probes.is_empty() {
                out.push(Finding::new(
                    "kubernetes-probes",
                    &d.path,
                    cline,
                    format!("{what} has no {}", probes.join(" or ")),
                ));
            }
        }
        let image = c.get("image").and_then(Value::as_str).unwrap_or("");
        if !image_pinned(image) {
            out.push(Finding::new(
                "kubernetes-image-pinned",
                &d.path,
                at("image"),
                format!("{what} uses image {image:?}, which is not pinned to a version or digest"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::image_pinned;

    #[test]
    fn pinning() {
        assert!(image_pinned("ghcr.io/acme/tasks:1.4.2"));
        assert!(image_pinned("acme/tasks@sha256:abc"));
        assert!(image_pinned("localhost:5000/tasks:0.1.0"));
        assert!(!image_pinned("acme/tasks"));
        assert!(!image_pinned("acme/tasks:latest"));
        assert!(!image_pinned("localhost:5000/tasks"));
        assert!(!image_pinned("gcr.io/distroless/cc-debian12:nonroot"));
    }
}
