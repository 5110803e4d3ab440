//! The deployment story, run for real on 127.0.0.1: redis-server, three samserve
//! processes (the release binary) sharing it through `--embedding-store`, and nginx with
//! the project's own `docker/nginx.conf` rendered for loopback ports; and the shared store
//! as untrusted input: poisoned values, and values missed during an outage
//! (`cluster/store.rs`).
//!
//! redis-server and nginx come from Debian packages (`.ci/run` installs them). When one is
//! missing the test fails; set SAMSERVE_SKIP_CLUSTER_TEST=1 to skip it on purpose.

mod common;
#[path = "cluster/harness.rs"]
mod harness;
#[path = "cluster/store.rs"]
mod store;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_of_three_behind_nginx_with_a_shared_store() {
    if !cluster_tests_enabled() {
        return;
    }
    let redis_exe = redis_exe();
    let nginx_exe = find_exe("nginx").expect(
        "nginx is not installed (apt-get install nginx; .ci/run does it). \
         Set SAMSERVE_SKIP_CLUSTER_TEST=1 to skip this test on purpose.",
    );
    let tmp = temp_dir("cluster");
    let dir = tmp.0.clone();

    let redis_port = free_port();
    let mut redis = start_redis(&redis_exe, redis_port, &dir, 1);
    let mut replicas: Vec<Replica> = (0..3).map(|i| start_replica(i, redis_port, &dir)).collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    for r in &mut replicas {
        wait_ready(&client, r).await;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
    let b: Vec<&str> = bases.iter().map(String::as_str).collect();
    let nginx_port = free_port();
    let mut nginx = start_nginx(&nginx_exe, &render_nginx(&bases, nginx_port), &dir);
    let lb = format!("http://127.0.0.1:{nginx_port}");
    loop {
        nginx.assert_alive();
        let ok = client
            .get(format!("{lb}/nginx-health"))
            .send()
            .await
            .map(|x| x.status() == 200)
            .unwrap_or(false);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "nginx never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // (a) Affinity: every request for one image id, PUT included, lands on one replica.
    let images: Vec<Vec<u8>> = (0..6)
        .map(|s| common::synthetic_png(320 + s * 8, 240, 100 + s))
        .collect();
    let ids: Vec<String> = images
        .iter()
        .map(|p| samserve::core::engine::image_id_of(p))
        .collect();
    let mut owner = Vec::new();
    for (img, id) in images.iter().zip(&ids) {
        let before = metric_each(&client, &b, "samserve_http_requests_total", "").await;
        let (st, _) = put(&client, &lb, img).await;
        assert_eq!(st, 200);
        for i in 0..8 {
            let (st, body) = segment(&client, &lb, id, &click(i)).await;
            assert_eq!(st, 200, "{body}");
        }
        let d = delta(
            &metric_each(&client, &b, "samserve_http_requests_total", "").await,
            &before,
        );
        // Scrapes of /metrics count too; they went to each replica directly, once.
        let served: Vec<f64> = d.iter().map(|x| x - 1.0).collect();
        let busy: Vec<usize> = (0..3).filter(|&r| served[r] > 0.0).collect();
        println!("(a) image {}: requests per replica {served:?}", &id[..8]);
        assert_eq!(
            busy.len(),
            1,
            "requests for one id spread over replicas: {served:?}"
        );
        assert_eq!(served[busy[0]], 9.0, "PUT + 8 segments on the owner");
        owner.push(busy[0]);
    }
    println!("(a) owners of the 6 ids: {owner:?}");

    // (b) Encoded on replica A, asked of replica B directly: a store hit, no encoder run,
    // bit-identical masks.
    let (a, bb) = (0, 1);
    let img_b = common::synthetic_png(400, 300, 7);
    let enc_before = metric_each(&client, &b, "samserve_encoder_runs_total", "").await;
    let hits_before = metric_each(&client, &b, "samserve_embedding_store_hits_total", "").await;
    let up = client
        .post(format!("{}/v1/images", b[a]))
        .body(img_b.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(up.status(), 200);
    let id_b = up.json::<Value>().await.unwrap()["image_id"]
        .as_str()
        .unwrap()
        .to_string();
    let prompts = json!({"prompts": [
        {"points": [{"x": 200, "y": 150, "label": 1}]},
        {"box": [20, 20, 300, 260]}
    ], "output": "rle"});
    let (sa, on_a) = segment(&client, b[a], &id_b, &prompts).await;
    let (sb, on_b) = segment(&client, b[bb], &id_b, &prompts).await;
    assert_eq!((sa, sb), (200, 200), "{on_a} {on_b}");
    let enc = delta(
        &metric_each(&client, &b, "samserve_encoder_runs_total", "").await,
        &enc_before,
    );
    let hits = delta(
        &metric_each(&client, &b, "samserve_embedding_store_hits_total", "").await,
        &hits_before,
    );
    println!("(b) encoder runs per replica {enc:?}, store hits {hits:?}");
    assert_eq!(enc, vec![1.0, 0.0, 0.0], "only replica A encodes");
    assert_eq!(hits[bb], 1.0, "replica B read the embedding from the store");
    assert_eq!(
        on_a["results"], on_b["results"],
        "masks and scores from the stored embedding are bit-identical"
    );
    assert!(!on_a["results"][0]["masks"].as_array().unwrap().is_empty());

    // (c) Two replicas uploading the same new image at once: one encoder run in total.
    for round in 0..3 {
        let img_c = common::synthetic_png(360, 280, 500 + round);
        let before = metric_each(&client, &b, "samserve_encoder_runs_total", "").await;
        let (r1, r2) = tokio::join!(put(&client, b[1], &img_c), put(&client, b[2], &img_c));
        assert_eq!((r1.0, r2.0), (200, 200));
        let d = delta(
            &metric_each(&client, &b, "samserve_encoder_runs_total", "").await,
            &before,
        );
        println!("(c) round {round}: encoder runs per replica {d:?}");
        assert_eq!(sum(&d), 1.0, "two replicas raced on one image: {d:?}");
    }

    // (c') A lock whose holder died (set here by hand, as a crashed replica leaves it):
    // the upload still succeeds, encoded once, after the lock expires.
    let keys = redis_cmd(redis_port, &["KEYS", "samserve:emb:*"]);
    let value_key = keys
        .lines()
        .find(|l| l.starts_with("samserve:emb:"))
        .expect("stored embeddings")
        .to_string();
    // samserve:emb:v2:{model}:{fingerprint}:{id} -> samserve:lock:{model}:{fingerprint}:{id}
    let parts: Vec<&str> = value_key.split(':').collect();
    let img_d = common::synthetic_png(344, 258, 777);
    let id_d = samserve::core::engine::image_id_of(&img_d);
    let lock_key = format!("samserve:lock:{}:{}:{id_d}", parts[3], parts[4]);
    let set = redis_cmd(redis_port, &["SET", &lock_key, "dead-holder", "PX", "3000"]);
    assert!(set.starts_with("+OK"), "{set}");
    let before = metric_each(&client, &b, "samserve_encoder_runs_total", "").await;
    let waits_before =
        metric_each(&client, &b, "samserve_embedding_store_lock_waits_total", "").await;
    let t = Instant::now();
    let (st, body) = put(&client, b[1], &img_d).await;
    assert_eq!(st, 200, "{body}");
    let d = delta(
        &metric_each(&client, &b, "samserve_encoder_runs_total", "").await,
        &before,
    );
    let waits = common::metric_at(
        &client,
        b[1],
        "samserve_embedding_store_lock_waits_total",
        "outcome=\"holder_gone\"",
    )
    .await;
    println!(
        "(c') dead lock holder: upload took {:?}, encoder runs {d:?}, replica 1 holder_gone waits {waits} (lock waits per replica before: {:?})",
        t.elapsed(),
        waits_before
    );
    assert_eq!(d, vec![0.0, 1.0, 0.0]);

    // (d) SIGKILL one replica under a bounded load through nginx.
    let victim = owner[0];
    let total = 160usize;
    let concurrency = 4usize;
    let done = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, lb, ids, done, next) = (
            client.clone(),
            lb.clone(),
            ids.clone(),
            done.clone(),
            next.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total {
                    break;
                }
                let (st, body) = segment(&client, &lb, &ids[i % ids.len()], &click(i)).await;
                if st != 200 {
                    failures.push((i, st, body.to_string()));
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            failures
        }));
    }
    while done.load(Ordering::SeqCst) < total / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed_at = done.load(Ordering::SeqCst);
    replicas[victim].proc.kill();
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    println!(
        "(d) killed replica {victim} after {killed_at}/{total} requests; failures: {} {failures:?}",
        failures.len()
    );
    assert!(
        failures.len() <= concurrency,
        "more failures than requests in flight at the kill: {failures:?}"
    );
    let alive: Vec<usize> = (0..3).filter(|&r| r != victim).collect();
    let live: Vec<&str> = alive.iter().map(|&r| b[r]).collect();
    // The ids the dead replica owned are now served by survivors, from the store.
    for (id, _) in ids.iter().zip(&owner).filter(|(_, &o)| o == victim) {
        let (st, body) = segment(&client, &lb, id, &click(1)).await;
        assert_eq!(st, 200, "{body}");
    }

