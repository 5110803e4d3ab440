use super::*;

const ID: &str = "ab12";

fn tag() -> ModelTag {
    ModelTag {
        name: "m".into(),
        fingerprint: [7; 16],
        input_size: 1024,
        resize: Resize::LongSidePad,
        tensors: vec![TensorSpec {
            name: SAM_EMBEDDING.into(),
            shape: vec![1, 2, 3, 4],
        }],
    }
}

fn emb() -> Embedding {
    Embedding {
        tensors: vec![EmbeddingTensor {
            name: SAM_EMBEDDING.into(),
            shape: vec![1, 2, 3, 4],
            data: EmbeddingData::F32((0..24).map(|i| i as f32 * 0.37 - 3.0).collect()),
        }],
        width: 640,
        height: 480,
        resized_width: 1024,
        resized_height: 768,
    }
}

fn rules() -> ValueRules {
    ValueRules {
        seal: Seal::Checksum,
        limits: DecodeLimits {
            max_pixels: 16_000_000,
            max_decoded_bytes: u64::MAX,
            max_aspect_ratio: 100,
        },
    }
}

fn value() -> Vec<u8> {
    encode(&tag(), ID, &emb(), &Seal::Checksum).unwrap()
}

/// Offset of the geometry: magic, version, reserved, fingerprint, name, id.
const GEOMETRY_AT: usize = 4 + 2 + 2 + 16 + 2 + 1 + 2 + 4;

fn reseal(bytes: &mut [u8], seal: &Seal) {
    let n = bytes.len() - CHECKSUM_LEN;
    let sum = seal.digest(&bytes[..n]);
    bytes[n..].copy_from_slice(sum.as_bytes());
}

fn refusal(bytes: &[u8]) -> String {
    decode(&tag(), ID, bytes, &rules()).unwrap_err()
}

#[test]
fn round_trip_is_bit_exact_and_the_length_is_known() {
    let mut e = emb();
    let EmbeddingData::F32(v) = &mut e.tensors[0].data else {
        unreachable!()
    };
    v[5] = f32::from_bits(0x0000_0001); // a subnormal survives too
    let bytes = encode(&tag(), ID, &e, &Seal::Checksum).unwrap();
    assert_eq!(bytes.len(), tag().value_len(ID));
    let header = 4 + 2 + 2 + 16 + (2 + 1) + (2 + 4) + 16 + 2 + (2 + 16 + 2 + 2 + 16);
    assert_eq!(bytes.len(), header + 24 * 4 + 32);
    let back = decode(&tag(), ID, &bytes, &rules()).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&back.tensors[0].data.to_f32()),
        bits(&e.tensors[0].data.to_f32())
    );
    assert_eq!((back.width, back.height), (640, 480));
    assert_eq!((back.resized_width, back.resized_height), (1024, 768));
    assert_eq!(back.tensors[0].shape, [1, 2, 3, 4]);
    // The checksum is blake3 of everything before it (the documented layout).
    let n = bytes.len() - 32;
    assert_eq!(&bytes[n..], blake3::hash(&bytes[..n]).as_bytes());
}

