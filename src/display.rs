//! Strings for people: user-supplied text shortened for messages and tables, and the short
//! name of a path or Hub id.

/// `s` cut to `n` characters, with an ellipsis when cut.
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() > n {
        format!("{}…", s.chars().take(n.saturating_sub(1)).collect::<String>())
    } else {
        s.to_string()
    }
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
    }

    #[test]
    fn last_segments() {
        assert_eq!(last_segment("dair-ai/emotion"), "emotion");
        assert_eq!(last_segment("./models/mini/"), "mini");
        assert_eq!(last_segment("plain"), "plain");
    }
}
