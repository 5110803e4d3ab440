//! Removes from an ONNX model the nodes that only feed outputs the server never reads.
//!
//! ONNX Runtime executes every node of a graph on every run, whatever outputs are fetched.
//! The official SAM decoder export ends with `mask_postprocessing`: two bilinear resizes of
//! all four mask tokens to the input length and then to `orig_im_size`, for every prompt.
//! The server reads only `iou_predictions` and `low_res_masks` and upsamples the tokens it
//! returns itself, so on CPU that tail is about half of each decoder call. Pruning it at load
//! time makes every official-signature decoder (ours, exports of the real checkpoints,
//! third-party exports) pay only for what is used.
//!
//! The model is edited at the protobuf wire level: only `ModelProto.graph`, the graph's
//! `node` and `output` entries are touched; every other field is copied byte for byte, so no
//! schema knowledge beyond those field numbers is needed.

use std::collections::HashSet;

use anyhow::{bail, Context};

// Field numbers from onnx.proto3.
pub(super) const MODEL_GRAPH: u32 = 7;
const GRAPH_NODE: u32 = 1;
const GRAPH_OUTPUT: u32 = 12;
const NODE_INPUT: u32 = 1;
const NODE_OUTPUT: u32 = 2;
const NODE_ATTRIBUTE: u32 = 5;
const ATTRIBUTE_GRAPH: u32 = 6;
const ATTRIBUTE_GRAPHS: u32 = 11;
const VALUE_INFO_NAME: u32 = 1;

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
pub(super) const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

/// One top-level field of a message, as found on the wire.
pub(super) struct Field<'a> {
    pub(super) number: u32,
    pub(super) wire: u8,
    /// The whole encoded field (key included), for verbatim copies.
    raw: &'a [u8],
    /// The payload of a length-delimited field.
    pub(super) payload: &'a [u8],
}

fn read_varint(buf: &[u8], pos: &mut usize) -> anyhow::Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&b) = buf.get(*pos) else {
            bail!("truncated varint");
        };
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    bail!("varint longer than 10 bytes")
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn fields(buf: &[u8]) -> anyhow::Result<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let key = read_varint(buf, &mut pos)?;
        let wire = (key & 7) as u8;
        let number = (key >> 3) as u32;
        let mut payload: &[u8] = &[];
        match wire {
            WIRE_VARINT => {
                read_varint(buf, &mut pos)?;
            }
            WIRE_FIXED64 => pos += 8,
            WIRE_FIXED32 => pos += 4,
            WIRE_LEN => {
                let len = read_varint(buf, &mut pos)? as usize;
                let end = pos.checked_add(len).context("length overflow")?;
                payload = buf.get(pos..end).context("truncated field")?;
                pos = end;
            }
            other => bail!("unsupported wire type {other} (field {number})"),
        }
        if pos > buf.len() {
            bail!("truncated field {number}");
        }
        out.push(Field {
            number,
            wire,
            raw: &buf[start..pos],
            payload,
        });
    }
    Ok(out)
}

pub(super) fn strings(msg: &[u8], number: u32) -> anyhow::Result<Vec<String>> {
    fields(msg)?
        .into_iter()
        .filter(|f| f.number == number && f.wire == WIRE_LEN)
        .map(|f| Ok(String::from_utf8(f.payload.to_vec())?))
        .collect()
}

/// The values of the varint fields numbered `number` of a message.
pub(super) fn varints(msg: &[u8], number: u32) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::new();
    for f in fields(msg)? {
        if f.number == number && f.wire == WIRE_VARINT {
            let mut pos = 0;
            read_varint(f.raw, &mut pos)?; // the key
            out.push(read_varint(f.raw, &mut pos)?);
        }
    }
    Ok(out)
}