#[test]
fn several_named_tensors_round_trip() {
    let mut t = tag();
    t.tensors = vec![
        TensorSpec {
            name: "image_embed".into(),
            shape: vec![1, 2, 2, 2],
        },
        TensorSpec {
            name: "high_res_feats_0".into(),
            shape: vec![1, 1, 4, 4],
        },
    ];
    let a: Vec<f32> = (0..8).map(|v| v as f32).collect();
    let b: Vec<f32> = (0..16).map(|v| -(v as f32)).collect();
    let g = Geometry {
        width: 30,
        height: 20,
        resized_width: 1024,
        resized_height: 683,
    };
    let bytes = encode_tensors(&t, ID, g, &[&a, &b], &Seal::Checksum).unwrap();
    assert_eq!(bytes.len(), t.value_len(ID));
    let (g2, back) = decode_tensors(&t, ID, &bytes, &rules()).unwrap();
    assert_eq!(g2, g);
    assert_eq!(back, vec![a.clone(), b.clone()]);
    // The embedding view: both tensors, by name, in the model's order.
    let e = decode(&t, ID, &bytes, &rules()).unwrap();
    let names: Vec<&str> = e.tensors.iter().map(|t| &*t.name).collect();
    assert_eq!(names, ["image_embed", "high_res_feats_0"]);
    assert_eq!(
        e.tensor("high_res_feats_0").unwrap().data.to_f32().as_ref(),
        &b[..]
    );
    assert_eq!(encode(&t, ID, &e, &Seal::Checksum).unwrap(), bytes);
    // An embedding without one of the model's tensors is not written.
    let mut short = e;
    short.tensors.pop();
    assert!(encode(&t, ID, &short, &Seal::Checksum).is_err());
    // Lengths that do not match the shapes are refused when encoding.
    assert!(encode_tensors(&t, ID, g, &[&a], &Seal::Checksum).is_err());
    assert!(encode_tensors(&t, ID, g, &[&b, &a], &Seal::Checksum).is_err());
    // Tensors in another order (same total length) are refused when decoding.
    let mut swapped = t.clone();
    swapped.tensors.swap(0, 1);
    let other = encode_tensors(&swapped, ID, g, &[&b, &a], &Seal::Checksum).unwrap();
    assert!(decode_tensors(&t, ID, &other, &rules())
        .unwrap_err()
        .contains("out of order"));
}

#[test]
fn a_value_is_bound_to_its_model_and_image() {
    let bytes = value();
    let mut other = tag();
    other.fingerprint[0] = 8;
    assert!(decode(&other, ID, &bytes, &rules())
        .unwrap_err()
        .contains("fingerprint"));
    let mut other = tag();
    other.name = "n".into();
    assert!(decode(&other, ID, &bytes, &rules())
        .unwrap_err()
        .contains("model name"));
    let mut other = tag();
    other.tensors[0].shape = vec![1, 2, 4, 3];
    assert!(decode(&other, ID, &bytes, &rules())
        .unwrap_err()
        .contains("shape"));
    // Another image's value, under this image's key.
    assert!(decode(&tag(), "cd34", &bytes, &rules())
        .unwrap_err()
        .contains("another image"));
}

#[test]
fn damaged_values_are_refused_by_the_checksum() {
    let bytes = value();
    // Any single flipped byte of the payload or the header is caught.
    for at in [
        GEOMETRY_AT,
        GEOMETRY_AT + 3,
        bytes.len() - 40,
        bytes.len() - 33,
    ] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x40;
        assert!(refusal(&bad).contains("checksum"), "byte {at}");
    }
    let mut zeros = bytes.clone();
    let n = zeros.len();
    zeros[n - 32 - 96..n - 32].fill(0);
    assert!(refusal(&zeros).contains("checksum"));
    assert!(refusal(&bytes[..bytes.len() - 1]).contains("bytes"));
    assert!(refusal(&bytes[..10]).contains("bytes"));
    assert!(refusal(&bytes[..5]).contains("truncated"));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(refusal(&longer).contains("bytes"));
    assert!(refusal(b"[0.1, 0.2]").contains("magic"));
    assert!(refusal(b"").contains("truncated"));
}

#[test]
fn other_format_versions_are_refused() {
    let mut bad = value();
    bad[4] = 1;
    assert!(refusal(&bad).contains("version 1"));
    // A value of format version 1 (magic, version, dtype, fingerprint, geometry, shape,
    // name, values) is never read as version 2.
    let mut v1 = b"SAME".to_vec();
    v1.extend_from_slice(&1u16.to_le_bytes());
    v1.extend_from_slice(&0u16.to_le_bytes());
    v1.extend_from_slice(&[7; 16]);
    for v in [640u32, 480, 1024, 768, 1, 2, 3, 4] {
        v1.extend_from_slice(&v.to_le_bytes());
    }
    v1.extend_from_slice(&1u16.to_le_bytes());
    v1.push(b'm');
    v1.extend(std::iter::repeat_n(0u8, 96));
    assert!(refusal(&v1).contains("version 1"));
}

