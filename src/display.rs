//! Strings for people: user-supplied text made safe and short for messages, tables and
//! reports, and the short name of a path or Hub id.
//!
//! Text from data files, model configs and requests reaches terminals. Control characters
//! (escape sequences, BEL, carriage returns) and bidirectional overrides in it could rewrite
//! what the terminal shows, so every human-readable output shows them escaped; and a field of a
//! megabyte is cut, so that one bad row cannot flood a message.

/// How many characters of a label a message shows.
pub const LABEL_CHARS: usize = 60;

/// Whether `c` must not reach a terminal as it is: C0/C1 controls and DEL (but tab and newline)
/// and the bidirectional formatting characters.
fn is_unsafe(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every unsafe character written as `\u{..}` (newlines and tabs kept).
pub fn escape(s: &str) -> String {
    if !s.chars().any(is_unsafe) {
        return s.to_string();
    }
    s.chars().map(|c| if is_unsafe(c) { c.escape_unicode().to_string() } else { c.to_string() }).collect()
}

/// `s` escaped and cut to `n` characters, with an ellipsis when cut.
pub fn clip(s: &str, n: usize) -> String {
    let head: String = s.chars().take(n.saturating_add(1)).collect();
    let cut = head.chars().count() > n;
    let head: String = if cut { head.chars().take(n.saturating_sub(1)).collect() } else { head };
    let shown = escape(&head);
    if cut {
        format!("{shown}…")
    } else {
        shown
    }
}

/// A label (from data or a config) as messages show it.
pub fn label(s: &str) -> String {
    clip(s, LABEL_CHARS)
}

/// Labels joined for a message: each clipped, and at most 30 of them.
pub fn labels(all: &[String]) -> String {
    let mut shown: Vec<String> = all.iter().take(30).map(|l| label(l)).collect();
    if all.len() > 30 {
        shown.push(format!("... ({} in all)", all.len()));
    }
    shown.join(", ")
}

/// The last segment of a path or Hub id (`dair-ai/emotion` → `emotion`; a trailing `/` is ignored).
pub fn last_segment(s: &str) -> &str {
    let s = s.trim_end_matches('/');
    s.rsplit('/').next().unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_counts_characters_not_bytes() {
        assert_eq!(clip("héllo wörld", 5), "héll…");
        assert_eq!(clip("short", 5), "short");
        let huge = "x".repeat(1 << 20);
        assert_eq!(clip(&huge, 80).chars().count(), 80);
    }

    #[test]
    fn terminal_controls_and_bidi_overrides_are_escaped() {
        let hostile = "a\u{1b}]0;title\u{7}b\u{202e}c\rd\u{9b}e";
        let shown = escape(hostile);
        assert!(!shown.chars().any(is_unsafe), "{shown:?}");
        assert_eq!(shown, "a\\u{1b}]0;title\\u{7}b\\u{202e}c\\u{d}d\\u{9b}e");
        assert_eq!(escape("line\tone\nline two"), "line\tone\nline two");
        assert_eq!(clip("\u{1b}[31mred", 3), "\\u{1b}[…");
    }

    #[test]
    fn last_segments() {
        assert_eq!(last_segment("dair-ai/emotion"), "emotion");
        assert_eq!(last_segment("./models/mini/"), "mini");
        assert_eq!(last_segment("plain"), "plain");
    }
}
