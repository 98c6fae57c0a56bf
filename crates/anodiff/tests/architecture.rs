//! The layering of `crates/anodiff/src`, checked on the source text (no external tools): every
//! `use` declaration and every `crate::…` / `super::…` / `self::…` path of every source file
//! (`#[cfg(test)]` items, comments and string literals ignored) becomes an edge from that file to
//! the file of the module it names, and
//! - no set of files imports itself round (no cycles);
//! - lower layers do not reach up ([`LAYERS`]).
//!
//! A file's paths to its own ancestor modules (`super::Item` re-exported by a `mod.rs`, the crate
//! root's `crate::Result`) are not edges: a parent declares and re-exports its children, so those
//! would be cycles by construction.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers of the crate, lowest first, by top-level module. A file may import files of its
/// own layer and of the layers before it, never of a layer after it. This says: the neutral
/// helpers, `data/`, `nn/` and `kernels/` import nothing from `sd/`, `train/`, `eval/`, `bench/`;
/// `kernels/` nothing from `nn/`; `sd/` nothing from `train/`, `eval/`, `bench/`; `train/`
/// nothing from `eval/`, `bench/`; and nothing below the two methods (`dual/`, `detect/`, to
/// come) imports them — only `bench/` (timings of anything) and the CLI may.
const LAYERS: &[(&[&str], &str)] = &[
    (&["error", "io", "seed", "runtime"], "neutral helpers"),
    (&["kernels"], "CPU kernels, below nn"),
    (&["nn"], "building blocks"),
    (&["data"], "datasets, below the backbone"),
    (&["sd"], "the Stable Diffusion backbone"),
    (&["train"], "the training engine"),
    (&["eval"], "the evaluation toolkit"),
    (&["dual", "detect"], "the two methods"),
    (&["bench"], "timings"),
];

/// The layer of a module (`None` for a top-level module no layer lists).
fn layer(id: &str) -> Option<usize> {
    LAYERS.iter().position(|(mods, _)| mods.contains(&top(id)))
}

/// Modules by id (`sd/lora/install`; a `mod.rs` is its folder's id; `lib.rs` is "") and the
/// file-level import edges between them.
#[derive(Debug, Default)]
struct Graph {
    modules: BTreeSet<String>,
    edges: BTreeMap<String, BTreeSet<String>>,
}

/// Files that import each other round, with the edges between them.
type Cycle = (Vec<String>, Vec<(String, String)>);

/// The module id of a source file given by its path relative to `src/`.
fn module_id(rel: &str) -> String {
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let rel = rel.strip_suffix("/mod").unwrap_or(rel);
    if rel == "lib" || rel == "mod" {
        String::new()
    } else {
        rel.to_string()
    }
}

fn top(id: &str) -> &str {
    id.split('/').next().unwrap_or(id)
}

/// Whether `anc` is `id` itself or one of its ancestor modules.
fn is_self_or_ancestor(anc: &str, id: &str) -> bool {
    anc.is_empty() || anc == id || id.starts_with(&format!("{anc}/"))
}

impl Graph {
    /// The graph of `(path relative to src/, source text)` pairs.
    fn from_sources(files: &[(String, String)]) -> Self {
        let mut g = Graph {
            modules: files.iter().map(|(p, _)| module_id(p)).collect(),
            ..Graph::default()
        };
        for (path, text) in files {
            let id = module_id(path);
            let tokens = tokenize(&blank_comments_and_literals(text));
            for (scope, segments) in references(&tokens) {
                let mut here: Vec<&str> = id.split('/').filter(|s| !s.is_empty()).collect();
                here.extend(scope.iter().map(String::as_str));
                if let Some(target) = g.resolve(&here, &segments) {
                    if !is_self_or_ancestor(&target, &id) {
                        g.edges.entry(id.clone()).or_default().insert(target);
                    }
                }
            }
        }
        g
    }

