//! `samserve embed` prewarms a real Redis with a folder of images, resumes where a previous
//! run stopped, reports failures, and a server replica pointed at the same store then
//! serves those images with zero encoder runs.
//!
//! Needs redis-server (`make cluster-deps`, run by `make test`); SAMSERVE_SKIP_CLUSTER_TEST=1
//! skips it on purpose.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::child::ChildServer;
use common::redis::{find_redis, Redis};
use serde_json::{json, Value};

fn embed(args: &[&str], paths: &[&Path]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_samserve"))
        .arg("embed")
        .args(["--encoder-threads", "1"])
        .args(args)
        .args(paths)
        .env_remove("RUST_LOG")
        .output()
        .expect("samserve embed runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn dataset() -> (PathBuf, Vec<PathBuf>) {
    let dir = std::env::temp_dir().join(format!("samserve-embed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let heldout = common::repo().join("tests/fixtures/heldout");
    let files = vec![dir.join("a.png"), dir.join("b.PNG"), dir.join("sub/c.png")];
    for (i, f) in files.iter().enumerate() {
        std::fs::copy(heldout.join(format!("scene_150000{i}.png")), f).unwrap();
    }
    // Not an image extension: not picked up from the folder.
    std::fs::write(dir.join("notes.txt"), "labels go here\n").unwrap();
    (dir, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_prewarms_redis_and_a_replica_serves_without_encoding() {
    let Some(exe) = find_redis() else {
        eprintln!("skipped: SAMSERVE_SKIP_CLUSTER_TEST=1");
        return;
    };
    let redis = Redis::start(&exe);
    let url = redis.url();
    let (dir, files) = dataset();

    // 1. One file first (an interrupted run), then the folder: the second run skips it.
    let (ok, out, err) = embed(&["--store", &url], &[&files[0]]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("1 images: 1 embedded, 0 already in the store, 0 failed; 1 encoder runs"),
        "{out}\n{err}"
    );
    let (ok, out, err) = embed(&["--store", &url], &[&dir]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("3 images: 2 embedded, 1 already in the store, 0 failed; 2 encoder runs"),
        "{out}\n{err}"
    );
    // Not a terminal: one progress line per image on stderr.
    assert_eq!(err.matches("already in the store").count(), 1, "{err}");
    assert_eq!(err.matches(": embedded").count(), 2, "{err}");
    assert!(err.contains("[3/3]"), "{err}");
    // 2. Everything there: a rerun encodes nothing.
    let (ok, out, _) = embed(&["--store", &url], &[&dir]);
    assert!(ok);
    assert!(
        out.contains("3 images: 0 embedded, 3 already in the store, 0 failed; 0 encoder runs"),
        "{out}"
    );

    // 3. A failure is reported, the rest still done, and the exit status says so.
    let bad = dir.join("broken.png");
    let mut bytes = std::fs::read(&files[0]).unwrap();
    bytes.truncate(bytes.len() / 3);
    std::fs::write(&bad, &bytes).unwrap();
    let (ok, out, _) = embed(&["--store", &url], &[&bad, &files[1]]);
    assert!(!ok, "a failed image must fail the run: {out}");
    assert!(
        out.contains("2 images: 0 embedded, 1 already in the store, 1 failed"),
        "{out}"
    );
    assert!(
        out.contains("failed: ") && out.contains("broken.png: corrupt png image"),
        "{out}"
    );
    std::fs::remove_file(&bad).unwrap();

    // 4. A replica on the same store serves the images without running its encoder.
    let replica = ChildServer::start(&["--embedding-store", &url], &[]).await;
    for f in &files {
        let r = replica
            .client
            .post(replica.url("/v1/images"))
            .header("content-type", "image/png")
            .body(std::fs::read(f).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["cached"], true, "{b}");
        let id = b["image_id"].as_str().unwrap();
        let r = replica
            .client
            .post(replica.url(&format!("/v1/images/{id}/segment")))
            .json(&json!({"prompts": [{"points": [{"x": 190, "y": 190}]}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let runs = common::metric_at(
        &replica.client,
        &replica.base,
        "samserve_encoder_runs_total",
        "",
    )
    .await;
    let hits = common::metric_at(
        &replica.client,
        &replica.base,
        "samserve_embedding_store_hits_total",
        "",
    )
    .await;
    assert_eq!(runs, 0.0, "the replica ran its encoder");
    assert_eq!(hits, 3.0);

    // 5. No store, no work: a clear error before loading anything heavy.
    drop(replica);
    drop(redis);
    let (ok, _, err) = embed(&["--store", &url, "--store-timeout-ms", "300"], &[&dir]);
    assert!(!ok);
    assert!(err.contains("does not answer"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
