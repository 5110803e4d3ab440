//! Image decoding and the reference SAM preprocessing (resize long side, normalize, pad).

use std::io::Cursor;

use image::{ImageDecoder, ImageFormat, ImageReader, RgbImage};

use super::family::Resize;
use super::image_limits::{jpeg_is_complete, DecodeLimits};
use super::model::{EncoderInput, ModelSpec};
use super::png_metadata::{png_size, RangesReader};
use crate::error::ApiError;

/// Allocation budget of an image's metadata and the decoder's own buffers besides its output
/// (ICC profile, text and EXIF chunks, row buffers).
pub const METADATA_BYTES: u64 = 64 << 20;

/// Formats the server decodes.
pub const SUPPORTED_FORMATS: &str = "JPEG, PNG, WebP, BMP, TIFF, GIF";

/// A decoded, upright 8-bit RGB image.
pub struct DecodedImage {
    /// The pixels after EXIF orientation.
    pub rgb: RgbImage,
    /// Short format name, e.g. `png`, for metrics.
    pub format: &'static str,
}

fn format_name(f: ImageFormat) -> Option<&'static str> {
    Some(match f {
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::Png => "png",
        ImageFormat::WebP => "webp",
        ImageFormat::Bmp => "bmp",
        ImageFormat::Tiff => "tiff",
        ImageFormat::Gif => "gif",
        _ => return None,
    })
}

/// Whether the bytes start like an image of a supported format (the format is sniffed from
/// the bytes, as decoding does; nothing is decoded).
pub fn is_supported_image(bytes: &[u8]) -> bool {
    image::guess_format(bytes)
        .ok()
        .and_then(format_name)
        .is_some()
}

/// Whether a media type (lowercase, without parameters) names a format the server decodes.
pub fn is_supported_image_type(media_type: &str) -> bool {
    matches!(
        media_type,
        "image/png"
            | "image/apng"
            | "image/jpeg"
            | "image/jpg"
            | "image/pjpeg"
            | "image/gif"
            | "image/webp"
            | "image/bmp"
            | "image/x-bmp"
            | "image/x-ms-bmp"
            | "image/tiff"
            | "image/tif"
    )
}

/// Decodes image bytes with only a pixel limit; see [`decode_image_with`].
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<DecodedImage, ApiError> {
    decode_image_with(bytes, &DecodeLimits::pixels_only(max_pixels))
}

