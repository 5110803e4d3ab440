//! Rules the server enforces that utoipa's derive cannot write, added to the generated
//! document so that what it calls valid is what the server accepts (generated-input
//! testing, `make fuzz-api`, sends exactly what the document allows).

use serde_json::{json, Value};

/// Image types whose bodies are documented. The server sniffs the format from the bytes and
/// also takes BMP, TIFF and `application/octet-stream` (see the request body descriptions);
/// naming the types tells clients and generators that the body is an image file of that
/// type, which `format: binary` alone does not.
pub const IMAGE_MEDIA_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// Custom string format of base64 image fields: a base64-encoded image file (JSON Schema
/// has no way to say "decodes to a valid image"; generators are told by this name).
pub const IMAGE_BASE64_FORMAT: &str = "image-base64";

/// Applies every rule to the document.
pub fn apply(doc: &mut Value) {
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        if let Some(grids) = schemas
            .get_mut("AmgParams")
            .and_then(|s| s.pointer_mut("/properties/point_grids"))
        {
            // One grid per crop layer, each 1 to MAX_GRID_POINTS `[x, y]` pairs within [0, 1]
            // (a grid per layer up to crop_n_layers is a cross-field rule: 422).
            grids["minItems"] = json!(1);
            grids["items"]["minItems"] = json!(1);
            grids["items"]["maxItems"] = json!(crate::core::amg::MAX_GRID_POINTS);
            grids["items"]["items"]["minItems"] = json!(2);
            grids["items"]["items"]["maxItems"] = json!(2);
            grids["items"]["items"]["items"]["minimum"] = json!(0.0);
            grids["items"]["items"]["items"]["maximum"] = json!(1.0);
        }
        // After the grid rule: the flat everything schemas copy the parameters.
        everything_rules(schemas);
        // The server refuses unknown fields and multipart parts.
        for name in ["ImageJson", "ImageForm", "SegmentForm", "EverythingForm"] {
            if let Some(schema) = schemas.get_mut(name) {
                schema["additionalProperties"] = json!(false);
            }
        }
        if let Some(prompt) = schemas.get_mut("Prompt") {
            prompt_rules(prompt);
        }
        for name in [
            "ImageJson",
            "InlineSegmentRequest",
            "InlineEverythingRequest",
        ] {
            if let Some(image) = schemas.get_mut(name).and_then(|s| image_property(s)) {
                image["format"] = json!(IMAGE_BASE64_FORMAT);
                image["minLength"] = json!(1);
            }
        }
    }
    if let Some(paths) = doc.pointer_mut("/paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                if let Some(content) = op
                    .pointer_mut("/requestBody/content")
                    .and_then(Value::as_object_mut)
                {
                    body_rules(content);
                }
            }
        }
    }
}

/// The `image` property of an object schema, also inside an `allOf`.
fn image_property(schema: &mut Value) -> Option<&mut Value> {
    if schema.pointer("/properties/image").is_some() {
        return schema.pointer_mut("/properties/image");
    }
    schema
        .get_mut("allOf")?
        .as_array_mut()?
        .iter_mut()
        .find(|s| s.pointer("/properties/image").is_some())?
        .pointer_mut("/properties/image")
}

/// A prompt needs something to segment: non-empty points, a box, a mask handle or a phrase
/// (the server answers 422 `invalid_prompt` otherwise); a phrase takes no points and no
/// mask handle, and `max_masks` applies to phrases only.
fn prompt_rules(prompt: &mut Value) {
    let has =
        |field: &str, schema: Value| json!({"required": [field], "properties": {field: schema}});
    let points = || has("points", json!({"minItems": 1}));
    let text = || has("text", json!({"type": "string"}));
    let mask = || has("mask_input", json!({"type": "string"}));
    let max_masks = || has("max_masks", json!({"type": "integer"}));
    let multimask = || has("multimask_output", json!({"type": "boolean"}));
    prompt["anyOf"] = json!([
        points(),
        has("box", json!({"type": "array"})),
        mask(),
        text()
    ]);
    prompt["not"] = json!({"anyOf": [
        {"allOf": [text(), points()]},
        {"allOf": [text(), mask()]},
        {"allOf": [text(), multimask()]},
        {"allOf": [max_masks(), {"not": text()}]},
    ]});
    if let Some(props) = prompt.get_mut("properties") {
        // A phrase must have a non-blank character.
        props["text"]["pattern"] = json!("\\S");
        props["max_masks"]["minimum"] = json!(1);
        props["max_masks"]["maximum"] = json!(crate::core::text_search::MAX_TEXT_MASKS);
    }
}

/// Raw image bodies are named by image type, and multipart `image` parts carry one.
fn body_rules(content: &mut serde_json::Map<String, Value>) {
    if let Some(raw) = content.remove("application/octet-stream") {
        for mt in IMAGE_MEDIA_TYPES {
            content.insert(mt.to_string(), raw.clone());
        }
    }
    if let Some(form) = content.get_mut("multipart/form-data") {
        form["encoding"] = json!({"image": {"contentType": IMAGE_MEDIA_TYPES.join(", ")}});
    }
}

/// A segment-everything body is one flat object: the generator's parameters and `output`,
/// `text`, `text_threshold` side by side, nothing else (the server refuses unknown fields).
/// utoipa writes the flattened parameters as an `allOf` whose first member forbids every
/// property it does not list, which would make any body with `output` invalid; the flat
/// object says what the server does. The one-shot JSON body adds the required `image`, and
/// the multipart form's `request` part is that object (or absent), never `null`.
fn everything_rules(schemas: &mut serde_json::Map<String, Value>) {
    let Some(params) = schemas
        .get("AmgParams")
        .and_then(|s| s.get("properties"))
        .cloned()
    else {
        return;
    };
    let Some(request) = schemas.get("EverythingRequest").cloned() else {
        return;
    };
    let mut properties = params.as_object().cloned().unwrap_or_default();
    for member in request["allOf"].as_array().into_iter().flatten() {
        for (k, v) in member["properties"].as_object().into_iter().flatten() {
            properties.insert(k.clone(), v.clone());
        }
    }
    let flat = json!({
        "type": "object",
        "description": request["description"],
        "properties": properties,
        "additionalProperties": false,
    });
    if let Some(inline) = schemas.get_mut("InlineEverythingRequest") {
        let image = image_property(inline)
            .cloned()
            .unwrap_or_else(|| json!({"type": "string"}));
        let mut with_image = flat.clone();
        with_image["description"] = inline["description"].clone();
        with_image["properties"]["image"] = image;
        with_image["required"] = json!(["image"]);
        *inline = with_image;
    }
    schemas.insert("EverythingRequest".into(), flat);
    if let Some(part) = schemas
        .get_mut("EverythingForm")
        .and_then(|s| s.pointer_mut("/properties/request"))
    {
        let description = part["oneOf"][1]["description"].clone();
        *part =
            json!({"$ref": "#/components/schemas/EverythingRequest", "description": description});
    }
}
