//! Strings for people: user-supplied text made safe and short for messages, tables and
//! reports, and the short name of a path or Hub id.
//!
//! Text from data files, model configs and requests reaches terminals. Control characters
//! (escape sequences, BEL, carriage returns) and bidirectional overrides in it could rewrite
//! what the terminal shows, so every human-readable output shows them escaped; and a field of a
//! megabyte is cut, so that one bad row cannot flood a message.

/// `error` or `warning` as the start of a message on stderr: in red or yellow on a terminal
/// (unless `NO_COLOR` is set, as no-color.org asks), plain otherwise.
pub fn severity(word: &str) -> String {
    use std::io::IsTerminal;
    let colour = match word {
        "error" => "31",
        _ => "33",
    };
    let plain = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) || !std::io::stderr().is_terminal();
    if plain {
        format!("{word}:")
    } else {
        format!("\x1b[1;{colour}m{word}:\x1b[0m")
    }
}

/// The width of the terminal on stdout, or 100 columns when it is not one (or will not say).
pub fn terminal_width() -> usize {
    #[cfg(unix)]
    {
        let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one `winsize` into the struct it is given; it fails (and
        // leaves it zeroed) when stdout is not a terminal.
        let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
        if rc == 0 && size.ws_col > 0 {
            return usize::from(size.ws_col);
        }
    }
    100
}

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

/// Locations (`file:line`) made short for a terminal: a file is named by its split when it is
/// the only file of that split among the locations shown, else `split/file-name`; the legend
/// names each full path once. JSON output keeps the full locations.
pub struct ShortLocations {
    names: std::collections::HashMap<String, String>,
}

impl ShortLocations {
    /// From every `(split, location)` that will be shown.
    pub fn new<'a>(shown: impl IntoIterator<Item = (&'a str, &'a str)>) -> ShortLocations {
        let mut files: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> = Default::default();
        for (split, loc) in shown {
            files.entry(split).or_default().insert(file_of(loc));
        }
        let mut names = std::collections::HashMap::new();
        for (split, set) in files {
            for file in &set {
                let base = std::path::Path::new(file).file_name().map_or((*file).into(), |n| n.to_string_lossy());
                let name = if set.len() == 1 { split.to_string() } else { format!("{split}/{base}") };
                names.insert((*file).to_string(), name);
            }
        }
        ShortLocations { names }
    }

    /// `test:817` for `/…/test-00000-of-00001.parquet:817`.
    pub fn show(&self, location: &str) -> String {
        let file = file_of(location);
        match self.names.get(file) {
            Some(name) => format!("{name}{}", &location[file.len()..]),
            None => location.to_string(),
        }
    }

    /// One line per file: `  test = /…/test-00000-of-00001.parquet`, sorted by name; a file in
    /// the Hugging Face cache by its `hf://` address (`hf://datasets/org/name/split/…`).
    pub fn legend(&self) -> String {
        let mut rows: Vec<(&String, &String)> = self.names.iter().map(|(f, n)| (n, f)).collect();
        rows.sort();
        rows.iter()
            .map(|(n, f)| format!("  {n} = {}\n", escape(&crate::hub::hf_address(f).unwrap_or_else(|| f.to_string()))))
            .collect()
    }
}

/// The file part of `file:line` (the whole string when it has no `:line`).
fn file_of(location: &str) -> &str {
    match location.rsplit_once(':') {
        Some((file, line)) if !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()) => file,
        _ => location,
    }
}

#[cfg(test)]
mod short_location_tests {
    use super::*;

    #[test]
    fn a_split_with_one_file_is_named_by_the_split() {
        let shown = [
            ("test", "/cache/snap/split/test-00000-of-00001.parquet:817"),
            ("train", "/data/train-0.parquet:3"),
            ("train", "/data/train-1.parquet:9"),
            ("test", "/cache/snap/split/test-00000-of-00001.parquet:12"),
        ];
        let s = ShortLocations::new(shown);
        assert_eq!(s.show(shown[0].1), "test:817");
        assert_eq!(s.show(shown[3].1), "test:12");
        assert_eq!(s.show(shown[1].1), "train/train-0.parquet:3");
        assert_eq!(s.show("/elsewhere/x.csv:4"), "/elsewhere/x.csv:4");
        assert_eq!(
            s.legend(),
            "  test = /cache/snap/split/test-00000-of-00001.parquet\n  train/train-0.parquet = /data/train-0.parquet\n  \
             train/train-1.parquet = /data/train-1.parquet\n"
        );
    }
}