/// Decodes image bytes: sniffs the format, checks the size, aspect ratio and decoded byte
/// count from the header before decoding, applies the EXIF orientation and converts to 8-bit
/// RGB (alpha dropped, as PIL's `convert("RGB")` does). GIFs yield their first frame.
///
/// Memory: the decoder's output (at most `max_decoded_bytes`) plus the 8-bit RGB copy
/// (3 bytes per pixel) plus the decoder's working buffers (rows for PNG; for a progressive
/// JPEG, libjpeg's coefficient buffer of 2 bytes per sample). Metadata is bounded too: a
/// PNG is decoded without its ICC profile and text chunks (a 1 MB PNG can carry an ICC
/// profile that inflates to 1 GB; see [`super::png_metadata`]), and every pass over the
/// file runs under an allocation budget, the header pass included, so whatever metadata a
/// decoder still reads (EXIF, other formats' profiles, which are stored uncompressed and
/// so at most the body's size) stays within [`METADATA_BYTES`] (413 past it).
pub fn decode_image_with(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedImage, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::InvalidImage("empty image body".into()));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ApiError::InvalidImage(format!("reading image: {e}")))?;
    let format = reader.format().ok_or_else(|| {
        ApiError::UnsupportedMediaType(format!(
            "unrecognized image format (supported: {SUPPORTED_FORMATS})"
        ))
    })?;
    let name = format_name(format).ok_or_else(|| {
        ApiError::UnsupportedMediaType(format!(
            "image format {format:?} is not supported (supported: {SUPPORTED_FORMATS})"
        ))
    })?;
    // PNGs are read without their ICC profile and text chunks (never used, and inflated
    // before any check could run); other formats whole.
    let stream = || match format {
        ImageFormat::Png => RangesReader::png_without_metadata(bytes),
        _ => RangesReader::whole(bytes),
    };
    if let Some((w, h)) = (format == ImageFormat::Png)
        .then(|| png_size(bytes))
        .flatten()
    {
        limits.check_size(name, w, h)?;
    }
    let mut header = ImageReader::with_format(stream(), format);
    let mut header_limits = image::Limits::default();
    header_limits.max_alloc = Some(METADATA_BYTES.min(limits.max_decoded_bytes));
    header.limits(header_limits);
    let (w, h) = header.into_dimensions().map_err(|e| match e {
        image::ImageError::Limits(l) => {
            ApiError::PayloadTooLarge(format!("{name} metadata exceeds the decoding limits: {l}"))
        }
        e => ApiError::InvalidImage(format!("invalid {name} header: {e}")),
    })?;
    limits.check_size(name, w, h)?;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(ApiError::InvalidImage(format!(
            "truncated {name} image: the data ends before its end-of-image marker"
        )));
    }
    let pixels = w as u64 * h as u64;
    let mut reader = ImageReader::with_format(stream(), format);
    let mut alloc_limits = image::Limits::default();
    alloc_limits.max_image_width = Some(w);
    alloc_limits.max_image_height = Some(h);
    // The decoder output (RGBA16 of the allowed size at most, and never past
    // --max-decoded-bytes) plus the metadata budget.
    alloc_limits.max_alloc = Some(
        (pixels * 8).min(limits.max_decoded_bytes) + METADATA_BYTES.min(limits.max_decoded_bytes),
    );
    reader.limits(alloc_limits);
    let corrupt = |e: image::ImageError| match e {
        image::ImageError::Limits(l) => {
            ApiError::PayloadTooLarge(format!("image exceeds decoding limits: {l}"))
        }
        image::ImageError::Unsupported(u) => {
            ApiError::UnsupportedMediaType(format!("unsupported {name} variant: {u}"))
        }
        other => ApiError::InvalidImage(format!("corrupt {name} image: {other}")),
    };
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    limits.check_decoded_bytes(name, w, h, decoder.total_bytes())?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = if format == ImageFormat::Jpeg {
        // The image crate's JPEG decoder (zune-jpeg) differs from libjpeg-turbo, which PIL
        // uses, by up to 4 levels on ~1-4% of pixels (IDCT, chroma upsampling); decode
        // the pixels with libjpeg's own algorithms instead. The image crate's decoder is
        // still used above for the header checks and the EXIF orientation.
        drop(decoder);
        let rgb = decode_jpeg_like_pil(bytes)
            .map_err(|e| ApiError::InvalidImage(format!("corrupt {name} image: {e}")))?;
        if rgb.dimensions() != (w, h) {
            return Err(ApiError::InvalidImage(format!(
                "corrupt {name} image: decoded size {:?} differs from header {w}x{h}",
                rgb.dimensions()
            )));
        }
        image::DynamicImage::ImageRgb8(rgb)
    } else {
        image::DynamicImage::from_decoder(decoder).map_err(corrupt)?
    };
    img.apply_orientation(orientation);
    Ok(DecodedImage {
        rgb: to_rgb8_like_pil(img),
        format: name,
    })
}

/// Decodes a JPEG to RGB bit-exactly as PIL does: libjpeg(-turbo)'s default decoding
/// (ISLOW integer IDCT, fancy chroma upsampling, libjpeg's YCbCr->RGB tables; grayscale
/// replicated), and for CMYK/YCCK PIL's inverted-Adobe CMYK then `cmyk2rgb`. Uses the
/// libjpeg-turbo-derived decoder of `mozjpeg`, built from source with the C compiler.
fn decode_jpeg_like_pil(bytes: &[u8]) -> Result<RgbImage, String> {
    use mozjpeg::{ColorSpace, Decompress};
    // libjpeg reports fatal errors by unwinding out of the C code (mozjpeg's error
    // manager); turn that into an error.
    let decoded = std::panic::catch_unwind(|| -> std::io::Result<(usize, usize, Vec<u8>)> {
        let dec = Decompress::new_mem(bytes)?;
        let (w, h) = dec.size();
        if matches!(
            dec.color_space(),
            ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK
        ) {
            let mut started = dec.to_colorspace(ColorSpace::JCS_CMYK)?;
            let cmyk = started.read_scanlines::<u8>()?;
            started.finish()?;
            // PIL reads CMYK JPEGs as "CMYK;I" (Adobe inverted), then
            // Convert.c cmyk2rgb: out = nk - nk*c/255 (rounded), nk = 255 - k.
            let rgb = cmyk
                .chunks_exact(4)
                .flat_map(|p| {
                    let nk = p[3] as u32; // 255 - (255 - stored k)
                    let ch = |v: u8| {
                        let t = (255 - v as u32) * nk + 128;
                        (nk - (((t >> 8) + t) >> 8)) as u8
                    };
                    [ch(p[0]), ch(p[1]), ch(p[2])]
                })
                .collect();
            return Ok((w, h, rgb));
        }
        let mut started = dec.rgb()?;
        let rgb = started.read_scanlines::<u8>()?;
        started.finish()?;
        Ok((w, h, rgb))
    });
    let (w, h, rgb) = match decoded {
        Ok(r) => r.map_err(|e| e.to_string())?,
        Err(panic) => {
            return Err(panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "libjpeg error".into()))
        }
    };
    RgbImage::from_raw(w as u32, h as u32, rgb).ok_or_else(|| "short pixel buffer".into())
}