    /// Reads every `.rs` file under `src`.
    fn from_dir(src: &Path) -> Self {
        fn walk(dir: &Path, src: &Path, out: &mut Vec<(String, String)>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, src, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let rel = p
                        .strip_prefix(src)
                        .unwrap()
                        .to_string_lossy()
                        .replace('\\', "/");
                    out.push((rel, std::fs::read_to_string(&p).unwrap()));
                }
            }
        }
        let mut files = Vec::new();
        walk(src, src, &mut files);
        Self::from_sources(&files)
    }

    /// The file a path names, seen from module `here` (file module plus any inline modules):
    /// the longest prefix of the absolute path that is a file's module. `None` for paths into
    /// other crates.
    fn resolve(&self, here: &[&str], segments: &[String]) -> Option<String> {
        let (first, rest) = segments.split_first()?;
        let mut abs: Vec<&str> = match first.as_str() {
            "crate" | "$crate" => Vec::new(),
            "self" => here.to_vec(),
            "super" => {
                let mut b = here.to_vec();
                b.pop();
                let mut rest = rest;
                while rest.first().map(String::as_str) == Some("super") {
                    b.pop();
                    rest = &rest[1..];
                }
                b.extend(rest.iter().map(String::as_str));
                return Some(self.longest_module_prefix(&b));
            }
            // A use path may also start at a child module of the current one (2018 paths).
            name => {
                let mut child = here.to_vec();
                child.push(name);
                if !self.modules.contains(&child.join("/")) {
                    return None;
                }
                here.to_vec()
            }
        };
        if !matches!(first.as_str(), "crate" | "$crate" | "self") {
            abs.push(first);
        }
        abs.extend(rest.iter().map(String::as_str));
        Some(self.longest_module_prefix(&abs))
    }

    fn longest_module_prefix(&self, abs: &[&str]) -> String {
        (0..=abs.len())
            .rev()
            .map(|n| abs[..n].join("/"))
            .find(|m| self.modules.contains(m))
            .unwrap_or_default()
    }

    /// Every module in no layer and every edge from a layer up to a later one, as readable lines.
    fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        for m in self.modules.iter().filter(|m| !m.is_empty()) {
            if layer(m).is_none() {
                out.push(format!(
                    "{m}: top-level module `{}` is in no layer (add it to LAYERS)",
                    top(m)
                ));
            }
        }
        for (from, tos) in &self.edges {
            for to in tos {
                if let (Some(a), Some(b)) = (layer(from), layer(to)) {
                    if b > a {
                        out.push(format!(
                            "{from} imports {to}: {}/ ({}) sits below {}/ ({})",
                            top(from),
                            LAYERS[a].1,
                            top(to),
                            LAYERS[b].1
                        ));
                    }
                }
            }
        }
        out
    }

    /// Strongly connected sets of more than one file (Tarjan), each with its internal edges.
    fn cycles(&self) -> Vec<Cycle> {
        struct State<'a> {
            g: &'a Graph,
            index: BTreeMap<&'a str, usize>,
            low: BTreeMap<&'a str, usize>,
            stack: Vec<&'a str>,
            on_stack: BTreeSet<&'a str>,
            out: Vec<Vec<String>>,
        }
        fn visit<'a>(s: &mut State<'a>, v: &'a str) {
            let i = s.index.len();
            s.index.insert(v, i);
            s.low.insert(v, i);
            s.stack.push(v);
            s.on_stack.insert(v);
            let g = s.g;
            for w in g.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if s.on_stack.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if s.low[v] == s.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = s.stack.pop() {
                    s.on_stack.remove(w);
                    comp.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    s.out.push(comp);
                }
            }
        }
        let mut s = State {
            g: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            out: Vec::new(),
        };
        for m in &self.modules {
            if !s.index.contains_key(m.as_str()) {
                visit(&mut s, m);
            }
        }
        s.out
            .into_iter()
            .map(|comp| {
                let edges = comp
                    .iter()
                    .flat_map(|a| {
                        self.edges
                            .get(a)
                            .into_iter()
                            .flatten()
                            .filter(|b| comp.contains(b))
                            .map(move |b| (a.clone(), b.clone()))
                    })
                    .collect();
                (comp, edges)
            })
            .collect()
    }
}