/// The payloads of the length-delimited fields numbered `number` of a message.
pub(super) fn messages(msg: &[u8], number: u32) -> anyhow::Result<Vec<&[u8]>> {
    Ok(fields(msg)?
        .into_iter()
        .filter(|f| f.number == number && f.wire == WIRE_LEN)
        .map(|f| f.payload)
        .collect())
}

/// The payloads of the top-level graph's length-delimited fields numbered `number` (its
/// nodes, initializers, ...).
pub(super) fn graph_entries(model: &[u8], number: u32) -> anyhow::Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    for graph in fields(model)?
        .into_iter()
        .filter(|f| f.number == MODEL_GRAPH && f.wire == WIRE_LEN)
    {
        out.extend(
            fields(graph.payload)?
                .into_iter()
                .filter(|f| f.number == number && f.wire == WIRE_LEN)
                .map(|f| f.payload),
        );
    }
    Ok(out)
}

fn push_len_field(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    write_varint(out, (u64::from(number) << 3) | u64::from(WIRE_LEN));
    write_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

fn has_subgraph(node: &[u8]) -> anyhow::Result<bool> {
    for attr in fields(node)?
        .into_iter()
        .filter(|f| f.number == NODE_ATTRIBUTE && f.wire == WIRE_LEN)
    {
        if fields(attr.payload)?
            .iter()
            .any(|f| f.number == ATTRIBUTE_GRAPH || f.number == ATTRIBUTE_GRAPHS)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One length-delimited field, encoded: test models are built from these.
#[cfg(test)]
pub(super) fn len_field(number: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    push_len_field(&mut out, number, payload);
    out
}

/// What [`prune_to_outputs`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Pruned {
    /// The rewritten model.
    pub bytes: Vec<u8>,
    /// Nodes before and after.
    pub nodes: (usize, usize),
}

/// Rewrites `model` so that its graph outputs are only `keep` and its nodes only those the
/// kept outputs depend on. Graph inputs are left declared (a value may become unused; it
/// can still be fed).
///
/// Returns `Ok(None)` when nothing would be removed, or when the graph has control-flow
/// nodes whose subgraphs may read outer values (pruning them would need a deeper walk).
/// Errors when the bytes are not a model or a kept output is missing.
pub fn prune_to_outputs(model: &[u8], keep: &[&str]) -> anyhow::Result<Option<Pruned>> {
    let top = fields(model).context("not an ONNX model")?;
    let graph = top
        .iter()
        .find(|f| f.number == MODEL_GRAPH && f.wire == WIRE_LEN)
        .context("ONNX model has no graph")?;
    let graph_fields = fields(graph.payload).context("malformed ONNX graph")?;

    let mut declared = Vec::new();
    for f in graph_fields.iter().filter(|f| f.number == GRAPH_OUTPUT) {
        declared.push(
            strings(f.payload, VALUE_INFO_NAME)?
                .pop()
                .unwrap_or_default(),
        );
    }
    for k in keep {
        if !declared.iter().any(|d| d == k) {
            bail!("graph has no output '{k}' (outputs: {declared:?})");
        }
    }

    let nodes: Vec<&Field> = graph_fields
        .iter()
        .filter(|f| f.number == GRAPH_NODE)
        .collect();
    // Nodes are stored in topological order, so one backward sweep finds every producer.
    let mut needed: HashSet<String> = keep.iter().map(|s| s.to_string()).collect();
    let mut keep_node = vec![false; nodes.len()];
    for (i, node) in nodes.iter().enumerate().rev() {
        if has_subgraph(node.payload)? {
            return Ok(None);
        }
        let outs = strings(node.payload, NODE_OUTPUT)?;
        if outs.iter().any(|o| needed.contains(o)) {
            keep_node[i] = true;
            needed.extend(strings(node.payload, NODE_INPUT)?);
        }
    }
    let kept = keep_node.iter().filter(|k| **k).count();
    if kept == nodes.len() && declared.len() == keep.len() {
        return Ok(None);
    }

    let mut new_graph = Vec::with_capacity(graph.payload.len());
    let mut node_index = 0;
    for f in &graph_fields {
        match f.number {
            GRAPH_NODE => {
                if keep_node[node_index] {
                    new_graph.extend_from_slice(f.raw);
                }
                node_index += 1;
            }
            GRAPH_OUTPUT => {
                let name = strings(f.payload, VALUE_INFO_NAME)?
                    .pop()
                    .unwrap_or_default();
                if keep.contains(&name.as_str()) {
                    new_graph.extend_from_slice(f.raw);
                }
            }
            _ => new_graph.extend_from_slice(f.raw),
        }
    }
    let mut out = Vec::with_capacity(model.len());
    for f in &top {
        if std::ptr::eq(f.raw, graph.raw) {
            push_len_field(&mut out, MODEL_GRAPH, &new_graph);
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    Ok(Some(Pruned {
        bytes: out,
        nodes: (nodes.len(), kept),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(inputs: &[&str], outputs: &[&str]) -> Vec<u8> {
        let mut n = Vec::new();
        for i in inputs {
            push_len_field(&mut n, NODE_INPUT, i.as_bytes());
        }
        for o in outputs {
            push_len_field(&mut n, NODE_OUTPUT, o.as_bytes());
        }
        push_len_field(&mut n, 4, b"Relu");
        n
    }

    fn value_info(name: &str) -> Vec<u8> {
        let mut v = Vec::new();
        push_len_field(&mut v, VALUE_INFO_NAME, name.as_bytes());
        v
    }

    fn model(nodes: &[Vec<u8>], outputs: &[&str]) -> Vec<u8> {
        let mut g = Vec::new();
        for n in nodes {
            push_len_field(&mut g, GRAPH_NODE, n);
        }
        push_len_field(&mut g, 2, b"graph-name");
        for o in outputs {
            push_len_field(&mut g, GRAPH_OUTPUT, &value_info(o));
        }
        let mut m = Vec::new();
        // ir_version = 8 (varint) before and opset import after the graph.
        m.extend_from_slice(&[0x08, 0x08]);
        push_len_field(&mut m, MODEL_GRAPH, &g);
        push_len_field(&mut m, 8, b"\x0a\x00\x10\x11");
        m
    }

    #[test]
    fn keeps_only_the_ancestors_of_kept_outputs() {
        let full = model(
            &[
                node(&["x"], &["a"]),
                node(&["a"], &["keep"]),
                node(&["a"], &["b"]),
                node(&["b", "keep"], &["drop"]),
            ],
            &["keep", "drop"],
        );
        let pruned = prune_to_outputs(&full, &["keep"]).unwrap().unwrap();
        assert_eq!(pruned.nodes, (4, 2));
        let expected = model(&[node(&["x"], &["a"]), node(&["a"], &["keep"])], &["keep"]);
        assert_eq!(pruned.bytes, expected);
    }

    #[test]
    fn nothing_to_remove_is_none() {
        let full = model(&[node(&["x"], &["y"])], &["y"]);
        assert_eq!(prune_to_outputs(&full, &["y"]).unwrap(), None);
    }

    #[test]
    fn missing_output_and_garbage_are_errors() {
        let full = model(&[node(&["x"], &["y"])], &["y"]);
        assert!(prune_to_outputs(&full, &["z"]).is_err());
        assert!(prune_to_outputs(b"\xff\xff\xff", &["y"]).is_err());
    }

    #[test]
    fn subgraphs_are_left_alone() {
        let mut attr = Vec::new();
        push_len_field(&mut attr, ATTRIBUTE_GRAPH, b"");
        let mut n = node(&["x"], &["y"]);
        push_len_field(&mut n, NODE_ATTRIBUTE, &attr);
        let full = model(&[n, node(&["x"], &["z"])], &["y", "z"]);
        assert_eq!(prune_to_outputs(&full, &["y"]).unwrap(), None);
    }
}