/// 8-bit RGB as PIL's `convert("RGB")` makes it: 16-bit colour keeps the high byte (PIL opens
/// such PNGs as 8-bit), 16-bit grayscale ("I;16") is clipped at 255, alpha is dropped.
fn to_rgb8_like_pil(img: image::DynamicImage) -> RgbImage {
    use image::DynamicImage as D;
    let (w, h) = (img.width(), img.height());
    let from = |px: Vec<u8>| RgbImage::from_raw(w, h, px).expect("size matches");
    match img {
        D::ImageRgb16(i) => from(i.into_raw().iter().map(|v| (v >> 8) as u8).collect()),
        D::ImageRgba16(i) => from(
            i.into_raw()
                .chunks_exact(4)
                .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
                .collect(),
        ),
        D::ImageLumaA16(i) => from(
            i.into_raw()
                .chunks_exact(2)
                .flat_map(|p| [(p[0] >> 8) as u8; 3])
                .collect(),
        ),
        D::ImageLuma16(i) => from(
            i.into_raw()
                .iter()
                .flat_map(|v| [(*v).min(255) as u8; 3])
                .collect(),
        ),
        other => other.into_rgb8(),
    }
}

/// The size after resizing the long side to `target`, with the reference rounding
/// (`int(side * scale + 0.5)` in double precision).
pub fn resized_size(width: u32, height: u32, target: usize) -> (u32, u32) {
    let scale = target as f64 / width.max(height) as f64;
    let w = (width as f64 * scale + 0.5) as u32;
    let h = (height as f64 * scale + 0.5) as u32;
    (w.max(1), h.max(1))
}

/// An image converted to the encoder's input tensor.
pub struct PreparedImage {
    /// Original width.
    pub width: u32,
    /// Original height.
    pub height: u32,
    /// Width after the long-side resize.
    pub resized_width: u32,
    /// Height after the long-side resize.
    pub resized_height: u32,
    /// Tensor values, row-major in `shape`.
    pub tensor: Vec<f32>,
    /// Tensor shape.
    pub shape: Vec<usize>,
}

/// The encoder's input for `rgb`, by the family's preprocessing: SAM's (below) or SAM 2's
/// ([`prepare_stretched`]).
pub fn prepare(rgb: &RgbImage, spec: &ModelSpec) -> PreparedImage {
    match spec.kind.resize() {
        Resize::LongSidePad => prepare_long_side(rgb, spec),
        Resize::Stretch => prepare_stretched(rgb, spec),
    }
}

/// A 0-255 constant as the 0-1 one torchvision's `Normalize` gets: `v / 255` rounded to
/// 7 significant digits (f32's), so that 123.675 gives exactly `0.485f32`.
fn unit_constant(v: f32) -> f32 {
    let x = v as f64 / 255.0;
    if x == 0.0 || !x.is_finite() {
        return x as f32;
    }
    let scale = 10f64.powi(6 - x.abs().log10().floor() as i32);
    ((x * scale).round() / scale) as f32
}

/// SAM 2's `SAM2Transforms`: `ToTensor` (x / 255 in float32), `Resize((L, L))` (PyTorch's
/// antialiased bilinear on float planes, aspect ratio not kept), `Normalize(mean, std)`.
pub fn prepare_stretched(rgb: &RgbImage, spec: &ModelSpec) -> PreparedImage {
    let (w, h) = rgb.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    let l = spec.input_size;
    let mut planes = vec![0f32; 3 * wu * hu];
    for (i, px) in rgb.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            planes[c * wu * hu + i] = px[c] as f32 / 255.0;
        }
    }
    let mut t = super::resize_aa::resize_planes_aa(&planes, 3, wu, hu, l, l);
    for (c, plane) in t.chunks_exact_mut(l * l).enumerate() {
        let mean = unit_constant(spec.pixel_mean[c]);
        let std = unit_constant(spec.pixel_std[c]);
        plane.iter_mut().for_each(|v| *v = (*v - mean) / std);
    }
    PreparedImage {
        width: w,
        height: h,
        resized_width: l as u32,
        resized_height: l as u32,
        tensor: t,
        shape: vec![1, 3, l, l],
    }
}

