//! Where the encoder runs: CPU, or a CUDA device through ONNX Runtime's CUDA provider.

use std::str::FromStr;

use anyhow::{anyhow, bail};
use ort::session::builder::SessionBuilder;

/// An execution device for the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// ONNX Runtime's default CPU provider.
    Cpu,
    /// CUDA device with this index.
    Cuda(i32),
}

impl FromStr for Device {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<i32>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .map(Device::Cuda)
                    .ok_or_else(|| anyhow!("invalid CUDA device index in '{s}'")),
                None => bail!("unknown device '{s}' (expected cpu, cuda or cuda:N)"),
            },
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Registers the device's execution provider on a session builder. Returns the builder and
/// the device actually used: when CUDA is unavailable the result is CPU with one warning,
/// or an error when `require_gpu` is set.
/// `role` (`encoder`, `decoder`) names the session in messages.
pub fn apply(
    builder: SessionBuilder,
    device: Device,
    require_gpu: bool,
    role: &str,
) -> anyhow::Result<(SessionBuilder, Device)> {
    match device {
        Device::Cpu => Ok((builder, Device::Cpu)),
        Device::Cuda(n) => match register_cuda(builder, n) {
            Ok(b) => Ok((b, device)),
            Err((b, why)) => {
                if require_gpu {
                    bail!("--{role}-device {device} requested with --require-gpu, but {why}");
                }
                tracing::warn!(
                    "{role} device {device} unavailable ({why}); the {role} runs on the CPU"
                );
                Ok((b, Device::Cpu))
            }
        },
    }
}

#[allow(clippy::result_large_err)]
#[cfg(feature = "cuda")]
fn register_cuda(
    builder: SessionBuilder,
    n: i32,
) -> Result<SessionBuilder, (SessionBuilder, String)> {
    use ort::ep::ExecutionProvider;
    match ort::ep::CUDA::is_available() {
        Ok(true) => {}
        Ok(false) => return Err((
            builder,
            "the loaded ONNX Runtime library has no CUDA provider (use the onnxruntime-gpu wheel)"
                .to_string(),
        )),
        Err(e) => return Err((builder, format!("cannot query ONNX Runtime providers: {e}"))),
    }
    let ep = ort::ep::CUDA::default()
        .with_device_id(n)
        .build()
        .error_on_failure();
    builder.with_execution_providers([ep]).map_err(|e| {
        let msg = format!("CUDA provider failed to initialise: {e}");
        (e.recover(), msg)
    })
}

// The error hands the builder back so the caller can continue on CPU.
#[allow(clippy::result_large_err)]
#[cfg(not(feature = "cuda"))]
fn register_cuda(
    builder: SessionBuilder,
    _n: i32,
) -> Result<SessionBuilder, (SessionBuilder, String)> {
    Err((
        builder,
        "this build has no CUDA support (build with `--features cuda`)".to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("CUDA:2".parse::<Device>().unwrap(), Device::Cuda(2));
        assert!("cuda:-1".parse::<Device>().is_err());
        assert!("tpu".parse::<Device>().is_err());
    }
}