#[test]
fn forged_geometry_and_values_are_refused_even_with_a_valid_checksum() {
    let forged = |at: usize, patch: &[u8]| {
        let mut b = value();
        b[at..at + patch.len()].copy_from_slice(patch);
        reseal(&mut b, &Seal::Checksum);
        refusal(&b)
    };
    let u32s = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>();
    // 65535 x 65535: over the pixel limit.
    let why = forged(GEOMETRY_AT, &u32s(&[65535, 65535, 1024, 1024]));
    assert!(why.contains("pixels"), "{why}");
    // A resized width past the encoder frame, or one that does not follow from the size.
    let why = forged(GEOMETRY_AT, &u32s(&[640, 480, 100_000, 768]));
    assert!(why.contains("does not follow"), "{why}");
    // Width and height swapped (the resized pair no longer matches).
    let why = forged(GEOMETRY_AT, &u32s(&[480, 640, 1024, 768]));
    assert!(why.contains("does not follow"), "{why}");
    // Zero sizes and shapes past the aspect limit.
    let why = forged(GEOMETRY_AT, &u32s(&[0, 480, 1, 768]));
    assert!(why.contains("zero size"), "{why}");
    let why = forged(GEOMETRY_AT, &u32s(&[64_000, 10, 1024, 1]));
    assert!(why.contains("aspect"), "{why}");
    // Non-finite values.
    let n = value().len() - CHECKSUM_LEN;
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let why = forged(n - 8, &bad.to_le_bytes());
        assert!(why.contains("not finite"), "{why}");
    }
    // Reserved field and dtype.
    assert!(forged(6, &[1, 0]).contains("reserved"));
}

#[test]
fn a_keyed_seal_refuses_values_forged_without_the_secret() {
    let keyed = Seal::from_secret(b"replica secret");
    let with_key = ValueRules {
        seal: keyed.clone(),
        ..rules()
    };
    let sealed = encode(&tag(), ID, &emb(), &keyed).unwrap();
    assert!(decode(&tag(), ID, &sealed, &with_key).is_ok());
    // An unkeyed value, or one resealed with plain blake3 after an edit, is refused.
    let mut zeros = sealed.clone();
    let n = zeros.len() - CHECKSUM_LEN;
    zeros[n - 96..n].fill(0);
    reseal(&mut zeros, &Seal::Checksum);
    assert!(decode(&tag(), ID, &zeros, &with_key)
        .unwrap_err()
        .contains("secret"));
    assert!(decode(&tag(), ID, &value(), &with_key).is_err());
    // Another secret: refused; and a keyed value read without a secret: refused.
    let other = ValueRules {
        seal: Seal::from_secret(b"another"),
        ..rules()
    };
    assert!(decode(&tag(), ID, &sealed, &other).is_err());
    assert!(decode(&tag(), ID, &sealed, &rules()).is_err());
    assert_eq!(format!("{keyed:?}"), "Keyed(***)");
}

#[test]
fn geometry_rules() {
    let l = rules().limits;
    let g = |w, h, rw, rh| Geometry {
        width: w,
        height: h,
        resized_width: rw,
        resized_height: rh,
    };
    let sam = Resize::LongSidePad;
    assert!(check_geometry(&g(640, 480, 1024, 768), 1024, sam, &l).is_ok());
    assert!(check_geometry(&g(1, 1, 1024, 1024), 1024, sam, &l).is_ok());
    assert!(check_geometry(&g(640, 480, 1024, 769), 1024, sam, &l).is_err());
    assert!(check_geometry(&g(640, 480, 1024, 768), 512, sam, &l).is_err());
    assert!(check_geometry(&g(4001, 4000, 1024, 1024), 1024, sam, &l).is_err());
    // SAM 2 stretches every image to the whole frame.
    let sam2 = Resize::Stretch;
    assert!(check_geometry(&g(640, 480, 1024, 1024), 1024, sam2, &l).is_ok());
    assert!(check_geometry(&g(640, 480, 1024, 768), 1024, sam2, &l).is_err());
}
