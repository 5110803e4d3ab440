//! Mask encoders against their decoders: a mask built from the input survives the COCO RLE
//! string and the 1-bit PNG unchanged; the same bytes read as an RLE string decode to a mask
//! of the stated size or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use samserve::core::masks::png::encode_png_1bit;
use samserve::core::masks::rle::{decode, decode_with_limit, encode, CocoRle};
use samserve::core::masks::BinaryMask;

fn png_decode(bytes: &[u8]) -> BinaryMask {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().expect("our PNG header reads back");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .expect("our PNG data reads back");
    assert_eq!(info.bit_depth, png::BitDepth::One);
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    let (w, h) = (info.width as usize, info.height as usize);
    let mut data = Vec::with_capacity(w * h);
    for row in buf[..info.line_size * h].chunks(info.line_size) {
        for x in 0..w {
            data.push((row[x / 8] >> (7 - x % 8)) & 1);
        }
    }
    BinaryMask::from_binary(info.width, info.height, data)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (w, h) = (data[0] as u32 % 80 + 1, data[1] as u32 % 80 + 1);
    let bits = &data[2..];
    // Pixels from the input's bits, repeated to fill the mask (runs and noise both occur).
    let n = (w * h) as usize;
    let pixels: Vec<u8> = (0..n)
        .map(|i| {
            if bits.is_empty() {
                0
            } else {
                let b = bits[(i / 8) % bits.len()];
                (b >> (i % 8)) & 1
            }
        })
        .collect();
    let mask = BinaryMask::from_binary(w, h, pixels);

    let rle = encode(&mask);
    assert_eq!(
        decode(&rle).expect("our RLE decodes"),
        mask,
        "RLE round trip"
    );
    assert_eq!(png_decode(&encode_png_1bit(&mask)), mask, "PNG round trip");

    // The raw bytes as a client-supplied RLE.
    let foreign = CocoRle {
        size: [data[0] as u32 * 3, data[1] as u32 * 3],
        counts: String::from_utf8_lossy(bits).into_owned(),
    };
    if let Ok(m) = decode_with_limit(&foreign, 1 << 20) {
        assert_eq!([m.height, m.width], foreign.size);
        assert_eq!(m.data.len(), (m.width * m.height) as usize);
        // What decodes must encode back to the same mask.
        assert_eq!(decode(&encode(&m)).unwrap(), m);
    }
});
