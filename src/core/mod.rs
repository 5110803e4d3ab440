//! The serving core: cache, prompts, workers and mask algorithms.

pub mod amg;
pub mod cache;
pub mod decode_gate;
pub mod downloads;
pub mod engine;
pub mod everything;
pub mod lenient;
pub mod mask_store;
pub mod masks;
pub mod prewarm;
pub mod prompts;
pub mod store;
pub mod text_search;
pub mod workers;
