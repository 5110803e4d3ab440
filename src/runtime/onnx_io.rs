//! The declared inputs and outputs of an ONNX graph (names, element types, shapes), read
//! from the file's bytes at the protobuf wire level (see [`super::onnx_prune`]), so that a
//! folder of ONNX files can be recognized before any session exists.

use super::onnx_prune::{graph_entries, messages, strings, varints};

// Field numbers from onnx.proto3.
const GRAPH_INITIALIZER: u32 = 5;
const GRAPH_INPUT: u32 = 11;
const GRAPH_OUTPUT: u32 = 12;
const TENSOR_NAME: u32 = 8;
const VALUE_INFO_NAME: u32 = 1;
const VALUE_INFO_TYPE: u32 = 2;
const TYPE_TENSOR: u32 = 1;
const TENSOR_TYPE_ELEM: u32 = 1;
const TENSOR_TYPE_SHAPE: u32 = 2;
const SHAPE_DIM: u32 = 1;
const DIM_VALUE: u32 = 1;

/// `TensorProto.DataType` values the server tells apart.
pub const ELEM_FLOAT: i32 = 1;
/// int64.
pub const ELEM_INT64: i32 = 7;

/// One declared graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Io {
    /// Name.
    pub name: String,
    /// `TensorProto.DataType` (0 when not a tensor or not declared).
    pub elem_type: i32,
    /// Dimensions; -1 for a symbolic or unknown one. Empty when the shape is not declared.
    pub dims: Vec<i64>,
}

impl std::fmt::Display for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ty = match self.elem_type {
            ELEM_FLOAT => "f32",
            ELEM_INT64 => "i64",
            _ => "?",
        };
        let dims: Vec<String> = self
            .dims
            .iter()
            .map(|d| if *d < 0 { "?".into() } else { d.to_string() })
            .collect();
        write!(f, "{} {ty}[{}]", self.name, dims.join(","))
    }
}

/// A graph's inputs (initializers excluded) and outputs.
#[derive(Debug, Clone, Default)]
pub struct GraphIo {
    /// Inputs to feed.
    pub inputs: Vec<Io>,
    /// Outputs.
    pub outputs: Vec<Io>,
}

impl GraphIo {
    /// The input names.
    pub fn input_names(&self) -> Vec<&str> {
        self.inputs.iter().map(|i| i.name.as_str()).collect()
    }

    /// The output names.
    pub fn output_names(&self) -> Vec<&str> {
        self.outputs.iter().map(|i| i.name.as_str()).collect()
    }

    /// `inputs: [...]; outputs: [...]`, for messages.
    pub fn describe(&self) -> String {
        let list = |v: &[Io]| v.iter().map(Io::to_string).collect::<Vec<_>>().join(", ");
        format!(
            "inputs [{}], outputs [{}]",
            list(&self.inputs),
            list(&self.outputs)
        )
    }
}

fn io(value_info: &[u8]) -> anyhow::Result<Io> {
    let name = strings(value_info, VALUE_INFO_NAME)?
        .pop()
        .unwrap_or_default();
    let mut elem_type = 0;
    let mut dims = Vec::new();
    for ty in messages(value_info, VALUE_INFO_TYPE)? {
        for tensor in messages(ty, TYPE_TENSOR)? {
            elem_type = varints(tensor, TENSOR_TYPE_ELEM)?
                .pop()
                .map(|v| v as i32)
                .unwrap_or(0);
            for shape in messages(tensor, TENSOR_TYPE_SHAPE)? {
                for dim in messages(shape, SHAPE_DIM)? {
                    dims.push(
                        varints(dim, DIM_VALUE)?
                            .pop()
                            .map(|v| v as i64)
                            .unwrap_or(-1),
                    );
                }
            }
        }
    }
    Ok(Io {
        name,
        elem_type,
        dims,
    })
}

/// The declared inputs and outputs of `model`'s top-level graph.
pub fn graph_io(model: &[u8]) -> anyhow::Result<GraphIo> {
    let mut initializers = std::collections::HashSet::new();
    for t in graph_entries(model, GRAPH_INITIALIZER)? {
        initializers.extend(strings(t, TENSOR_NAME)?);
    }
    let inputs = graph_entries(model, GRAPH_INPUT)?
        .into_iter()
        .map(io)
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .filter(|i| !initializers.contains(&i.name))
        .collect();
    let outputs = graph_entries(model, GRAPH_OUTPUT)?
        .into_iter()
        .map(io)
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(GraphIo { inputs, outputs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_default_decoder() {
        let bytes = include_bytes!("../../models/sam-tiny/decoder.onnx");
        let g = graph_io(bytes).unwrap();
        assert_eq!(
            g.input_names(),
            [
                "image_embeddings",
                "point_coords",
                "point_labels",
                "mask_input",
                "has_mask_input",
                "orig_im_size"
            ]
        );
        let coords = &g.inputs[1];
        assert_eq!(coords.elem_type, ELEM_FLOAT);
        assert_eq!(coords.dims, [-1, -1, 2]);
        assert!(g.output_names().contains(&"low_res_masks"));
        assert!(
            graph_io(b"not a model at all").is_err() || graph_io(b"").unwrap().inputs.is_empty()
        );
    }
}
