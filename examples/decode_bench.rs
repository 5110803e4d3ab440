//! Times DecoderSession::decode for one click, as the server runs it.
use std::time::Instant;
fn main() -> anyhow::Result<()> {
    let env = samserve::runtime::ort_env::init(None)?;
    let files = samserve::runtime::manifest::ModelFiles::embedded_default()?;
    let opts = samserve::runtime::model::SessionOptions {
        encoder_threads: 1, decoder_threads: 1, decoder_workers: 1,
        encoder_device: samserve::runtime::device::Device::Cpu, require_gpu: false,
    };
    let mut s = samserve::runtime::model::load_model(env, &files, opts)?;
    let img = image::RgbImage::new(1024, 768);
    let prep = samserve::runtime::preprocess::prepare(&img, &s.spec);
    let emb = s.encoder.encode(&prep)?;
    let d = &mut s.decoders[0];
    for b in [1usize, 1, 1, 1, 8, 1, 1] {
        let prompts: Vec<_> = (0..b).map(|i| samserve::runtime::model::DecoderPrompt {
            coords: vec![[100.0 + i as f32, 200.0], [0.0, 0.0]], labels: vec![1.0, -1.0],
            mask_input: None, tokens: vec![1, 2, 3] }).collect();
        let mut ts = Vec::new();
        for _ in 0..100 {
            let t = Instant::now();
            d.decode(&emb, &prompts, 64, |_| {})?;
            ts.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ts.sort_by(|a, b| a.total_cmp(b));
        println!("B={b} p50 {:.2} ms", ts[50]);
    }
    Ok(())
}
