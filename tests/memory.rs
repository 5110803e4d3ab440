//! Peak memory of one request, measured on the real server process: its peak RSS (VmHWM) is
//! reset through /proc/PID/clear_refs before each request and read after it. glibc's malloc
//! runs with a fixed mmap threshold (128 KiB), so freed image-sized buffers go back to the
//! kernel and every request's buffers show up in its own peak instead of reusing pages an
//! earlier request left resident.
//!
//! The bound checked (and documented in the README, "Memory"): an upload plus one click
//! (three masks) on a W x H image peaks at most `BASE + PER_PIXEL * W * H` bytes above
//! the RSS before it, whatever its aspect ratio within `--max-aspect-ratio`; images past a
//! header limit are refused before any pixel is decoded.

mod common;

use common::child::ChildServer;

const MIB: u64 = 1024 * 1024;
/// Fixed part of the bound: allocator and runtime scratch, request and answer buffers.
const BASE: u64 = 64 * MIB;
/// Bytes per image pixel: the 8-bit RGB pixels (3), one byte-per-pixel plane per mask
/// being upscaled and encoded (the click's three masks are spread over the cores), the
/// RLE counts.
const PER_PIXEL: u64 = 8;

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

/// Resets the peak to the current RSS; returns the current RSS in bytes.
fn reset_peak(pid: u32) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("clear_refs is writable");
    status_kib(pid, "VmRSS:") * 1024
}

fn peak(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:") * 1024
}

/// A W x H PNG of smooth colour with a disc (so the click finds something).
fn image_png(w: u32, h: u32, bit16_rgba: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let (cx, cy, r) = (w as i64 / 2, h as i64 / 2, (w.min(h) / 3).max(1) as i64);
    let inside = |x: u32, y: u32| {
        let (dx, dy) = (x as i64 - cx, y as i64 - cy);
        dx * dx + dy * dy < r * r
    };
    if bit16_rgba {
        let img = image::ImageBuffer::<image::Rgba<u16>, _>::from_fn(w, h, |x, y| {
            if inside(x, y) {
                image::Rgba([60000, 5000, 5000, 65535])
            } else {
                image::Rgba([20000, 30000, 40000, 65535])
            }
        });
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
    } else {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            if inside(x, y) {
                image::Rgb([230, 30, 30])
            } else {
                image::Rgb([(x % 200) as u8 + 20, (y % 200) as u8 + 20, 150])
            }
        });
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
    }
    out
}

