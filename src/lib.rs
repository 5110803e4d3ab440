//! samserve: an HTTP inference server for the Segment Anything Model.
//!
//! The crate is split in three layers:
//! - [`http`]: routes, request/response types, OpenAPI; handlers stay thin.
//! - [`core`]: the embedding cache, prompt validation, worker queues and mask algorithms.
//! - [`runtime`]: ONNX Runtime sessions, model loading, image pre- and post-processing.

pub mod config;
pub mod core;
pub mod error;
pub mod http;
pub mod metrics;
pub mod runtime;
