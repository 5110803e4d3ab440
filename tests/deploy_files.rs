//! The deployment files in docker/ agree with the code and with each other: every
//! SAMSERVE_* variable they set is a real flag, every metric the dashboard plots exists,
//! the Kubernetes nginx tier runs docker/nginx.conf, and compose, nginx and Prometheus
//! name the same replicas. (The manifests' Kubernetes schemas: `make k8s-validate`.)

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
    let config = read("src/config.rs");
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
    let start = yaml
        .find("  nginx.conf: |\n")
        .expect("a ConfigMap nginx.conf")
        + 16;
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
