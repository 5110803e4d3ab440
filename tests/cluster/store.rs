//! The shared store as untrusted input and as a service that goes away: values overwritten
//! in Redis with each corruption an outside probe used (geometry, resized size, swapped
//! sides, NaN, zeros, random floats, another image's value, truncated, oversized, old
//! format, another key type), and values missed while Redis was down.
//!
//! The value layout used here to build forgeries is the documented one
//! (`src/core/store/codec.rs`), parsed by this file, not by the server's codec.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::common;
use super::harness::*;

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}

/// Where the fields of a format-2 value are.
struct Layout {
    geometry: usize,
    payload: std::ops::Range<usize>,
}

impl Layout {
    fn parse(v: &[u8]) -> Layout {
        assert_eq!(&v[..4], b"SAME");
        assert_eq!(u16_at(v, 4), 2, "format version");
        let mut at = 4 + 2 + 2 + 16;
        at += 2 + u16_at(v, at); // model name
        at += 2 + u16_at(v, at); // image id
        let geometry = at;
        at += 16;
        assert_eq!(u16_at(v, at), 1, "one tensor");
        at += 2;
        at += 2 + u16_at(v, at); // tensor name
        at += 2; // dtype
        let rank = u16_at(v, at);
        at += 2;
        let mut n = 1;
        for d in 0..rank {
            let o = at + 4 * d;
            n *= u32::from_le_bytes(v[o..o + 4].try_into().unwrap()) as usize;
        }
        at += 4 * rank;
        assert_eq!(at + 4 * n + 32, v.len(), "layout accounts for every byte");
        Layout {
            geometry,
            payload: at..at + 4 * n,
        }
    }
}

/// Recomputes the trailing checksum, as a forger without a store secret would.
fn reseal(mut v: Vec<u8>) -> Vec<u8> {
    let n = v.len() - 32;
    let sum = blake3::hash(&v[..n]);
    v[n..].copy_from_slice(sum.as_bytes());
    v
}

fn with_geometry(v: &[u8], l: &Layout, g: [u32; 4]) -> Vec<u8> {
    let mut v = v.to_vec();
    for (i, x) in g.iter().enumerate() {
        v[l.geometry + 4 * i..l.geometry + 4 * i + 4].copy_from_slice(&x.to_le_bytes());
    }
    v
}

fn geometry_of(v: &[u8], l: &Layout) -> [u32; 4] {
    std::array::from_fn(|i| {
        let o = l.geometry + 4 * i;
        u32::from_le_bytes(v[o..o + 4].try_into().unwrap())
    })
}

fn value_key(port: u16, image_id: &str) -> String {
    let keys = redis_raw(port, &[b"KEYS", b"samserve:emb:*"]);
    String::from_utf8_lossy(&keys)
        .lines()
        .find(|l| l.starts_with("samserve:emb:v2:") && l.ends_with(image_id))
        .unwrap_or_else(|| panic!("no stored value for {image_id}"))
        .to_string()
}

async fn put_on(client: &reqwest::Client, base: &str, png: &[u8]) -> Value {
    let (st, body) = put(client, base, png).await;
    assert_eq!(st, 200, "{body}");
    body
}

