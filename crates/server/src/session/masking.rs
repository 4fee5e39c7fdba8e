//! Replacing a job's secret values by `***` in its output, before anything is stored or sent.
//!
//! Lines arrive whole (the worker cuts output at newlines, whatever the job's writes were), so
//! a secret written in two pieces on one line is found like any other. What is not protected:
//! a secret the job transforms before printing (encoded, reversed, split over two lines), and
//! one straddling the 64 KiB cut of a longer line.

use bytes::Bytes;

/// What replaces a secret.
const MASK: &[u8] = b"***";

/// The secrets of one job, longest first (so a secret containing another is masked whole).
#[derive(Default)]
pub struct Masker {
    secrets: Vec<Vec<u8>>,
}

impl Masker {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut secrets: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(|v| v.as_bytes().to_vec())
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self { secrets }
    }

    /// `line` with every occurrence of every secret replaced; unchanged (not copied) when no
    /// secret occurs in it.
    pub fn mask(&self, line: Bytes) -> Bytes {
        let mut masked: Option<Vec<u8>> = None;
        for secret in &self.secrets {
            let current = masked.as_deref().unwrap_or(&line);
            if memchr::memmem::find(current, secret).is_none() {
                continue;
            }
            let mut out = Vec::with_capacity(current.len());
            let mut rest = current;
            while let Some(at) = memchr::memmem::find(rest, secret) {
                out.extend_from_slice(&rest[..at]);
                out.extend_from_slice(MASK);
                rest = &rest[at + secret.len()..];
            }
            out.extend_from_slice(rest);
            masked = Some(out);
        }
        masked.map_or(line, Bytes::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(masker: &Masker, line: &str) -> String {
        String::from_utf8(
            masker
                .mask(Bytes::copy_from_slice(line.as_bytes()))
                .to_vec(),
        )
        .unwrap()
    }

    #[test]
    fn every_occurrence_of_every_secret_is_replaced() {
        let masker = Masker::new(["hunter22", "s3cr3t-token"]);
        assert_eq!(
            mask(&masker, "pw=hunter22 token=s3cr3t-token again hunter22"),
            "pw=*** token=*** again ***"
        );
        assert_eq!(mask(&masker, "nothing to hide"), "nothing to hide");
    }

    #[test]
    fn a_secret_containing_another_is_masked_whole() {
        let masker = Masker::new(["abcd", "abcdefgh"]);
        assert_eq!(mask(&masker, "xabcdefghy abcd"), "x***y ***");
    }

    #[test]
    fn lines_without_secrets_are_not_copied() {
        let masker = Masker::new(["hunter22"]);
        let line = Bytes::from_static(b"plain");
        let out = masker.mask(line.clone());
        assert_eq!(out.as_ptr(), line.as_ptr());
        assert_eq!(Masker::new([]).mask(line.clone()), line);
    }
}
