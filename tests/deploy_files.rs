//! The deployment files in docker/ agree with the code and with each other: every
//! SAMSERVE_* variable they set is a real flag, every metric the dashboard plots exists,
//! the Kubernetes nginx tier runs docker/nginx.conf in whatever namespace it is applied to,
//! compose, nginx and Prometheus name the same replicas, the replicas serve model folders
//! from a mounted volume with memory sized from the measured RSS of those models, startup
//! waits for /readyz, and the autoscaler alone owns the replica count. (The manifests'
//! Kubernetes schemas: `make k8s-validate`.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Words matching `prefix[A-Za-z0-9_]*` in a text.
fn words_with_prefix(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before_ok = i == 0
            || !rest[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if before_ok {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end.max(1)..];
    }
    out
}

#[test]
fn every_samserve_variable_in_docker_files_is_a_real_flag() {
    // The flags, and the build's commit for samserve_build_info (a build argument).
    let config = read("src/config.rs") + &read("src/metrics.rs");
    let known = words_with_prefix(&config, "SAMSERVE_");
    let mut files = Vec::new();
    files_under(&repo().join("docker"), &mut files);
    let mut checked = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for var in words_with_prefix(&text, "SAMSERVE_") {
            // `SAMSERVE_*` in prose and the marker comments of nginx.conf: not variables.
            if var == "SAMSERVE_"
                || var.starts_with("SAMSERVE_UPSTREAMS")
                || var == "SAMSERVE_LISTEN"
            {
                continue;
            }
            assert!(
                known.contains(&var),
                "{} sets {var}, which src/config.rs does not read",
                f.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "expected the Dockerfiles and manifests to set flags"
    );
}

#[test]
fn dashboard_plots_only_metrics_the_server_defines() {
    let dash: serde_json::Value =
        serde_json::from_str(&read("docker/grafana/dashboards/samserve.json")).unwrap();
    let metrics_rs = read("src/metrics.rs");
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 10);
    let mut names = BTreeSet::new();
    for e in &exprs {
        for w in words_with_prefix(e, "samserve_") {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(&w)
                .to_string();
            names.insert(base);
        }
    }
    for n in &names {
        assert!(
            metrics_rs.contains(&format!("\"{n}\"")),
            "the dashboard plots {n}, which src/metrics.rs does not define"
        );
    }
    for needed in [
        "samserve_http_requests_total",
        "samserve_http_request_duration_seconds",
        "samserve_queue_depth",
        "samserve_batch_size",
        "samserve_cache_hits_total",
        "samserve_embedding_store_hits_total",
        "samserve_encoder_seconds",
        "samserve_decoder_seconds",
    ] {
        assert!(names.contains(needed), "the dashboard lacks {needed}");
    }
    assert!(exprs.iter().any(|e| e.contains("status=\"429\"")));
}

/// nginx.conf with the deployment-specific server list (between the markers) removed.
fn without_upstreams(conf: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip = false;
    for l in conf.lines() {
        match l.trim() {
            "# SAMSERVE-UPSTREAMS-BEGIN" => skip = true,
            "# SAMSERVE-UPSTREAMS-END" => skip = false,
            _ if !skip => out.push(l.trim_end().to_string()),
            _ => {}
        }
    }
    out
}

#[test]
fn kubernetes_nginx_tier_runs_the_project_nginx_conf() {
    let yaml = read("docker/k8s/nginx.yaml");
    let key = "  nginx.conf.template: |\n";
    let start = yaml.find(key).expect("a ConfigMap nginx.conf.template") + key.len();
    let block: Vec<String> = yaml[start..]
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(l).to_string())
        .collect();
    let embedded = block.join("\n");
    let mut a = without_upstreams(&embedded);
    let mut b = without_upstreams(&read("docker/nginx.conf"));
    while a.last().is_some_and(|l| l.is_empty()) {
        a.pop();
    }
    while b.last().is_some_and(|l| l.is_empty()) {
        b.pop();
    }
    assert_eq!(
        a, b,
        "docker/k8s/nginx.yaml's nginx.conf drifted from docker/nginx.conf"
    );
    assert!(embedded.contains("samserve-pods"));
}

#[test]
fn compose_nginx_and_prometheus_name_the_same_replicas() {
    let compose = read("docker/compose.yaml");
    let nginx = read("docker/nginx.conf");
    let prom = read("docker/prometheus.yml");
    let services: BTreeSet<String> = compose
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .filter(|l| l.starts_with("samserve-") && l.trim_end().ends_with(':'))
        .map(|l| l.trim_end().trim_end_matches(':').to_string())
        .collect();
    assert_eq!(services.len(), 3, "{services:?}");
    for s in &services {
        assert!(
            nginx.contains(&format!("server {s}:8080")),
            "nginx.conf lacks {s}"
        );
        assert!(
            prom.contains(&format!("\"{s}:8080\"")),
            "prometheus.yml lacks {s}"
        );
    }
}

