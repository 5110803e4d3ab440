//! Synthetic test images: "scenes" with shapes for cached-image scenarios and the
//! baseline, and cheap unique patterns for cold uploads.

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};

use crate::rng::Rng;

fn random_color(rng: &mut Rng) -> Rgb<u8> {
    Rgb([
        rng.below(256) as u8,
        rng.below(256) as u8,
        rng.below(256) as u8,
    ])
}

/// A `width x height` scene: a smooth two-colour gradient with 6-12 filled rectangles and
/// ellipses in random colours. Same seed, same pixels.
pub fn scene(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut rng = Rng::new(seed);
    let (a, b) = (random_color(&mut rng), random_color(&mut rng));
    let mut img = RgbImage::from_fn(width, height, |x, y| {
        let t = (x + y) as f32 / (width + height).max(1) as f32;
        Rgb([0, 1, 2].map(|c| (a[c] as f32 * (1.0 - t) + b[c] as f32 * t) as u8))
    });
    let shapes = rng.between(6, 12);
    for _ in 0..shapes {
        let color = random_color(&mut rng);
        let w = rng.between(width as u64 / 12 + 1, width as u64 / 3 + 1) as i64;
        let h = rng.between(height as u64 / 12 + 1, height as u64 / 3 + 1) as i64;
        let x0 = rng.below(width as u64) as i64 - w / 2;
        let y0 = rng.below(height as u64) as i64 - h / 2;
        let ellipse = rng.below(2) == 1;
        let (cx, cy) = (x0 as f32 + w as f32 / 2.0, y0 as f32 + h as f32 / 2.0);
        let (rx, ry) = (w as f32 / 2.0, h as f32 / 2.0);
        for y in y0.max(0)..(y0 + h).min(height as i64) {
            for x in x0.max(0)..(x0 + w).min(width as i64) {
                let inside = !ellipse || {
                    let dx = (x as f32 + 0.5 - cx) / rx;
                    let dy = (y as f32 + 0.5 - cy) / ry;
                    dx * dx + dy * dy <= 1.0
                };
                if inside {
                    img.put_pixel(x as u32, y as u32, color);
                }
            }
        }
    }
    img
}

/// A unique `width x height` image for `seed`: 16-pixel blocks of random colours, with the
/// seed's 64 bits stamped into the first row so that no two seeds give the same pixels.
pub fn unique_pattern(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut rng = Rng::new(seed);
    let bw = width.div_ceil(16);
    let bh = height.div_ceil(16);
    let colors: Vec<Rgb<u8>> = (0..bw * bh).map(|_| random_color(&mut rng)).collect();
    let mut img = RgbImage::from_fn(width, height, |x, y| {
        colors[((y / 16) * bw + x / 16) as usize]
    });
    for bit in 0..64u32.min(width) {
        let v = if (seed >> bit) & 1 == 1 { 255 } else { 0 };
        img.put_pixel(bit, 0, Rgb([v, 255 - v, v]));
    }
    img
}

/// PNG bytes of an RGB image (fast compression: the client's CPU time is not the point).
pub fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::with_capacity(img.as_raw().len() / 4);
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Sub)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            ExtendedColorType::Rgb8,
        )
        .expect("encoding a PNG into memory cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_deterministic_and_distinct() {
        assert_eq!(scene(64, 48, 1), scene(64, 48, 1));
        assert_ne!(scene(64, 48, 1), scene(64, 48, 2));
    }

    #[test]
    fn patterns_are_unique_and_decode() {
        let a = png(&unique_pattern(320, 240, 5));
        let b = png(&unique_pattern(320, 240, 6));
        assert_ne!(blake3::hash(&a), blake3::hash(&b));
        let back = image::load_from_memory(&a).unwrap();
        assert_eq!((back.width(), back.height()), (320, 240));
    }
}
