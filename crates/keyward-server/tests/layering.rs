//! The workspace's modules import each other without cycles: within each crate, the graph of
//! top-level modules (a file or folder under `src/`) drawn from `crate::` paths in code (`use`
//! lines and paths; comments left out) has no cycle. A cycle is what lets "everything takes
//! everything" grow back; this test names the modules of any cycle it finds.
//!
//! Run it alone with `cargo test -p keyward-server --test layering`.

#[cfg(test)]
mod layering {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

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

    /// The code of a file without comments and without its unit tests.
    fn code_of(text: &str) -> String {
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        text.lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The first segments of every `crate::` path in `code`, braces of `use crate::{...}` included.
    fn crate_references(code: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(inner) = rest.strip_prefix('{') {
                // A group: its top-level items, each up to `,` at depth 0.
                let mut depth = 0;
                let mut item = String::new();
                for c in inner.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            found.insert(first_segment(&item));
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    if depth == 0 {
                        item.push(c);
                    }
                }
                found.insert(first_segment(&item));
            } else {
                found.insert(first_segment(rest));
            }
        }
        found.retain(|s| !s.is_empty());
        found
    }

    fn first_segment(s: &str) -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    }

    /// Top-level module of a file: `src/a.rs` and `src/a/...` are `a`; `lib.rs` and `main.rs` are
    /// the crate root, which may use anything.
    fn module_of(src: &Path, file: &Path) -> Option<String> {
        let rel = file.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()?
            .as_os_str()
            .to_string_lossy()
            .to_string();
        let name = first.trim_end_matches(".rs").to_string();
        (name != "lib" && name != "main").then_some(name)
    }

    fn cycles_in(crate_dir: &Path) -> Vec<Vec<String>> {
        let src = crate_dir.join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(&src, f)).collect();
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in &files {
            let Some(from) = module_of(&src, f) else {
                continue;
            };
            let code = code_of(&std::fs::read_to_string(f).unwrap());
            for to in crate_references(&code) {
                if to != from && modules.contains(&to) {
                    graph.entry(from.clone()).or_default().insert(to);
                }
            }
        }
        // Every edge a -> b where a is reachable from b closes a cycle.
        let reach = |start: &str| {
            let mut seen = BTreeSet::new();
            let mut stack = vec![start.to_string()];
            while let Some(m) = stack.pop() {
                for next in graph.get(&m).into_iter().flatten() {
                    if seen.insert(next.clone()) {
                        stack.push(next.clone());
                    }
                }
            }
            seen
        };
        let mut cycles = Vec::new();
        for (from, tos) in &graph {
            for to in tos {
                if reach(to).contains(from) {
                    cycles.push(vec![from.clone(), to.clone()]);
                }
            }
        }
        cycles
    }

    #[test]
    fn no_crate_of_the_workspace_has_an_import_cycle_between_its_modules() {
        let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut checked = 0;
        for name in [
            "keyward-core",
            "keyward-store",
            "keyward-server",
            "keyward-client",
            "keyward",
        ] {
            let cycles = cycles_in(&crates.join(name));
            assert!(
                cycles.is_empty(),
                "{name}: these imports close a cycle (module -> module it uses): {cycles:?}"
            );
            checked += 1;
        }
        assert_eq!(checked, 5);
    }

    #[test]
    fn the_reference_reader_sees_groups_and_paths() {
        let code = "use crate::{a, b::c, d::{e, f}};\nfn x() { crate::g::h(); }";
        let found: Vec<String> = crate_references(code).into_iter().collect();
        assert_eq!(found, ["a", "b", "d", "g"]);
    }
}