#[test]
fn pods_outlive_their_longest_request() {
    let config = read("src/config.rs");
    let i = config.find("SAMSERVE_REQUEST_TIMEOUT_MS").unwrap();
    let default_ms: u64 = config[i..]
        .split("default_value_t = ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .replace('_', "")
        .trim()
        .parse()
        .unwrap();
    for f in [
        "docker/k8s/cpu/deployment.yaml",
        "docker/k8s/gpu/deployment.yaml",
    ] {
        let text = read(f);
        let grace: u64 = text
            .split("terminationGracePeriodSeconds: ")
            .nth(1)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            grace * 1000 > default_ms,
            "{f}: grace {grace}s <= request timeout"
        );
        for probe in ["path: /readyz", "path: /healthz"] {
            assert!(text.contains(probe), "{f} lacks {probe}");
        }
    }
    assert!(read("docker/k8s/gpu/deployment.yaml").contains("nvidia.com/gpu: 1"));
}

/// The Kubernetes manifests name no namespace: the nginx tier finds the pods' headless
/// Service in its own namespace through the downward API, rendered by the nginx image's
/// template step (only `${POD_NAMESPACE}` is substituted).
#[test]
fn kubernetes_manifests_work_in_any_namespace() {
    let mut files = Vec::new();
    files_under(&repo().join("docker/k8s"), &mut files);
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for line in text.lines() {
            let t = line.trim();
            assert!(
                !t.starts_with("namespace:"),
                "{} pins a namespace: {t}",
                f.display()
            );
            assert!(
                !t.contains(".default.svc"),
                "{} hard-codes the default namespace: {t}",
                f.display()
            );
        }
    }
    let yaml = read("docker/k8s/nginx.yaml");
    let template = yaml
        .split("  nginx.conf.template: |\n")
        .nth(1)
        .unwrap()
        .split("\n---")
        .next()
        .unwrap();
    assert_eq!(
        template.matches("${").count(),
        template.matches("${POD_NAMESPACE}").count(),
        "only ${{POD_NAMESPACE}} may be substituted in the template"
    );
    assert!(template.contains("samserve-pods.${POD_NAMESPACE}.svc.cluster.local:8080"));
    for needed in [
        "name: POD_NAMESPACE",
        "fieldPath: metadata.namespace",
        "name: NGINX_ENVSUBST_OUTPUT_DIR\n              value: /etc/nginx\n",
        "name: NGINX_ENVSUBST_FILTER\n              value: ^POD_NAMESPACE$\n",
        "mountPath: /etc/nginx/templates\n",
    ] {
        assert!(yaml.contains(needed), "nginx.yaml lacks {needed:?}");
    }
}

/// A `key: value` line's value after `key:` in a YAML text (first occurrence after `from`).
fn value_after<'a>(text: &'a str, from: &str, key: &str) -> &'a str {
    let i = text.find(from).unwrap_or_else(|| panic!("no {from}"));
    let rest = &text[i..];
    let j = rest
        .find(&format!("{key}:"))
        .unwrap_or_else(|| panic!("no {key} after {from}"));
    rest[j + key.len() + 1..]
        .lines()
        .next()
        .unwrap()
        .trim()
        .trim_matches('"')
}

/// Bytes of a Kubernetes quantity (`10Gi`, `512Mi`) or a docker size (`10g`, `512m`,
/// 1024-based), or a plain number.
fn bytes_of(q: &str) -> u64 {
    let units: [(&str, u64); 6] = [
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
        ("g", 1 << 30),
        ("m", 1 << 20),
        ("k", 1 << 10),
    ];
    for (u, m) in units {
        if let Some(n) = q.strip_suffix(u) {
            return (n.parse::<f64>().unwrap() * m as f64) as u64;
        }
    }
    q.parse().unwrap_or_else(|_| panic!("not a size: {q}"))
}

/// `${NAME:-default}` -> `default`; anything else unchanged.
fn compose_default(v: &str) -> &str {
    match (v.find(":-"), v.strip_suffix('}')) {
        (Some(i), Some(_)) if v.starts_with("${") => &v[i + 2..v.len() - 1],
        _ => v,
    }
}

