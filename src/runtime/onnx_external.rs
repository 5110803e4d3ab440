//! ONNX external data: models past protobuf's 2 GB limit (the ViT-L and ViT-H encoders)
//! keep their weights in files beside the `.onnx`, named by each initializer's
//! `external_data` entry `location`. ONNX Runtime resolves those names relative to the model
//! file, so such a model must be loaded from its path, not from bytes.

use std::collections::BTreeSet;

use super::onnx_prune::{fields, graph_entries, strings, WIRE_LEN};

// Field numbers from onnx.proto3.
const GRAPH_INITIALIZER: u32 = 5;
const TENSOR_EXTERNAL_DATA: u32 = 13;
const ENTRY_KEY: u32 = 1;
const ENTRY_VALUE: u32 = 2;

/// The distinct external data files a model's initializers name (empty when every weight is
/// inside the `.onnx`), in sorted order.
pub fn external_data_files(model: &[u8]) -> anyhow::Result<Vec<String>> {
    let mut out = BTreeSet::new();
    for init in graph_entries(model, GRAPH_INITIALIZER)? {
        for entry in fields(init)?
            .into_iter()
            .filter(|f| f.number == TENSOR_EXTERNAL_DATA && f.wire == WIRE_LEN)
        {
            if strings(entry.payload, ENTRY_KEY)?
                .iter()
                .any(|k| k == "location")
            {
                out.extend(strings(entry.payload, ENTRY_VALUE)?);
            }
        }
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::onnx_prune::{len_field, MODEL_GRAPH};

    #[test]
    fn finds_the_locations_of_external_initializers() {
        let entry = |k: &str, v: &str| {
            let mut e = len_field(ENTRY_KEY, k.as_bytes());
            e.extend(len_field(ENTRY_VALUE, v.as_bytes()));
            len_field(TENSOR_EXTERNAL_DATA, &e)
        };
        let mut t1 = len_field(8, b"w1"); // TensorProto.name
        t1.extend(entry("location", "enc.onnx.data"));
        t1.extend(entry("offset", "0"));
        let mut t2 = len_field(8, b"w2");
        t2.extend(entry("location", "enc.onnx.data"));
        let inline = len_field(8, b"b");
        let mut graph = len_field(GRAPH_INITIALIZER, &t1);
        graph.extend(len_field(GRAPH_INITIALIZER, &t2));
        graph.extend(len_field(GRAPH_INITIALIZER, &inline));
        let model = len_field(MODEL_GRAPH, &graph);
        assert_eq!(external_data_files(&model).unwrap(), vec!["enc.onnx.data"]);
        let plain = len_field(MODEL_GRAPH, &len_field(GRAPH_INITIALIZER, &inline));
        assert!(external_data_files(&plain).unwrap().is_empty());
    }
}