/// SAM's preprocessing: resizes (PIL-compatible antialiased bilinear), then normalizes and
/// zero-pads to `L x L` NCHW, or keeps 0-255 HWC for encoders that normalize inside the
/// graph.
pub fn prepare_long_side(rgb: &RgbImage, spec: &ModelSpec) -> PreparedImage {
    let (w, h) = rgb.dimensions();
    let l = spec.input_size;
    let (nw, nh) = resized_size(w, h, l);
    let resized;
    let pixels: &[u8] = if (nw, nh) == (w, h) {
        rgb.as_raw()
    } else {
        resized = super::resize::resize_rgb8_bilinear(rgb.as_raw(), w, h, nw, nh);
        &resized
    };
    let (nw_us, nh_us) = (nw as usize, nh as usize);
    let (tensor, shape) = match spec.encoder_input {
        EncoderInput::NchwNormalized => {
            let mut t = vec![0f32; 3 * l * l];
            for c in 0..3 {
                let mean = spec.pixel_mean[c];
                let std = spec.pixel_std[c];
                let plane = &mut t[c * l * l..(c + 1) * l * l];
                for y in 0..nh_us {
                    let row = &mut plane[y * l..y * l + nw_us];
                    let src = &pixels[y * nw_us * 3..(y + 1) * nw_us * 3];
                    for (x, v) in row.iter_mut().enumerate() {
                        *v = (src[x * 3 + c] as f32 - mean) / std;
                    }
                }
            }
            (t, vec![1, 3, l, l])
        }
        EncoderInput::HwcRaw => (
            pixels.iter().map(|&p| p as f32).collect(),
            vec![nh_us, nw_us, 3],
        ),
    };
    PreparedImage {
        width: w,
        height: h,
        resized_width: nw,
        resized_height: nh,
        tensor,
        shape,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_bit_conversion_follows_pil() {
        let rgb16 = image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(
            1,
            1,
            vec![0xff80u16, 0x0100, 0x00ff],
        )
        .unwrap();
        let out = to_rgb8_like_pil(image::DynamicImage::ImageRgb16(rgb16));
        assert_eq!(out.as_raw(), &[0xff, 0x01, 0x00]);
        let gray =
            image::ImageBuffer::<image::Luma<u16>, _>::from_raw(2, 1, vec![300u16, 7]).unwrap();
        let out = to_rgb8_like_pil(image::DynamicImage::ImageLuma16(gray));
        assert_eq!(out.as_raw(), &[255, 255, 255, 7, 7, 7]);
    }

    #[test]
    fn unit_constants_are_torchvisions() {
        for (v, want) in [
            (123.675f32, 0.485f32),
            (116.28, 0.456),
            (103.53, 0.406),
            (58.395, 0.229),
            (57.12, 0.224),
            (57.375, 0.225),
        ] {
            assert_eq!(unit_constant(v), want);
        }
    }

    #[test]
    fn resized_size_matches_reference_rounding() {
        // scale = 1024/1200; 777 * scale = 663.04 -> 663
        assert_eq!(resized_size(1200, 777, 1024), (1024, 663));
        assert_eq!(resized_size(97, 211, 512), (235, 512));
        assert_eq!(resized_size(512, 512, 512), (512, 512));
        assert_eq!(resized_size(1, 5000, 1024), (1, 1024));
    }

    /// blake3 of PIL's `exif_transpose(Image.open(f)).convert("RGB").tobytes()`
    /// (Pillow 13, libjpeg-turbo 3.2).
    #[test]
    fn jpeg_decoding_matches_pil_bit_for_bit() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/parity/images/");
        for (file, size, want) in [
            (
                "large_1200x777.jpg",
                (1200, 777),
                "aa6099a33235fce2e097fc10147da2b14d1b1f3fe8e89fad455f37c6e9389c70",
            ),
            (
                "exif6_300x450.jpg",
                (300, 450),
                "043c1fdcfb623892d6a83da14416926a7eaa5830ae6c3130770a471987e671ef",
            ),
        ] {
            let bytes = std::fs::read(format!("{dir}{file}")).unwrap();
            let d = decode_image(&bytes, 1 << 30).unwrap();
            assert_eq!(d.rgb.dimensions(), size, "{file}");
            assert_eq!(
                blake3::hash(d.rgb.as_raw()).to_hex().as_str(),
                want,
                "{file}"
            );
        }
    }

    #[test]
    fn corrupt_jpeg_is_invalid_image() {
        let mut bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/parity/images/scene_640x480.jpg"
        ))
        .unwrap();
        // An unknown marker inside the entropy-coded data is fatal in libjpeg; its error
        // (an unwind out of the C code) must come back as an error, not a crash.
        let n = bytes.len();
        bytes[n / 2..n / 2 + 2].copy_from_slice(&[0xff, 0xb0]);
        let err = decode_image(&bytes, 1 << 30).err().unwrap();
        assert_eq!(err.kind(), crate::error::ErrorKind::InvalidImage);
    }

    #[test]
    fn garbage_is_unsupported_media_type() {
        let err = decode_image(b"definitely not an image", 1 << 30)
            .err()
            .unwrap();
        assert_eq!(err.kind(), crate::error::ErrorKind::UnsupportedMediaType);
    }
}