/// The measured RSS per model folder name, from the table in docs/deployment.md.
fn measured_rss() -> std::collections::BTreeMap<String, u64> {
    let doc = read("docs/deployment.md");
    let mut out = std::collections::BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let name = cells[1].trim_matches('`');
        if let Some(gib) = cells[2].strip_suffix(" GiB") {
            if let Ok(g) = gib.parse::<f64>() {
                out.insert(name.to_string(), (g * (1u64 << 30) as f64) as u64);
            }
        }
    }
    assert!(
        out.contains_key("sam-vit-b") && out.contains_key("sam-tiny"),
        "docs/deployment.md's memory table: {out:?}"
    );
    out
}

/// Memory a replica needs: the measured RSS of each model it serves plus its cache and
/// store budgets plus 512 MiB for requests in flight.
fn needed_memory(models: &str, env: impl Fn(&str) -> u64) -> u64 {
    let rss = measured_rss();
    let mut total = 512 << 20;
    for m in models.split(',') {
        let name = m.trim().trim_end_matches('/').rsplit('/').next().unwrap();
        total += rss
            .get(name)
            .unwrap_or_else(|| panic!("no measured RSS for {name} in docs/deployment.md"));
    }
    total
        + env("SAMSERVE_CACHE_BYTES")
        + env("SAMSERVE_IMAGE_STORE_BYTES")
        + env("SAMSERVE_MASK_STORE_BYTES")
}

#[test]
fn kubernetes_replicas_serve_mounted_models_with_measured_memory() {
    for f in [
        "docker/k8s/cpu/deployment.yaml",
        "docker/k8s/gpu/deployment.yaml",
    ] {
        let text = read(f);
        // Models: copied by the init container from the models image into the volume
        // mounted at /models, and named under /models.
        let models = value_after(&text, "name: SAMSERVE_MODELS", "value");
        assert!(
            models.split(',').all(|m| m.starts_with("/models/")),
            "{f}: {models}"
        );
        assert!(text.contains("image: samserve-models:"), "{f}");
        assert!(
            text.contains(r#"command: ["cp", "-a", "/models/.", "/srv/models/"]"#),
            "{f}"
        );
        assert!(
            text.contains("mountPath: /srv/models")
                && text.contains("mountPath: /models\n              readOnly: true"),
            "{f}"
        );
        assert!(read("docker/Dockerfile.models").contains("COPY . /models/"));
        // Memory: request = limit >= what the served models were measured to need.
        let env = |k: &str| -> u64 {
            value_after(&text, &format!("name: {k}"), "value")
                .parse()
                .unwrap_or_else(|_| panic!("{f}: {k}"))
        };
        let need = needed_memory(models, env);
        let containers = &text[text.find("      containers:").unwrap()..];
        let request = bytes_of(value_after(containers, "requests:", "memory"));
        let limit = bytes_of(value_after(containers, "limits:", "memory"));
        assert_eq!(request, limit, "{f}: memory request != limit");
        assert!(
            limit >= need,
            "{f}: limit {limit} below the measured need {need}"
        );
        assert!(
            limit <= need + (2 << 30),
            "{f}: limit {limit} far above the measured need {need}: measure again"
        );
        // Startup waits for the models (/readyz), not for the process (/healthz).
        assert_eq!(
            value_after(&text, "startupProbe:", "path"),
            "/readyz",
            "{f}"
        );
        // The HPA owns the replica count.
        assert!(
            !text
                .lines()
                .any(|l| l.trim_start().starts_with("replicas:")),
            "{f} fixes `replicas`, which the HPA owns"
        );
    }
    let hpa = read("docker/k8s/hpa.yaml");
    assert_eq!(value_after(&hpa, "scaleTargetRef:", "name"), "samserve");
    assert_eq!(value_after(&hpa, "scaleTargetRef:", "kind"), "Deployment");
}

#[test]
fn compose_replicas_serve_mounted_models_with_measured_memory() {
    let text = read("docker/compose.yaml");
    let anchor = &text[text.find("x-samserve:").unwrap()..text.find("services:").unwrap()];
    assert!(
        anchor.contains("- ${MODELS_DIR:-../models}:/models:ro"),
        "compose mounts the repository's models/ (where `make model` writes)"
    );
    let models = compose_default(value_after(anchor, "SAMSERVE_MODELS", "SAMSERVE_MODELS"));
    assert!(models.starts_with("/models/"), "{models}");
    let env = |k: &str| -> u64 {
        value_after(anchor, k, k)
            .parse()
            .unwrap_or_else(|_| panic!("{k}"))
    };
    let need = needed_memory(models, env);
    let limit = bytes_of(compose_default(value_after(anchor, "limits:", "memory")));
    assert!(limit >= need, "compose limit {limit} < need {need}");
    // The mounted folder holds what a model folder needs: the default demo model is there
    // (a manifest beside its ONNX files), so the layout is the one `make model` writes.
    assert!(repo().join("models/sam-tiny/manifest.json").exists());
}