/// The source with comments and the contents of string and char literals replaced by spaces
/// (newlines kept), so only code is left to scan.
fn blank_comments_and_literals(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
                out.push(' ');
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            loop {
                if i >= c.len() {
                    break;
                }
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (next == Some('"') || (next == Some('#') && raw_string_hashes(&c, i + 1).is_some()))
            && starts_token(&c, i)
        {
            // Raw string r"…" / r#"…"# (or br"…"): ends at a quote followed by as many '#'.
            let hashes = raw_string_hashes(&c, i + 1).unwrap_or(0);
            let body = i + 1 + hashes + 1;
            out.extend(std::iter::repeat_n(' ', body - i));
            i = body;
            while i < c.len() {
                if c[i] == '"' && (0..hashes).all(|k| c.get(i + 1 + k) == Some(&'#')) {
                    out.extend(std::iter::repeat_n(' ', hashes + 1));
                    i += hashes + 1;
                    break;
                }
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' && (next == Some('\\') || c.get(i + 2) == Some(&'\'')) {
            // A char literal ('x', '\n', '\u{…}'); anything else after a quote is a lifetime.
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '\'' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Whether the `r` at `i` starts a token (optionally after a byte-string `b`).
fn starts_token(c: &[char], i: usize) -> bool {
    let ident = |k: usize| c.get(k).is_some_and(|x| x.is_alphanumeric() || *x == '_');
    match i {
        0 => true,
        _ if c[i - 1] == 'b' => i < 2 || !ident(i - 2),
        _ => !ident(i - 1),
    }
}

/// For `#…#"` starting at `start`, the number of `#`.
fn raw_string_hashes(c: &[char], start: usize) -> Option<usize> {
    let n = c[start..].iter().take_while(|&&x| x == '#').count();
    (c.get(start + n) == Some(&'"')).then_some(n)
}

/// Identifiers (with `$crate` as one), `::`, and single punctuation characters.
fn tokenize(code: &str) -> Vec<String> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    while i < c.len() {
        if c[i].is_whitespace() {
            i += 1;
        } else if ident(c[i]) || (c[i] == '$' && c.get(i + 1).is_some_and(|&x| ident(x))) {
            let start = i;
            i += 1;
            while i < c.len() && ident(c[i]) {
                i += 1;
            }
            out.push(c[start..i].iter().collect());
        } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else {
            out.push(c[i].to_string());
            i += 1;
        }
    }
    out
}

/// The paths a file refers to, each with the inline modules it sits in: the leaves of every
/// `use` tree, and every `crate::` / `super::` / `self::` path elsewhere. `#[cfg(test)]` items
/// are skipped.
fn references(t: &[String]) -> Vec<(Vec<String>, Vec<String>)> {
    let is = |i: usize, s: &str| t.get(i).is_some_and(|x| x == s);
    let mut out = Vec::new();
    // Inline modules: (name, brace depth inside them).
    let mut scope: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let names = |scope: &[(String, usize)]| scope.iter().map(|(n, _)| n.clone()).collect();
    let mut i = 0;
    while i < t.len() {
        if is(i, "#")
            && is(i + 1, "[")
            && is(i + 2, "cfg")
            && is(i + 3, "(")
            && is(i + 4, "test")
            && is(i + 5, ")")
            && is(i + 6, "]")
        {
            i = skip_item(t, i + 7);
        } else if is(i, "{") {
            depth += 1;
            i += 1;
        } else if is(i, "}") {
            if scope.last().is_some_and(|(_, d)| *d == depth) {
                scope.pop();
            }
            depth = depth.saturating_sub(1);
            i += 1;
        } else if is(i, "mod") && is(i + 2, "{") {
            scope.push((t[i + 1].clone(), depth + 1));
            i += 2;
        } else if is(i, "use") && !is(i + 1, "<") {
            let mut paths = Vec::new();
            i = use_tree(t, i + 1, Vec::new(), &mut paths);
            out.extend(paths.into_iter().map(|p| (names(&scope), p)));
        } else if ["crate", "$crate", "super", "self"].contains(&t[i].as_str())
            && is(i + 1, "::")
            && !(i > 0 && is(i - 1, "::"))
        {
            let mut path = vec![t[i].clone()];
            i += 1;
            while is(i, "::")
                && t.get(i + 1)
                    .is_some_and(|x| x.chars().all(|c| c.is_alphanumeric() || c == '_'))
            {
                path.push(t[i + 1].clone());
                i += 2;
            }
            out.push((names(&scope), path));
        } else {
            i += 1;
        }
    }
    out
}

/// Skips further attributes and then one item: through its `;`, or through its `{ … }` body.
fn skip_item(t: &[String], mut i: usize) -> usize {
    while t.get(i).is_some_and(|x| x == "#") && t.get(i + 1).is_some_and(|x| x == "[") {
        let mut d = 0;
        while i < t.len() {
            match t[i].as_str() {
                "[" => d += 1,
                "]" => {
                    d -= 1;
                    if d == 0 {
                        i += 1;
                        break;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
    while i < t.len() {
        match t[i].as_str() {
            ";" => return i + 1,
            "{" => {
                let mut d = 0;
                while i < t.len() {
                    match t[i].as_str() {
                        "{" => d += 1,
                        "}" => {
                            d -= 1;
                            if d == 0 {
                                return i + 1;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    i
}

/// Parses one use tree at `i` under `prefix`, adding its leaf paths; returns the index after it
/// (after the `;` at the top level).
fn use_tree(
    t: &[String],
    mut i: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    loop {
        match t.get(i).map(String::as_str) {
            None => return i,
            Some("{") => {
                i += 1;
                loop {
                    match t.get(i).map(String::as_str) {
                        None => return i,
                        Some("}") => {
                            i += 1;
                            break;
                        }
                        Some(",") => i += 1,
                        _ => i = use_tree(t, i, prefix.clone(), out),
                    }
                }
                return finish(t, i);
            }
            Some("*") => {
                out.push(prefix);
                return finish(t, i + 1);
            }
            Some("::") if prefix.is_empty() => {
                // `use ::name` is another crate.
                prefix.push(String::new());
                i += 1;
            }
            Some(seg) => {
                if seg == "self" && !prefix.is_empty() {
                    // `a::{self, …}` names `a` itself.
                } else {
                    prefix.push(seg.to_string());
                }
                i += 1;
                if t.get(i).is_some_and(|x| x == "::") {
                    i += 1;
                    continue;
                }
                if t.get(i).is_some_and(|x| x == "as") {
                    i += 2;
                }
                out.push(prefix);
                return finish(t, i);
            }
        }
    }
}

/// After a tree: a top-level `;` is consumed; a `,` or `}` is left to the enclosing list.
fn finish(t: &[String], i: usize) -> usize {
    if t.get(i).is_some_and(|x| x == ";") {
        i + 1
    } else {
        i
    }
}

fn crate_graph() -> Graph {
    Graph::from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn no_import_cycles() {
    let cycles = crate_graph().cycles();
    let report: Vec<String> = cycles
        .iter()
        .map(|(files, edges)| {
            let e: Vec<String> = edges.iter().map(|(a, b)| format!("{a} -> {b}")).collect();
            format!("cycle among {files:?}: {}", e.join(", "))
        })
        .collect();
    assert!(report.is_empty(), "import cycles:\n{}", report.join("\n"));
}

#[test]
fn lower_layers_do_not_reach_up() {
    let v = crate_graph().violations();
    assert!(v.is_empty(), "layering broken:\n{}", v.join("\n"));
}

/// Guards against a parser that silently finds nothing: edges known to exist are found.
#[test]
fn the_real_graph_has_the_known_edges() {
    let g = crate_graph();
    assert!(g.modules.len() > 100, "{} files", g.modules.len());
    for (a, b) in [
        ("nn/ops", "kernels/attention"),
        ("train/pretrain", "sd/pipeline"),
        ("eval/pixels", "eval/aupro"),
        ("data/split", "io/json"),
        ("sd/lora/install", "sd/lora/io"),
    ] {
        assert!(
            g.edges.get(a).is_some_and(|t| t.contains(b)),
            "edge {a} -> {b} not found; {a} -> {:?}",
            g.edges.get(a)
        );
    }
}

/// The checks fail, naming the edge or cycle, on a small graph that breaks them.
#[test]
fn checker_reports_bad_edges_and_cycles() {
    let files: Vec<(String, String)> = [
        (
            "lib.rs",
            "pub mod kernels; pub mod nn; pub mod data; pub mod sd;",
        ),
        (
            "kernels/attention.rs",
            "use crate::nn::ops::sdpa_basic; // crate::sd::x in a comment is no edge\n\
             const S: &str = \"crate::train::y\"; fn f<'a>(x: &'a str) -> char { 'x' }",
        ),
        ("kernels/mod.rs", "pub mod attention;"),
        (
            "nn/ops.rs",
            "pub fn sdpa() { super::super::kernels::attention::run(); }\n\
             #[cfg(test)]\nmod tests { use crate::sd::image::x; }",
        ),
        ("nn/mod.rs", "pub mod ops;"),
        (
            "data/folder.rs",
            "use crate::{nn::ops, sd::{image::{self, rgb_to_tensor as r}}};",
        ),
        ("data/mod.rs", "pub mod folder;"),
        (
            "sd/image.rs",
            "mod inner { use super::super::mod_rs_item; }",
        ),
        ("sd/mod.rs", "pub mod image; use image::x;"),
        ("report.rs", "use crate::data::folder;"),
    ]
    .iter()
    .map(|(p, s)| (p.to_string(), s.to_string()))
    .collect();
    let g = Graph::from_sources(&files);
    let cycles = g.cycles();
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert_eq!(cycles[0].0, ["kernels/attention", "nn/ops"]);
    let v = g.violations();
    assert_eq!(v.len(), 3, "{v:?}");
    assert!(v[0].starts_with("report: top-level module `report` is in no layer"));
    assert!(v[1].starts_with(
        "data/folder imports sd/image: data/ (datasets, below the backbone) sits below sd/"
    ));
    assert!(v[2].starts_with(
        "kernels/attention imports nn/ops: kernels/ (CPU kernels, below nn) sits below nn/"
    ));
    // Only the real references: no edge from comments, strings, test modules or to ancestors.
    let all: BTreeSet<(&str, &str)> = g
        .edges
        .iter()
        .flat_map(|(a, bs)| bs.iter().map(move |b| (a.as_str(), b.as_str())))
        .collect();
    assert_eq!(
        all,
        BTreeSet::from([
            ("data/folder", "nn/ops"),
            ("data/folder", "sd/image"),
            ("kernels/attention", "nn/ops"),
            ("nn/ops", "kernels/attention"),
            ("report", "data/folder"),
            ("sd", "sd/image"),
        ])
    );
}
