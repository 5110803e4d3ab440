//! Phrase tokenization from a Hugging Face `tokenizer.json`, with the `tokenizers` crate
//! (the same library the Python tooling uses, so the ids match; tests/text.rs checks them
//! against fixtures written by tools/export_text.py).

use anyhow::anyhow;
use tokenizers::Tokenizer;

/// A loaded tokenizer. Padding is switched off (one phrase per run, no padding needed);
/// truncation stays as `tokenizer.json` declares it.
pub struct PhraseTokenizer {
    inner: Tokenizer,
}

impl PhraseTokenizer {
    /// Parses `tokenizer.json` bytes.
    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Self> {
        let mut inner = Tokenizer::from_bytes(bytes).map_err(|e| anyhow!("tokenizer.json: {e}"))?;
        inner.with_padding(None);
        Ok(PhraseTokenizer { inner })
    }

    /// Token ids of one phrase, special tokens included.
    pub fn ids(&self, text: &str) -> anyhow::Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }
}
