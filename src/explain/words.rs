//! Token attributions merged into the text's words for display, and their rendering on a
//! terminal.
//!
//! A word is what the tokenizer's pre-tokenizer made of the text: WordPiece's `##` pieces,
//! byte-level BPE's `Ġ` pieces and SentencePiece's `▁` pieces carry their word's index
//! (`tokenizers`' word ids), so the merge needs no knowledge of any vocabulary's markers. A
//! word's score is the sum of its tokens'; its offsets are characters of the original text
//! (Unicode scalar values, as Python indexes a `str`), so `text[start:end]` in Python is the word.

use crate::tokenize::TokenSpan;

/// One token's attribution.
#[derive(Debug, Clone)]
pub struct TokenScore {
    pub span: TokenSpan,
    pub score: f32,
}

/// One word of the text and its attribution; `start..end` in characters of the text (Unicode
/// scalar values, as Python indexes a `str`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Word {
    pub text: String,
    pub start: usize,
    pub end: usize,
    /// Positive: the word pushes towards the label; negative: against it.
    pub score: f32,
}

/// The words of `text` from its tokens' attributions (special tokens left out; a token without
/// a word id is a word of its own).
pub fn merge(text: &str, tokens: &[TokenScore]) -> Vec<Word> {
    let bytes = char_boundaries(text);
    let slice = |start: usize, end: usize| {
        let (a, b) = (bytes[start.min(bytes.len() - 1)], bytes[end.min(bytes.len() - 1)]);
        text.get(a..b.max(a)).unwrap_or_default().to_string()
    };
    let mut words: Vec<(Option<u32>, Word)> = Vec::new();
    for t in tokens.iter().filter(|t| !t.span.special) {
        let same_word = t.span.word.is_some() && words.last().is_some_and(|(w, _)| *w == t.span.word);
        match words.last_mut() {
            Some((_, word)) if same_word => {
                word.start = word.start.min(t.span.start);
                word.end = word.end.max(t.span.end);
                word.score += t.score;
            }
            _ => {
                let word = Word { text: String::new(), start: t.span.start, end: t.span.end, score: t.score };
                words.push((t.span.word, word));
            }
        }
    }
    words
        .into_iter()
        .map(|(_, mut w)| {
            w.text = slice(w.start, w.end);
            w
        })
        .collect()
}

/// The byte offset of every character of `text`, and its length last.
fn char_boundaries(text: &str) -> Vec<usize> {
    text.char_indices().map(|(i, _)| i).chain([text.len()]).collect()
}

/// `text` with each word's background coloured by its score: green where it pushes towards the
/// explained label, red where it pushes against it, stronger with the score's size relative to
/// the largest (24-bit ANSI colours; words under 5% of the largest are left plain). Line breaks
/// become spaces and other control characters are escaped, as everywhere text is printed.
pub fn render_terminal(text: &str, words: &[Word]) -> String {
    let bytes = char_boundaries(text);
    let at = |c: usize| bytes[c.min(bytes.len() - 1)];
    let largest = words.iter().fold(0f32, |m, w| m.max(w.score.abs()));
    // one line, with no control character of the text reaching the terminal
    let show = |s: &str| crate::display::escape(&s.replace(['\n', '\r', '\t'], " "));
    let mut out = String::new();
    let mut done = 0;
    for w in words {
        let (a, b) = (at(w.start), at(w.end));
        if a < done || b < a {
            continue;
        }
        out.push_str(&show(&text[done..a]));
        let t = if largest > 0.0 { w.score.abs() / largest } else { 0.0 };
        if t < 0.05 {
            out.push_str(&show(&text[a..b]));
        } else {
            let fade = (255.0 - 175.0 * t).round() as u8;
            let (r, g, bl) = if w.score > 0.0 { (fade, 255, fade) } else { (255, fade, fade) };
            out.push_str(&format!("\x1b[30;48;2;{r};{g};{bl}m{}\x1b[0m", show(&text[a..b])));
        }
        done = b;
    }
    out.push_str(&show(&text[done..]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(token: &str, (start, end): (usize, usize), word: Option<u32>, score: f32) -> TokenScore {
        let span =
            TokenSpan { token: token.into(), start, end, word, special: word.is_none() && token.starts_with('[') };
        TokenScore { span, score }
    }

    /// WordPiece pieces of one word merge (scores summed), special tokens drop out, and the
    /// offsets count characters, not bytes ("é" and "😀" are one character each).
    #[test]
    fn pieces_merge_into_words_with_character_offsets() {
        let text = "Déjà vu 😀 unbelievable";
        let tokens = [
            tok("[CLS]", (0, 0), None, 0.0),
            tok("deja", (0, 4), Some(0), 0.5),
            tok("vu", (5, 7), Some(1), -0.25),
            tok("😀", (8, 9), Some(2), 0.125),
            tok("un", (10, 12), Some(3), 1.0),
            tok("##believ", (12, 18), Some(3), 2.0),
            tok("##able", (18, 22), Some(3), -0.5),
            tok("[SEP]", (0, 0), None, 0.0),
        ];
        let words = merge(text, &tokens);
        let got: Vec<(&str, usize, usize, f32)> =
            words.iter().map(|w| (w.text.as_str(), w.start, w.end, w.score)).collect();
        assert_eq!(got, [("Déjà", 0, 4, 0.5), ("vu", 5, 7, -0.25), ("😀", 8, 9, 0.125), ("unbelievable", 10, 22, 2.5)]);
    }

    /// The rendering keeps the text as it was between the words, colours the strong words by
    /// sign and leaves the weak ones plain.
    #[test]
    fn rendering_colours_by_sign_and_keeps_the_text() {
        let text = "so  happy, not sad";
        let w = |t: &str, s, e, score| Word { text: t.into(), start: s, end: e, score };
        let words = [w("so", 0, 2, 0.01), w("happy", 4, 9, 2.0), w(",", 9, 10, 0.0), w("sad", 15, 18, -1.0)];
        let out = render_terminal(text, &words);
        let plain: String = {
            let mut s = String::new();
            let mut skip = false;
            for c in out.chars() {
                match c {
                    '\x1b' => skip = true,
                    'm' if skip => skip = false,
                    c if !skip => s.push(c),
                    _ => {}
                }
            }
            s
        };
        assert_eq!(plain, text);
        assert!(out.contains("\x1b[30;48;2;80;255;80mhappy"), "{out:?}");
        assert!(out.contains("\x1b[30;48;2;255;168;168msad"), "{out:?}");
        assert!(out.starts_with("so  "), "a weak word stays plain: {out:?}");
    }
}