    // (e) Redis stopped: no 5xx, requests still served, store errors counted.
    let err_before = metric_each(&client, &live, "samserve_embedding_store_errors_total", "").await;
    redis.kill();
    let mut statuses = Vec::new();
    for s in 0..3 {
        let img = common::synthetic_png(300, 200 + s * 10, 900 + s);
        let id = samserve::core::engine::image_id_of(&img);
        let (st, body) = put(&client, &lb, &img).await;
        assert_eq!(st, 200, "upload while Redis is down: {body}");
        statuses.push(st);
        for i in 0..4 {
            let (st, body) = segment(&client, &lb, &id, &click(i)).await;
            assert_eq!(st, 200, "segment while Redis is down: {body}");
            statuses.push(st);
        }
    }
    let err_after = metric_each(&client, &live, "samserve_embedding_store_errors_total", "").await;
    println!(
        "(e) Redis down: {} requests, statuses {:?}; store errors per live replica {:?}",
        statuses.len(),
        statuses.iter().collect::<std::collections::BTreeSet<_>>(),
        delta(&err_after, &err_before)
    );
    assert!(
        sum(&err_after) > sum(&err_before),
        "store errors are counted"
    );

    // Redis back (empty, same port): the replicas reconnect by themselves and store hits
    // resume: encoded on one survivor, read by the other.
    let _redis2 = start_redis(&redis_exe, redis_port, &dir, 2);
    let (pa, pb) = (live[0], live[1]);
    let resumed_deadline = Instant::now() + Duration::from_secs(60);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let img = common::synthetic_png(280, 220, 2000 + attempts);
        let up = client
            .post(format!("{pa}/v1/images"))
            .body(img.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(up.status(), 200);
        let id = samserve::core::engine::image_id_of(&img);
        let hits0 = common::metric_at(&client, pb, "samserve_embedding_store_hits_total", "").await;
        let (st, body) = segment(&client, pb, &id, &click(0)).await;
        assert!(
            st == 200 || st == 404,
            "no 5xx after Redis returns: {st} {body}"
        );
        let hits1 = common::metric_at(&client, pb, "samserve_embedding_store_hits_total", "").await;
        if st == 200 && hits1 > hits0 {
            break;
        }
        assert!(
            Instant::now() < resumed_deadline,
            "store hits did not resume after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("(e) Redis back: store hits resumed after {attempts} attempt(s)");
    for &r in &alive {
        replicas[r].proc.assert_alive();
    }
    nginx.assert_alive();
}
