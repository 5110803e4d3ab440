//! Locating and loading the ONNX Runtime shared library (ort's `load-dynamic`).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, Context};
use ort::environment::Environment;

static ENV: OnceLock<Environment> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// Candidate locations of `libonnxruntime.so`, in the order they are tried.
fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(PathBuf::from(p));
    }
    let rel = Path::new(".ort/lib/libonnxruntime.so");
    if let Ok(cwd) = std::env::current_dir() {
        out.push(cwd.join(rel));
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/release/samserve -> repo root is two levels up.
        for dir in exe.ancestors().skip(1).take(4) {
            out.push(dir.join(rel));
        }
    }
    out.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel));
    out
}

/// Loads ONNX Runtime once per process and returns the shared environment.
///
/// Later calls return the environment created by the first one, whatever path they pass.
pub fn init(explicit: Option<&Path>) -> anyhow::Result<&'static Environment> {
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    // Loading the library twice from racing threads is not allowed; serialize first use.
    let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    let tried = candidates(explicit);
    let path = tried.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        anyhow!(
            "libonnxruntime.so not found; tried {:?}. Run `make ort` or pass --ort-lib",
            tried
        )
    })?;
    let builder = ort::init_from(&path)
        .map_err(|e| anyhow!("loading ONNX Runtime from {}: {e}", path.display()))?;
    let env = builder
        .with_name("samserve")
        .build()
        .context("creating the ONNX Runtime environment")?;
    tracing::info!(path = %path.display(), "ONNX Runtime loaded");
    Ok(ENV.get_or_init(|| env))
}
