//! The shape of the source, checked: no import circles between the files of `src/`, functions
//! short enough to read whole, files of a readable size.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest function, in lines from `fn` to its closing brace.
const MAX_FUNCTION_LINES: usize = 80;
/// Longest source file ("about 500 lines").
const MAX_FILE_LINES: usize = 520;
/// The functions allowed to be longer, and why.
const LONG_FUNCTIONS: &[(&str, &str, &str)] =
    [("src/model/layer.rs", "bwd", "the fused encoder layer's backward reads better whole, beside its forward")]
        .as_slice();

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file (`src/train/trainer.rs` → `["train", "trainer"]`).
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    match last.as_str() {
        "mod.rs" | "lib.rs" | "main.rs" => {}
        other => parts.push(other.trim_end_matches(".rs").to_string()),
    }
    parts
}

/// The file of the deepest module along `path` (`["model", "kernels", "linear", "linear"]` →
/// `src/model/kernels/linear.rs`).
fn file_of(path: &[String]) -> Option<PathBuf> {
    let mut dir = src();
    let mut found = None;
    for seg in path {
        let (file, folder) = (dir.join(format!("{seg}.rs")), dir.join(seg));
        if file.is_file() {
            found = Some(file);
        } else if folder.join("mod.rs").is_file() {
            found = Some(folder.join("mod.rs"));
        } else {
            break;
        }
        dir = folder;
    }
    found
}

/// The code of a file before its test module, without comments, as one line.
fn code(text: &str) -> String {
    text.lines()
        .take_while(|l| !l.trim_start().starts_with("#[cfg(test)]"))
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join(" ")
}

fn ident(s: &str) -> String {
    s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// The paths `rest` continues `base` with: `a::b::c`, or each item of `{a::b, c}`.
fn continue_path(base: &[String], rest: &str) -> Vec<Vec<String>> {
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let (mut depth, mut start, mut out) = (0, 0, Vec::new());
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    out.extend(continue_path(base, &group[start..i]));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.extend(continue_path(base, &group[start..i]));
                    start = i + 1;
                }
                _ => {}
            }
        }
        return out;
    }
    let name = ident(rest);
    if name.is_empty() || name == "self" {
        return vec![base.to_vec()];
    }
    let mut path = base.to_vec();
    path.push(name.clone());
    match rest[name.len()..].strip_prefix("::") {
        Some(more) => continue_path(&path, more),
        None => vec![path],
    }
}

/// Module paths named in `code` (`crate::a::b`, `super::a`, and `child::x` of a `pub use`),
/// resolved against `module`.
fn paths_in(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        out.extend(continue_path(&[], &code[i + "crate::".len()..]));
    }
    for (i, _) in code.match_indices("super::") {
        if code[..i].ends_with("super::") {
            continue;
        }
        // `super` is the enclosing module of the file's module, for `mod.rs` files and others alike.
        let mut rest = &code[i..];
        let mut base = module.to_vec();
        while let Some(r) = rest.strip_prefix("super::") {
            rest = r;
            base.pop();
        }
        out.extend(continue_path(&base, rest));
    }
    // A parent module's own use of a child's items (`output::write_model(..)` in `train/mod.rs`).
    for child in child_modules(module) {
        let pat = format!("{child}::");
        let uses = code.match_indices(&pat).any(|(i, _)| {
            let before = code[..i].chars().next_back();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        });
        if uses {
            out.push([module, &[child][..]].concat());
        }
    }
    for prefix in ["pub use ", "pub(crate) use "] {
        for (i, _) in code.match_indices(prefix) {
            let rest = &code[i + prefix.len()..];
            if !rest.starts_with("crate::") && !rest.starts_with("super::") {
                out.extend(continue_path(module, rest));
            }
        }
    }
    out
}

/// The child modules of `module` that have files of their own (`train` → `config`, `output`, ...).
fn child_modules(module: &[String]) -> Vec<String> {
    let dir = module.iter().fold(src(), |d, m| d.join(m));
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries {
        let path = e.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let is_module = path.extension().is_some_and(|x| x == "rs") || path.join("mod.rs").is_file();
        if is_module && !["mod", "lib", "main"].contains(&name.as_str()) {
            out.push(name);
        }
    }
    out
}

fn import_graph() -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph = BTreeMap::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let module = module_of(f);
        let mut deps = BTreeSet::new();
        for p in paths_in(&code(&text), &module) {
            if let Some(target) = file_of(&p).filter(|t| t != f) {
                deps.insert(target);
            }
        }
        graph.insert(f.clone(), deps);
    }
    graph
}

