//! Model runtime: ONNX Runtime sessions, model families, model loading, pre- and
//! post-processing.

pub mod decoder;
pub mod device;
pub mod embedding;
pub mod encoder;
pub mod family;
pub mod image_limits;
pub mod infer;
pub mod manifest;
mod mask_tiles;
pub mod model;
pub mod onnx_external;
pub mod onnx_io;
pub mod onnx_ops;
pub mod onnx_prune;
pub mod ort_env;
pub mod png_metadata;
pub mod preprocess;
pub mod prompt;
pub mod resize;
pub mod resize_aa;
pub mod signature;
pub mod text;
