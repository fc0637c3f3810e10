//! The text models' tokenizer, exactly as `models/train_workloads.py`
//! trains with: ASCII `A-Z` lowercased (nothing else changes), tokens are
//! the matches of `[a-z0-9]+('[a-z]+)?` left to right, the first
//! `max_tokens` kept; id 0 pads, 1 is a token outside the vocabulary, and
//! line `i` of the vocabulary file is id `i + 2`.

use anyhow::Context;
use std::collections::HashMap;
use std::path::Path;

pub const PAD: i64 = 0;
pub const UNKNOWN: i64 = 1;

#[derive(Debug, Clone, Default)]
pub struct Vocab {
    ids: HashMap<String, i64>,
}

fn word_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// The tokens of `text`, in order.
pub fn tokens(text: &str) -> Vec<String> {
    // Bytes of multi-byte UTF-8 characters are >= 0x80: never part of a token.
    let s = text.as_bytes();
    let lower = |i: usize| s[i].to_ascii_lowercase();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if !word_byte(lower(i)) {
            i += 1;
            continue;
        }
        let start = i;
        while i < s.len() && word_byte(lower(i)) {
            i += 1;
        }
        // An apostrophe joins the run when letters follow it.
        if i + 1 < s.len() && s[i] == b'\'' && lower(i + 1).is_ascii_lowercase() {
            i += 1;
            while i < s.len() && lower(i).is_ascii_lowercase() {
                i += 1;
            }
        }
        out.push(
            s[start..i]
                .iter()
                .map(|b| b.to_ascii_lowercase() as char)
                .collect(),
        );
    }
    out
}

impl Vocab {
    /// One token a line; line `i` gets id `i + 2`.
    pub fn parse(text: &str) -> Vocab {
        let ids = text
            .lines()
            .filter(|l| !l.is_empty())
            .enumerate()
            .map(|(i, w)| (w.to_string(), i as i64 + 2))
            .collect();
        Vocab { ids }
    }

    pub fn load(path: &Path) -> anyhow::Result<Vocab> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading vocabulary {}", path.display()))?;
        let v = Vocab::parse(&text);
        anyhow::ensure!(!v.ids.is_empty(), "vocabulary {} is empty", path.display());
        Ok(v)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Token ids of `text`, truncated or padded to `max_tokens`.
    pub fn encode(&self, text: &str, max_tokens: usize) -> Vec<i64> {
        let mut ids: Vec<i64> = tokens(text)
            .iter()
            .take(max_tokens)
            .map(|t| self.ids.get(t).copied().unwrap_or(UNKNOWN))
            .collect();
        ids.resize(max_tokens, PAD);
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_follow_the_training_regex() {
        // Each case as Python's re.findall(r"[a-z0-9]+(?:'[a-z]+)?", ascii_lower(s)) splits it.
        let cases: &[(&str, &[&str])] = &[
            ("It's a GREAT film!", &["it's", "a", "great", "film"]),
            ("don't'll rock'n'roll", &["don't", "ll", "rock'n", "roll"]),
            ("90's 3d it's9 o'", &["90's", "3d", "it's", "9", "o"]),
            ("café naïve", &["caf", "na", "ve"]),
            ("ÉCOLE Über", &["cole", "ber"]),
            ("'quoted' -- x'", &["quoted", "x"]),
            ("", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(tokens(text), *want, "{text:?}");
        }
    }

    #[test]
    fn encoding_pads_truncates_and_marks_unknowns() {
        let v = Vocab::parse("the\nfilm\n");
        assert_eq!(v.len(), 2);
        assert_eq!(v.encode("The film, the plot", 6), vec![2, 3, 2, 1, 0, 0]);
        assert_eq!(v.encode("the the the", 2), vec![2, 2]);
        assert_eq!(v.encode("", 3), vec![0, 0, 0]);
    }
}

/// Property tests of the tokenizer: any text, any vocabulary file.
#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Whether `t` matches `[a-z0-9]+('[a-z]+)?` as a whole.
    fn is_token(t: &str) -> bool {
        let (word, rest) = match t.split_once('\'') {
            Some((w, r)) => (w, Some(r)),
            None => (t, None),
        };
        !word.is_empty()
            && word.bytes().all(word_byte)
            && rest.is_none_or(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_lowercase()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn tokens_are_in_order_lowercase_pieces_of_the_text(
            text in prop_oneof![".{0,120}", "[a-zA-Z0-9' \\-é]{0,120}"],
        ) {
            let lower = text.to_ascii_lowercase();
            let mut from = 0;
            for t in tokens(&text) {
                prop_assert!(is_token(&t), "{t:?} from {text:?}");
                let at = lower[from..].find(&t);
                prop_assert!(at.is_some(), "{t:?} not after byte {from} of {text:?}");
                from += at.unwrap() + t.len();
            }
        }

        #[test]
        fn encoding_respects_the_vocabulary_and_the_length(
            vocab_text in ".{0,200}",
            text in ".{0,200}",
            max_tokens in 0..48usize,
        ) {
            let vocab = Vocab::parse(&vocab_text);
            prop_assert!(vocab.len() <= vocab_text.lines().count());
            let ids = vocab.encode(&text, max_tokens);
            prop_assert_eq!(ids.len(), max_tokens);
            let n = tokens(&text).len().min(max_tokens);
            prop_assert!(ids[..n].iter().all(|&id| id == UNKNOWN || (2..vocab.len() as i64 + 2).contains(&id)));
            prop_assert!(ids[n..].iter().all(|&id| id == PAD));
        }

        #[test]
        fn known_words_get_their_line_numbers(
            words in prop::collection::btree_set("[a-z0-9]{1,6}", 1..20),
            picks in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
            max_tokens in 1..40usize,
        ) {
            let words: Vec<String> = words.into_iter().collect();
            let vocab = Vocab::parse(&words.join("\n"));
            let chosen: Vec<usize> = picks.iter().map(|i| i.index(words.len())).collect();
            let text = chosen.iter().map(|&i| words[i].to_uppercase()).collect::<Vec<_>>().join(", ");
            let mut want: Vec<i64> = chosen.iter().take(max_tokens).map(|&i| i as i64 + 2).collect();
            want.resize(max_tokens, PAD);
            prop_assert_eq!(vocab.encode(&text, max_tokens), want);
        }
    }
}