/// A cycle through `node`, if any (depth-first, `stack` the current path).
fn find_cycle(
    node: &PathBuf,
    graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
    stack: &mut Vec<PathBuf>,
    done: &mut BTreeSet<PathBuf>,
) -> Option<Vec<PathBuf>> {
    if let Some(i) = stack.iter().position(|n| n == node) {
        return Some(stack[i..].to_vec());
    }
    if done.contains(node) {
        return None;
    }
    stack.push(node.clone());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(c) = find_cycle(next, graph, stack, done) {
            return Some(c);
        }
    }
    stack.pop();
    done.insert(node.clone());
    None
}

#[test]
fn no_import_circles_between_source_files() {
    let graph = import_graph();
    // The graph sees real imports: the trainer uses the model, the CLI uses training.
    let trainer = src().join("train/trainer.rs");
    assert!(graph[&trainer].contains(&src().join("model/mod.rs")), "{:?}", graph[&trainer]);
    let train = src().join("train/mod.rs");
    assert!(graph[&train].contains(&src().join("train/output.rs")), "a parent's use of its child: {:?}", graph[&train]);
    let (mut stack, mut done) = (Vec::new(), BTreeSet::new());
    for node in graph.keys() {
        if let Some(cycle) = find_cycle(node, &graph, &mut stack, &mut done) {
            let names: Vec<String> =
                cycle.iter().map(|p| p.strip_prefix(src()).unwrap().display().to_string()).collect();
            panic!("import circle: {} -> {}", names.join(" -> "), names[0]);
        }
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let (a, b, c) = (PathBuf::from("a"), PathBuf::from("b"), PathBuf::from("c"));
    let graph = BTreeMap::from([
        (a.clone(), BTreeSet::from([b.clone()])),
        (b.clone(), BTreeSet::from([c.clone()])),
        (c.clone(), BTreeSet::from([a.clone()])),
    ]);
    let cycle = find_cycle(&a, &graph, &mut Vec::new(), &mut BTreeSet::new()).unwrap();
    assert_eq!(cycle, [a, b, c]);
}

/// `(name, first line, lines)` of every `fn` in `text` whose body closes at its own indentation.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let indent = &l[..l.len() - t.len()];
        let sig = ["pub fn ", "fn ", "pub(crate) fn ", "pub(super) fn ", "unsafe fn ", "pub unsafe fn "]
            .iter()
            .find_map(|p| t.strip_prefix(p));
        let Some(sig) = sig else { continue };
        let name: String = sig.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let Some(open) = (i..lines.len()).find(|&j| lines[j].trim_end().ends_with('{') || lines[j].ends_with(';'))
        else {
            continue;
        };
        if lines[open].ends_with(';') {
            continue;
        }
        let close = (open + 1..lines.len()).find(|&j| lines[j] == format!("{indent}}}"));
        if let Some(close) = close {
            out.push((name, i + 1, close - i + 1));
        }
    }
    out
}

#[test]
fn functions_and_files_stay_readable() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut problems = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let rel = Path::new("src").join(f.strip_prefix(src()).unwrap());
        let n = text.lines().count();
        if n > MAX_FILE_LINES {
            problems.push(format!("{}: {n} lines", rel.display()));
        }
        for (name, line, len) in functions(&text) {
            let allowed = LONG_FUNCTIONS.iter().any(|(file, fun, _)| rel == Path::new(file) && *fun == name);
            if len > MAX_FUNCTION_LINES && !allowed {
                problems.push(format!("{}:{line}: fn {name} has {len} lines", rel.display()));
            }
        }
    }
    assert!(problems.is_empty(), "too long:\n{}", problems.join("\n"));
    // The scanner sees functions at all (a scanner that finds none passes everything).
    let layer = std::fs::read_to_string(src().join("model/layer.rs")).unwrap();
    assert!(functions(&layer).iter().any(|(name, _, len)| name == "bwd" && *len > MAX_FUNCTION_LINES));
}

/// The README's layout table names every top-level file and folder of `src/` and every file of
/// `src/model/`, so that it keeps matching the tree.
#[test]
fn the_readme_layout_names_every_room() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("## Layout").expect("a Layout section");
    let end = readme[start..].find("\n## ").map_or(readme.len(), |i| start + i);
    let layout = &readme[start..end];
    let mut missing = Vec::new();
    for (dir, prefix) in [(src(), ""), (src().join("model"), "model/")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let shown = match path.is_dir() {
                true => format!("{prefix}{name}/"),
                false if name.ends_with(".rs") => format!("{prefix}{name}"),
                false => continue,
            };
            if !layout.contains(&shown) && !["lib.rs", "main.rs", "mod.rs"].contains(&name.as_str()) {
                missing.push(format!("{prefix}{name}"));
            }
        }
    }
    assert!(missing.is_empty(), "README's layout does not mention: {}", missing.join(", "));
}
