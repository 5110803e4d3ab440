//! Model runtime: ONNX Runtime sessions, model loading, pre- and post-processing.

pub mod device;
pub mod embedding;
pub mod image_limits;
pub mod manifest;
pub mod model;
pub mod onnx_external;
pub mod onnx_ops;
pub mod onnx_prune;
pub mod ort_env;
pub mod png_metadata;
pub mod preprocess;
pub mod resize;
pub mod text;
