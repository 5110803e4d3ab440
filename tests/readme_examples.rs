//! The README's curl examples run top to bottom, as written, against a real server.
//!
//! The `sh` block under "### Examples" is taken from README.md, `localhost:8080` is pointed
//! at a server on an ephemeral loopback port, and the block runs under `bash -e` from the
//! repository root with `curl` made to fail on any HTTP error status. So an example that
//! answers 4xx/5xx (a wrong order, a stale field name, coordinates outside the image) fails
//! this test.

mod common;

use std::process::Command;

/// The first ```sh block after the "### Examples" heading.
fn examples_block(readme: &str) -> String {
    let start = readme
        .find("### Examples")
        .expect("README has an Examples section");
    let rest = &readme[start..];
    let open = rest.find("```sh\n").expect("Examples has an sh block") + "```sh\n".len();
    let close = rest[open..].find("\n```").expect("sh block is closed");
    rest[open..open + close].to_string()
}

#[tokio::test]
async fn readme_curl_examples_run_top_to_bottom() {
    let readme = std::fs::read_to_string(common::repo().join("README.md")).unwrap();
    let block = examples_block(&readme);
    assert!(
        block.contains("localhost:8080"),
        "examples talk to localhost:8080"
    );
    let s = common::TestServer::default().await;
    let host = s.base.trim_start_matches("http://").to_string();
    let script = format!(
        "set -euo pipefail\n\
         curl() {{ command curl --fail-with-body --max-time 120 \"$@\"; }}\n\
         {}\n",
        block.replace("localhost:8080", &host)
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(common::repo())
            .output()
            .expect("bash runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "README examples failed ({}):\n--- stdout (tail)\n{}\n--- stderr\n{}",
        out.status,
        &stdout[stdout.len().saturating_sub(3000)..],
        stderr
    );
    // The block really reached the model: a segment answer and an everything answer.
    assert!(
        stdout.contains("\"results\""),
        "no segment answer in the output"
    );
    assert!(stdout.contains("\"masks\""), "no masks in the output");
}