/// Uploads and clicks the centre; returns (upload status, peak bytes above the start).
async fn upload_and_click(s: &ChildServer, png: Vec<u8>, w: u32, h: u32) -> (u16, u64) {
    let before = reset_peak(s.pid());
    let r = s
        .client
        .post(s.url("/v1/images"))
        .header("content-type", "image/png")
        .body(png)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap();
    if status == 200 {
        let id = body["image_id"].as_str().unwrap();
        let r = s
            .client
            .post(s.url(&format!("/v1/images/{id}/segment")))
            .json(&serde_json::json!({"prompts": [{"points": [{"x": w / 2, "y": h / 2, "label": 1}]}]}))
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        let seg: serde_json::Value = r.json().await.unwrap();
        assert_eq!(st, 200, "{seg}");
        assert_eq!(seg["results"][0]["masks"].as_array().unwrap().len(), 3);
        assert_eq!(seg["width"], w);
    }
    (status, peak(s.pid()).saturating_sub(before))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_memory_of_one_request_is_bounded_whatever_the_shape() {
    let s = ChildServer::start(
        &["--max-image-pixels", "64000000", "--log-format", "text"],
        &[("MALLOC_MMAP_THRESHOLD_", "131072")],
    )
    .await;
    // Warm up: the first request pays one-time allocations (thread stacks, ORT arenas).
    let _ = upload_and_click(&s, image_png(320, 240, false), 320, 240).await;

    let bound = |w: u64, h: u64| BASE + PER_PIXEL * w * h;
    let mut report = Vec::new();
    // The widest and tallest images the default --max-aspect-ratio (100) lets through, and a
    // square one of the same pixel count.
    for (w, h) in [(20_000u32, 200u32), (200, 20_000), (2_000, 2_000)] {
        let png = image_png(w, h, false);
        let (st, grew) = upload_and_click(&s, png, w, h).await;
        assert_eq!(st, 200, "{w}x{h}");
        report.push(format!("{w}x{h}: +{} MiB", grew / MIB));
        assert!(
            grew <= bound(w as u64, h as u64),
            "{w}x{h} grew the RSS by {} MiB, over the bound of {} MiB ({report:?})",
            grew / MIB,
            bound(w as u64, h as u64) / MIB
        );
    }
    // Past the aspect limit: refused from the header (413), almost no memory. Before the
    // limit, this 64000000x1 image (62 KB) took the RSS up by 3.5 GB.
    let mut thin = Vec::new();
    image::GrayImage::new(64_000_000, 1)
        .write_to(
            &mut std::io::Cursor::new(&mut thin),
            image::ImageFormat::Png,
        )
        .unwrap();
    let (st, grew) = upload_and_click(&s, thin, 64_000_000, 1).await;
    report.push(format!("64000000x1: {st}, +{} MiB", grew / MIB));
    assert_eq!(st, 413, "{report:?}");
    assert!(grew <= BASE, "{report:?}");
    // A 16-bit RGBA image decodes to 8 bytes per pixel before its conversion to 8-bit RGB:
    // 6000x6000 (288 MB) is over the default --max-decoded-bytes (256 MiB) and refused from
    // the header; 4000x4000 (128 MB) is admitted, and its decoder output adds to the bound.
    let (st, grew) = upload_and_click(&s, image_png(6_000, 6_000, true), 6_000, 6_000).await;
    report.push(format!("6000x6000 RGBA16: {st}, +{} MiB", grew / MIB));
    assert_eq!(st, 413, "{report:?}");
    assert!(grew <= BASE, "{report:?}");
    let (st, grew) = upload_and_click(&s, image_png(4_000, 4_000, true), 4_000, 4_000).await;
    report.push(format!("4000x4000 RGBA16: {st}, +{} MiB", grew / MIB));
    assert_eq!(st, 200, "{report:?}");
    // The 16-bit decoder output (8 bytes per pixel) comes on top of the 8-bit bound.
    assert!(grew <= bound(4_000, 4_000) + 8 * 16_000_000, "{report:?}");
    // A PNG carrying a zlib-compressed ICC profile that inflates to 1 GiB (the file is
    // about 1 MB): before, the header pass alone inflated it up to the image crate's default
    // 512 MiB limit (+511 MB per request). Its metadata is never inflated now: 200, and the
    // same bound as any image of its size.
    let (w, h) = (384u32, 227u32);
    let bomb = with_icc_bomb(&image_png(w, h, false), 1 << 30);
    let (st, grew) = upload_and_click(&s, bomb, w, h).await;
    report.push(format!(
        "{w}x{h} with a 1 GiB iCCP: {st}, +{} MiB",
        grew / MIB
    ));
    assert_eq!(st, 200, "{report:?}");
    assert!(grew <= bound(w as u64, h as u64), "{report:?}");
    eprintln!("peak RSS growth per request: {report:?}");
}

/// A zlib stream that inflates to `size` zero bytes (a multiple of 1 MiB), about `size /
/// 1000` long: one byte-aligned deflate block of 1 MiB of zeros, repeated (every
/// back-reference of a block of zeros reads zeros), then an empty final block and the
/// Adler-32 of the zeros.
fn zlib_zeros(size: u64) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let block = {
        let mut c = Compress::new(Compression::best(), false);
        let mut out = Vec::with_capacity(1 << 16);
        c.compress_vec(&vec![0u8; 1 << 20], &mut out, FlushCompress::Sync)
            .unwrap();
        assert_eq!(c.total_in(), 1 << 20);
        out
    };
    let mut z = vec![0x78, 0xda];
    for _ in 0..size >> 20 {
        z.extend_from_slice(&block);
    }
    z.extend_from_slice(&[0x03, 0x00]); // final fixed-Huffman block with no data
    let adler_b = (size % 65521) as u32; // a = 1, b = size (mod 65521) for zeros
    z.extend_from_slice(&((adler_b << 16) | 1).to_be_bytes());
    z
}

/// The PNG with an `iCCP` chunk before its image data whose profile inflates to `size` bytes.
fn with_icc_bomb(png: &[u8], size: u64) -> Vec<u8> {
    let mut data = b"bomb\0\0".to_vec(); // profile name, NUL, compression method 0
    data.extend_from_slice(&zlib_zeros(size));
    let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
    let mut crc = flate2::Crc::new();
    crc.update(b"iCCP");
    crc.update(&data);
    chunk.extend_from_slice(b"iCCP");
    chunk.extend_from_slice(&data);
    chunk.extend_from_slice(&crc.sum().to_be_bytes());
    // After the signature (8 bytes) and IHDR (25 bytes).
    let mut out = png[..33].to_vec();
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&png[33..]);
    out
}
