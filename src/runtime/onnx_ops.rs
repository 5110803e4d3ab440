//! Which operators a graph uses, read from the ONNX bytes at the protobuf wire level (as
//! [`super::onnx_prune`] does), for decisions the session API cannot answer.

use std::collections::BTreeSet;

use super::onnx_prune::{graph_entries, strings};

// Field numbers from onnx.proto3.
const GRAPH_NODE: u32 = 1;
const NODE_OP_TYPE: u32 = 4;

/// The distinct `op_type`s of the top-level graph's nodes.
pub fn op_types(model: &[u8]) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for node in graph_entries(model, GRAPH_NODE)? {
        out.extend(strings(node, NODE_OP_TYPE)?);
    }
    Ok(out)
}

/// Whether the graph quantizes activations on the fly with one scale per tensor
/// (`DynamicQuantizeLinear`, what ONNX Runtime's dynamic int8 quantization inserts before
/// every int8 MatMul). The scale comes from the largest value in the whole tensor, batch
/// axis included, so one batch row's answer then depends on the other rows in its call.
pub fn quantizes_per_batch(model: &[u8]) -> anyhow::Result<bool> {
    Ok(op_types(model)?.contains("DynamicQuantizeLinear"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::onnx_prune::{len_field, MODEL_GRAPH};

    fn model(ops: &[&str]) -> Vec<u8> {
        let nodes: Vec<u8> = ops
            .iter()
            .flat_map(|op| len_field(GRAPH_NODE, &len_field(NODE_OP_TYPE, op.as_bytes())))
            .collect();
        len_field(MODEL_GRAPH, &nodes)
    }

    #[test]
    fn reads_the_op_types_of_the_graph() {
        let m = model(&["MatMul", "DynamicQuantizeLinear", "MatMulInteger", "MatMul"]);
        let ops: Vec<String> = op_types(&m).unwrap().into_iter().collect();
        assert_eq!(ops, ["DynamicQuantizeLinear", "MatMul", "MatMulInteger"]);
        assert!(quantizes_per_batch(&m).unwrap());
        assert!(!quantizes_per_batch(&model(&["MatMul", "Add"])).unwrap());
    }

    #[test]
    fn the_shipped_models_are_told_apart() {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let read = |p: &str| std::fs::read(repo.join(p)).unwrap();
        assert!(!quantizes_per_batch(&read("models/sam-tiny/decoder.onnx")).unwrap());
        assert!(quantizes_per_batch(&read("models/sam-tiny-int8/decoder.onnx")).unwrap());
    }
}