fn prompts() -> Value {
    json!({"prompts": [
        {"points": [{"x": 150, "y": 110, "label": 1}]},
        {"box": [20, 20, 280, 200]}
    ], "output": "rle"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisoned_store_values_are_counted_misses_never_wrong_answers() {
    if !cluster_tests_enabled() {
        return;
    }
    let tmp = temp_dir("poison");
    let dir = tmp.0.clone();
    let port = free_port();
    let _redis = start_redis(&redis_exe(), port, &dir, 1);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let mut a = start_replica(0, port, &dir);
    let mut b = start_replica(1, port, &dir);
    wait_ready(&client, &mut a).await;
    wait_ready(&client, &mut b).await;

    let (img_x, img_y, img_z) = (
        common::synthetic_png(300, 220, 41),
        common::synthetic_png(300, 220, 42),
        common::synthetic_png(280, 240, 43),
    );
    let id = |p: &[u8]| samserve::core::engine::image_id_of(p);
    let (id_x, id_y, id_z) = (id(&img_x), id(&img_y), id(&img_z));
    for img in [&img_x, &img_y, &img_z] {
        put_on(&client, &a.base, img).await;
    }
    let (st, truth_x) = segment(&client, &a.base, &id_x, &prompts()).await;
    assert_eq!(st, 200, "{truth_x}");
    let (key_x, key_z) = (value_key(port, &id_x), value_key(port, &id_z));
    let good = redis_get(port, &key_x).expect("value of x");
    let good_y = redis_get(port, &value_key(port, &id_y)).expect("value of y");
    let l = Layout::parse(&good);
    let [w, h, rw, rh] = geometry_of(&good, &l);
    assert_eq!((w, h), (300, 220));

    let payload = |f: &dyn Fn(usize) -> f32| {
        let mut v = good.clone();
        for (i, c) in v[l.payload.clone()].chunks_exact_mut(4).enumerate() {
            c.copy_from_slice(&f(i).to_le_bytes());
        }
        v
    };
    let mut nan = good.clone();
    nan[l.payload.start + 40..l.payload.start + 44].copy_from_slice(&f32::NAN.to_le_bytes());
    let mut v1 = good.clone();
    v1[4] = 1;
    // Random floats from a fixed hash of the index.
    let random = payload(&|i| {
        let mut x = (i as u32).wrapping_mul(0x9e37_79b9) ^ 0x85eb_ca6b;
        x ^= x >> 15;
        x = x.wrapping_mul(0x2c1b_3c6d);
        x ^= x >> 12;
        (x % 20_000) as f32 / 1000.0 - 10.0
    });
    let corruptions: Vec<(&str, Vec<u8>)> = vec![
        (
            "geometry 65535x65535",
            with_geometry(&good, &l, [65535, 65535, rw, rh]),
        ),
        (
            "geometry 65535x65535, resealed",
            reseal(with_geometry(&good, &l, [65535, 65535, 1024, 1024])),
        ),
        (
            "resized width 100000, resealed",
            reseal(with_geometry(&good, &l, [w, h, 100_000, rh])),
        ),
        (
            "width and height swapped",
            with_geometry(&good, &l, [h, w, rw, rh]),
        ),
        (
            "width and height swapped, resealed",
            reseal(with_geometry(&good, &l, [h, w, rw, rh])),
        ),
        ("a NaN", nan.clone()),
        ("a NaN, resealed", reseal(nan)),
        ("zeros", payload(&|_| 0.0)),
        ("random floats", random),
        ("another image's value", good_y.clone()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("32 MiB of junk", vec![0x5a; 32 << 20]),
        ("format version 1", v1),
    ];

    let base_b = b.base.clone();
    let metric = |name: &'static str, filter: &'static str| {
        let (client, base) = (client.clone(), base_b.clone());
        async move { common::metric_at(&client, &base, name, filter).await }
    };
    let hits_before = metric("samserve_embedding_store_hits_total", "").await;
    let rss_before = {
        std::fs::write(format!("/proc/{}/clear_refs", b.proc.pid()), "5").unwrap();
        proc_status_bytes(b.proc.pid(), "VmRSS:")
    };
    let mut report = Vec::new();
    let mut poison = |name: &str, value: Option<&[u8]>| {
        match value {
            Some(v) => redis_set(port, &key_x, v),
            None => {
                // Another type under the key: a list.
                redis_raw(port, &[b"DEL", key_x.as_bytes()]);
                redis_raw(port, &[b"RPUSH", key_x.as_bytes(), b"x"]);
            }
        }
        report.push(name.to_string());
    };
    let mut cases: Vec<(&str, Option<&[u8]>)> = corruptions
        .iter()
        .map(|(n, v)| (*n, Some(v.as_slice())))
        .collect();
    cases.push(("a list under the key", None));
    for (name, value) in cases {
        poison(name, value);
        let errors = metric("samserve_embedding_store_errors_total", "op=\"decode\"").await;
        let (st, body) = segment(&client, &b.base, &id_x, &prompts()).await;
        b.proc.assert_alive();
        assert_eq!(
            (st, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{name}: a poisoned value is a miss: {body}"
        );
        let counted =
            metric("samserve_embedding_store_errors_total", "op=\"decode\"").await - errors;
        assert_eq!(counted, 1.0, "{name}: counted as a store error");
    }
    let grew = proc_status_bytes(b.proc.pid(), "VmHWM:").saturating_sub(rss_before);
    println!(
        "poisoned values refused: {report:?}; replica B's peak RSS grew {} MiB",
        grew >> 20
    );
    assert!(grew < 128 << 20, "peak RSS grew {} MiB", grew >> 20);
    assert_eq!(
        metric("samserve_embedding_store_hits_total", "").await,
        hits_before,
        "no poisoned value was used"
    );

    // The true value back: B serves it, with A's masks bit for bit.
    redis_set(port, &key_x, &good);
    let (st, on_b) = segment(&client, &b.base, &id_x, &prompts()).await;
    assert_eq!(st, 200, "{on_b}");
    assert_eq!(on_b["results"], truth_x["results"]);
    assert_eq!(
        (on_b["width"].as_u64(), on_b["height"].as_u64()),
        (Some(300), Some(220))
    );

    // A poisoned value met by a re-upload on B: B encodes the image itself (not cached)
    // and answers A's masks; the store holds a usable value again.
    let forged = reseal(with_geometry(
        &redis_get(port, &key_z).unwrap(),
        &Layout::parse(&good),
        [65535, 65535, 1024, 1024],
    ));
    redis_set(port, &key_z, &forged);
    let runs = metric("samserve_encoder_runs_total", "").await;
    let up = put_on(&client, &b.base, &img_z).await;
    assert_eq!(up["cached"], false, "{up}");
    assert_eq!(
        (up["width"].as_u64(), up["height"].as_u64()),
        (Some(280), Some(240))
    );
    assert_eq!(metric("samserve_encoder_runs_total", "").await - runs, 1.0);
    let (sa, on_a) = segment(&client, &a.base, &id_z, &prompts()).await;
    let (sb, on_b) = segment(&client, &b.base, &id_z, &prompts()).await;
    assert_eq!((sa, sb), (200, 200));
    assert_eq!(on_a["results"], on_b["results"]);
    let rewritten = redis_get(port, &key_z).unwrap();
    assert_ne!(rewritten, forged);
    let lz = Layout::parse(&rewritten);
    assert_eq!(geometry_of(&rewritten, &lz)[..2], [280, 240]);
    a.proc.assert_alive();
    b.proc.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_missed_during_a_redis_outage_are_written_once_it_is_back() {
    if !cluster_tests_enabled() {
        return;
    }
    let tmp = temp_dir("backfill");
    let dir = tmp.0.clone();
    let port = free_port();
    let mut redis = start_redis(&redis_exe(), port, &dir, 1);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let mut a = start_replica(0, port, &dir);
    let mut b = start_replica(1, port, &dir);
    wait_ready(&client, &mut a).await;
    wait_ready(&client, &mut b).await;

    redis.kill();
    let (img_p, img_q) = (
        common::synthetic_png(300, 220, 51),
        common::synthetic_png(300, 220, 52),
    );
    let id = |p: &[u8]| samserve::core::engine::image_id_of(p);
    let (id_p, id_q) = (id(&img_p), id(&img_q));
    put_on(&client, &a.base, &img_p).await;
    put_on(&client, &a.base, &img_q).await;
    let owed = common::metric_at(&client, &a.base, "samserve_embedding_store_pending", "").await;
    assert_eq!(owed, 2.0, "both uploads are owed to the store");
    let (st, _) = segment(&client, &b.base, &id_p, &prompts()).await;
    assert_eq!(
        st, 404,
        "B cannot know an image uploaded to A during the outage"
    );

    // Redis back, empty. P is uploaded again on A (a local hit); Q is left alone.
    let _redis = start_redis(&redis_exe(), port, &dir, 2);
    let t = Instant::now();
    let up = put_on(&client, &a.base, &img_p).await;
    assert_eq!(up["cached"], true);
    let mut served = Vec::new();
    for (name, image_id) in [("re-uploaded", &id_p), ("left alone", &id_q)] {
        loop {
            let (st, body) = segment(&client, &b.base, image_id, &prompts()).await;
            if st == 200 {
                let (sa, on_a) = segment(&client, &a.base, image_id, &prompts()).await;
                assert_eq!(sa, 200);
                assert_eq!(on_a["results"], body["results"], "{name}");
                served.push(format!("{name}: on B after {:?}", t.elapsed()));
                break;
            }
            assert_eq!(st, 404, "{body}");
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{name}: B still answers 404 {:?} after Redis came back ({served:?})",
                t.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!("back-fill after the outage: {served:?}");
    let owed = common::metric_at(&client, &a.base, "samserve_embedding_store_pending", "").await;
    assert_eq!(owed, 0.0);
    a.proc.assert_alive();
    b.proc.assert_alive();
}

/// The tensor names of a format-2 value, read by the documented layout.
fn tensor_names(v: &[u8]) -> Vec<String> {
    let mut at = 4 + 2 + 2 + 16;
    at += 2 + u16_at(v, at); // model name
    at += 2 + u16_at(v, at); // image id
    at += 16; // geometry
    let n = u16_at(v, at);
    at += 2;
    let mut names = Vec::new();
    for _ in 0..n {
        let len = u16_at(v, at);
        names.push(String::from_utf8(v[at + 2..at + 2 + len].to_vec()).unwrap());
        at += 2 + len + 2; // name, dtype
        let rank = u16_at(v, at);
        at += 2 + 4 * rank;
    }
    names
}

/// A SAM 2 model's embedding (three tensors) is one store value: uploaded on A, read by B,
/// which answers what A answers; a value with one tensor's bytes damaged is a miss on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sam2_embeddings_are_shared_as_one_value_of_three_tensors() {
    if !cluster_tests_enabled() {
        return;
    }
    let tmp = temp_dir("sam2-store");
    let dir = tmp.0.clone();
    let port = free_port();
    let _redis = start_redis(&redis_exe(), port, &dir, 1);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let model = common::repo().join("tests/fixtures/models/sam2-mini");
    let model = model.to_str().unwrap();
    let mut a = start_replica_with(0, port, &dir, &["--model", model]);
    let mut b = start_replica_with(1, port, &dir, &["--model", model]);
    wait_ready(&client, &mut a).await;
    wait_ready(&client, &mut b).await;
    let png = common::synthetic_png(300, 220, 51);
    let id = samserve::core::engine::image_id_of(&png);
    put_on(&client, &a.base, &png).await;
    let value = redis_get(port, &value_key(port, &id)).expect("A wrote the value");
    assert_eq!(
        tensor_names(&value),
        ["image_embed", "high_res_feats_0", "high_res_feats_1"]
    );
    let (st, on_a) = segment(&client, &a.base, &id, &prompts()).await;
    assert_eq!(st, 200, "{on_a}");
    let hits = common::metric_at(&client, &b.base, "samserve_embedding_store_hits_total", "").await;
    let (st, on_b) = segment(&client, &b.base, &id, &prompts()).await;
    assert_eq!(st, 200, "{on_b}");
    assert_eq!(on_a["results"], on_b["results"], "B answers what A answers");
    let hits2 =
        common::metric_at(&client, &b.base, "samserve_embedding_store_hits_total", "").await;
    assert_eq!(hits2, hits + 1.0, "B read the value from the store");

    // A second image whose value loses a byte in its last tensor: B refuses it (counted)
    // and encodes the image itself when it is uploaded there.
    let png2 = common::synthetic_png(300, 220, 52);
    let id2 = samserve::core::engine::image_id_of(&png2);
    put_on(&client, &a.base, &png2).await;
    let key2 = value_key(port, &id2);
    let mut bad = redis_get(port, &key2).unwrap();
    let at = bad.len() - 32 - 8;
    bad[at] ^= 0x40;
    redis_set(port, &key2, &bad);
    let errors = common::metric_at(
        &client,
        &b.base,
        "samserve_embedding_store_errors_total",
        "op=\"decode\"",
    )
    .await;
    let (st, _) = segment(&client, &b.base, &id2, &prompts()).await;
    assert_eq!(st, 404, "a damaged value is a miss, not an answer");
    let errors2 = common::metric_at(
        &client,
        &b.base,
        "samserve_embedding_store_errors_total",
        "op=\"decode\"",
    )
    .await;
    assert_eq!(errors2, errors + 1.0);
    a.proc.assert_alive();
    b.proc.assert_alive();
}
