//! Reading a few of samserve's Prometheus series, to report what the server saw during a
//! window (decoder batch sizes, encoder runs, rejections). Missing series are left out.

use std::collections::BTreeMap;

use serde::Serialize;

/// Sample values keyed by `name{labels}` exactly as exposed.
#[derive(Debug, Clone, Default)]
pub struct Scrape(pub BTreeMap<String, f64>);

impl Scrape {
    /// Parses Prometheus text exposition (comments skipped, timestamps ignored).
    pub fn parse(text: &str) -> Scrape {
        let mut m = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The value follows the series key; label values may hold spaces, so split
            // after the closing brace when there is one.
            let split_at = match line.rfind('}') {
                Some(i) => i + 1,
                None => line.find(' ').unwrap_or(line.len()),
            };
            let (key, rest) = line.split_at(split_at);
            if let Some(v) = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
            {
                m.insert(key.trim().to_string(), v);
            }
        }
        Scrape(m)
    }

    /// Fetches and parses `/metrics`; `None` when it cannot.
    pub async fn fetch(client: &reqwest::Client, base: &str) -> Option<Scrape> {
        let resp = client
            .get(format!("{}/metrics", base.trim_end_matches('/')))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        Some(Scrape::parse(&resp.text().await.ok()?))
    }

    fn get(&self, key: &str) -> Option<f64> {
        self.0.get(key).copied()
    }

    /// Sum over every series of metric `name` whose labels contain `label` (e.g.
    /// `queue="decoder"`; empty matches all).
    pub fn sum(&self, name: &str, label: &str) -> Option<f64> {
        let mut found = None;
        for (k, v) in &self.0 {
            let (n, labels) = k.split_once('{').unwrap_or((k.as_str(), ""));
            if n == name && labels.contains(label) {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }
}

/// What the server reported between two scrapes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerDelta {
    /// Decoder model calls (batches).
    pub decoder_batches: Option<f64>,
    /// Mean prompts per decoder call.
    pub decoder_mean_batch: Option<f64>,
    /// Prompts decoded.
    pub decoder_prompts: Option<f64>,
    /// Encoder runs (images encoded).
    pub encoder_runs: Option<f64>,
    /// Mean images per encoder call.
    pub encoder_mean_batch: Option<f64>,
    /// Requests refused by admission control, by reason.
    pub rejected: BTreeMap<String, f64>,
    /// Queued jobs dropped because their client had gone.
    pub abandoned: Option<f64>,
}

impl ServerDelta {
    /// The difference `after - before`.
    pub fn between(before: &Scrape, after: &Scrape) -> ServerDelta {
        let d = |name: &str, label: &str| -> Option<f64> {
            Some(after.sum(name, label)? - before.sum(name, label).unwrap_or(0.0))
        };
        let ratio = |s: Option<f64>, c: Option<f64>| match (s, c) {
            (Some(s), Some(c)) if c > 0.0 => Some(s / c),
            _ => None,
        };
        let dec_count = d("samserve_batch_size_count", "queue=\"decoder\"");
        let dec_sum = d("samserve_batch_size_sum", "queue=\"decoder\"");
        let enc_count = d("samserve_batch_size_count", "queue=\"encoder\"");
        let enc_sum = d("samserve_batch_size_sum", "queue=\"encoder\"");
        let mut rejected = BTreeMap::new();
        for (k, v) in &after.0 {
            if let Some(rest) = k.strip_prefix("samserve_rejected_requests_total{") {
                let reason = rest
                    .split(',')
                    .find_map(|l| l.trim().strip_prefix("reason=\""))
                    .map(|r| r.trim_end_matches('}').trim_end_matches('"').to_string())
                    .unwrap_or_else(|| rest.trim_end_matches('}').to_string());
                let dv = v - before.get(k).unwrap_or(0.0);
                if dv > 0.0 {
                    *rejected.entry(reason).or_default() += dv;
                }
            }
        }
        ServerDelta {
            decoder_batches: dec_count,
            decoder_mean_batch: ratio(dec_sum, dec_count),
            decoder_prompts: d("samserve_decoder_prompts_total", ""),
            encoder_runs: d("samserve_encoder_runs_total", ""),
            encoder_mean_batch: ratio(enc_sum, enc_count),
            rejected,
            abandoned: d("samserve_abandoned_jobs_total", ""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas() {
        let a = Scrape::parse(
            "# HELP x\nsamserve_batch_size_sum{queue=\"decoder\"} 10\n\
             samserve_batch_size_count{queue=\"decoder\"} 5\n\
             samserve_rejected_requests_total{reason=\"decoder\"} 1\n",
        );
        let b = Scrape::parse(
            "samserve_batch_size_sum{queue=\"decoder\"} 70\n\
             samserve_batch_size_count{queue=\"decoder\"} 15\n\
             samserve_rejected_requests_total{reason=\"decoder\"} 4\n\
             samserve_encoder_runs_total{model=\"sam-tiny\"} 3\n",
        );
        let d = ServerDelta::between(&a, &b);
        assert_eq!(d.decoder_batches, Some(10.0));
        assert_eq!(d.decoder_mean_batch, Some(6.0));
        assert_eq!(d.encoder_runs, Some(3.0));
        assert_eq!(d.rejected["decoder"], 3.0);
        assert_eq!(d.decoder_prompts, None);
    }
}
