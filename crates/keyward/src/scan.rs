//! `keyward scan`: finds keyward keys (and management tokens) in files, directories and, with
//! `--git`, every commit of a repository's history. A match is a word of keyward's format whose
//! checksum is valid, so random text almost never matches; `--prefix` adds keys of imported
//! formats (no checksum: any word with that prefix and at least 20 more characters).
//!
//! Nothing found prints the whole key: a finding shows the key's start and end, and its
//! SHA-256 (which is what `--check` sends to the server: the candidates never leave this
//! machine). Exit codes: 0 nothing found, 1 live keys found, 5 only dead or unchecked keys.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use keyward_client::{Error, KeyMatch, LeakReport, Secret};
use keyward_core::keyformat::{self, KeyHash, TOKEN_PREFIX};
use serde_json::{json, Value};

use crate::cli::{ScanArgs, ScanFormat};
use crate::exit::EXIT_USAGE;
use crate::remote::{client, fail};

/// Live keys were found (`--check`).
const EXIT_LIVE: u8 = 1;
/// Keys were found, none of them live (or they were not checked).
const EXIT_FOUND: u8 = 5;
/// Files larger than this are skipped (logs and dumps; a key in them is still worth a look,
/// but not by reading gigabytes).
const MAX_FILE: u64 = 16 * 1024 * 1024;

/// What a match is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Key,
    Token,
    Imported,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Key => "key",
            Kind::Token => "token",
            Kind::Imported => "imported",
        }
    }
}

/// One match. The plaintext is kept in memory only to report the key (`--revoke`).
struct Finding {
    path: String,
    line: usize,
    column: usize,
    commit: Option<String>,
    kind: Kind,
    start: String,
    end: String,
    hash: String,
    plaintext: Secret,
}

/// Every match in `text` (one file, or one added line of a commit starting at `first_line`).
fn find(
    text: &str,
    path: &str,
    first_line: usize,
    commit: Option<&str>,
    prefixes: &[String],
    out: &mut Vec<Finding>,
) {
    for (i, line) in text.lines().enumerate() {
        let mut push = |at: usize, word: &str, kind: Kind, start: String, end: String| {
            out.push(Finding {
                path: path.to_string(),
                line: first_line + i,
                // In characters (SARIF's `columnKind` says so), not bytes.
                column: line.get(..at).map_or(at, |b| b.chars().count()) + 1,
                commit: commit.map(str::to_string),
                kind,
                start,
                end,
                hash: keyformat::hex(&KeyHash::of(word).0),
                plaintext: Secret::new(word.to_string()),
            });
        };
        let mut seen = HashSet::new();
        for (at, p) in keyformat::find_keys(line) {
            let word = &line[at..at + p.prefix.len() + 1 + p.body.len()];
            seen.insert(at);
            let kind = if p.prefix == TOKEN_PREFIX {
                Kind::Token
            } else {
                Kind::Key
            };
            push(at, word, kind, p.start(), p.end());
        }
        if prefixes.is_empty() {
            continue;
        }
        for (at, word) in keyformat::words(line) {
            let imported = prefixes
                .iter()
                .find(|p| word.starts_with(p.as_str()) && word.len() >= p.len() + 20);
            if let (Some(p), false) = (imported, seen.contains(&at)) {
                // An imported key has no checksum and may be short: show its prefix and last
                // two characters only (words are ASCII).
                let end = word.get(word.len() - 2..).unwrap_or_default().to_string();
                push(at, word, Kind::Imported, p.clone(), end);
            }
        }
    }
}

/// Reads a file as text when it is one (no NUL in its first 8 KiB) and not too large.
fn read_text(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_FILE {
        return None;
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FILE)
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.iter().take(8192).any(|b| *b == 0) {
        return None;
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Scans a file or a directory tree (not following symbolic links, skipping `.git`).
fn walk(path: &Path, prefixes: &[String], out: &mut Vec<Finding>) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            if e.file_name().is_some_and(|n| n == ".git") {
                continue;
            }
            // One unreadable entry below a path given is skipped, not the end of the scan.
            if let Err(err) = walk(&e, prefixes, out) {
                eprintln!("warning: skipped {}: {err}", e.display());
            }
        }
    } else if meta.is_file() {
        if let Some(text) = read_text(path) {
            find(&text, &path.display().to_string(), 1, None, prefixes, out);
        }
    }
    Ok(())
}

/// The top directory of the git repository `path` is in.
fn repo_root(path: &Path) -> Result<PathBuf, String> {
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let top = std::process::Command::new("git")
        .arg("-C")
        .arg(&dir)
        .args(["rev-parse", "--show-toplevel"])
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !top.status.success() {
        return Err(format!("{} is not in a git repository", path.display()));
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&top.stdout).trim_end_matches('\n'),
    ))
}

/// A path as `git diff` writes it after `+++ `: `b/` prefixed, C-quoted when unusual, and
/// followed by a tab when it holds a space.
fn diff_path(s: &str) -> Option<String> {
    let s = s.strip_suffix('\t').unwrap_or(s);
    if s == "/dev/null" {
        return None;
    }
    let unquoted = match s.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
        Some(q) => {
            // C-style escapes: \" \\ \t \n and octal bytes (quotepath is off, so rare).
            let mut bytes = Vec::new();
            let mut it = q.bytes().peekable();
            while let Some(b) = it.next() {
                if b != b'\\' {
                    bytes.push(b);
                    continue;
                }
                match it.next() {
                    Some(b't') => bytes.push(b'\t'),
                    Some(b'n') => bytes.push(b'\n'),
                    Some(d @ b'0'..=b'7') => {
                        let mut v = u32::from(d - b'0');
                        for _ in 0..2 {
                            if let Some(&n @ b'0'..=b'7') = it.peek() {
                                v = v * 8 + u32::from(n - b'0');
                                it.next();
                            }
                        }
                        bytes.push(v as u8);
                    }
                    Some(other) => bytes.push(other),
                    None => {}
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
        None => s.to_string(),
    };
    unquoted.strip_prefix("b/").map(str::to_string)
}

/// Scans every commit of the history of the repository at `root`: the lines each commit added
/// (merges against their first parent), with their line numbers in the file of that commit.
/// git's output is read as it comes, so a long history is never held whole.
fn walk_git(root: &Path, prefixes: &[String], out: &mut Vec<Finding>) -> Result<(), String> {
    use std::io::BufRead;
    let mut child = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        // Whatever the user's configuration: plain paths, prefixes a/ and b/, no colours.
        .args(["-c", "core.quotepath=off", "-c", "diff.noprefix=false"])
        .args([
            "log",
            "--all",
            "-p",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--no-renames",
            "--diff-merges=first-parent",
            "--src-prefix=a/",
            "--dst-prefix=b/",
            "--unified=0",
            "--format=%x00commit %H",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run git: {e}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| "cannot read git's output".to_string())?;
    let mut reader = std::io::BufReader::new(stdout);
    let (mut commit, mut file) = (String::new(), None::<String>);
    // The next added line's number, and how many added lines the current hunk still has.
    let (mut next, mut left) = (0usize, 0usize);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("cannot read git's output: {e}")),
        }
        let text = String::from_utf8_lossy(&raw);
        let line = text.strip_suffix('\n').unwrap_or(&text);
        if left > 0 {
            // Inside a hunk: only added (`+`) and removed (`-`) lines, even when their text
            // starts like a header.
            if let Some(added) = line.strip_prefix('+') {
                if let Some(f) = &file {
                    find(added, f, next, Some(&commit), prefixes, out);
                }
                next += 1;
                left -= 1;
            }
            continue;
        }
        if let Some(c) = line.strip_prefix("\0commit ") {
            commit = c.trim().to_string();
        } else if let Some(f) = line.strip_prefix("+++ ") {
            file = diff_path(f);
        } else if let Some(h) = line.strip_prefix("@@ ") {
            // `@@ -a,b +c,d @@`: d added lines (1 when `,d` is left out), from line c.
            let added = h.split_whitespace().find_map(|p| p.strip_prefix('+'));
            let mut parts = added.unwrap_or("0").split(',');
            next = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            left = parts.next().map_or(1, |n| n.parse().unwrap_or(0));
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("cannot wait for git: {e}"))?;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        return Err(format!("git log failed: {}", err.trim()));
    }
    Ok(())
}

fn is_live(m: &KeyMatch) -> bool {
    use keyward_client::KeyStatus::*;
    matches!(m.status, Active | Rotating | Disabled)
}

pub async fn run(args: ScanArgs) -> ExitCode {
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths.clone()
    };
    let mut found = Vec::new();
    for p in &paths {
        if let Err(e) = walk(p, &args.prefixes, &mut found) {
            eprintln!("error: cannot read {}: {e}", p.display());
            return ExitCode::from(EXIT_USAGE);
        }
    }
    if args.git {
        let mut repos = HashSet::new();
        for p in &paths {
            let root = match repo_root(p) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            if !repos.insert(root.clone()) {
                continue;
            }
            if let Err(e) = walk_git(&root, &args.prefixes, &mut found) {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }

    // What the server says of each distinct key (`--check`).
    let mut status: BTreeMap<String, KeyMatch> = BTreeMap::new();
    let checking = args.check || args.revoke;
    if checking {
        match check(&args, &found).await {
            Ok(s) => status = s,
            Err(e) => return fail(e),
        }
    }
    let mut reported = HashSet::new();
    if args.revoke {
        match report(&args, &found, &status).await {
            Ok(r) => reported = r,
            Err(e) => return fail(e),
        }
    }

    let live = found
        .iter()
        .filter(|f| status.get(&f.hash).is_some_and(is_live))
        .map(|f| f.hash.as_str())
        .collect::<HashSet<_>>()
        .len();
    match (args.format, args.remote.json) {
        (ScanFormat::Json, _) | (ScanFormat::Text, true) => {
            println!("{}", json_report(&found, &status, &reported, live))
        }
        (ScanFormat::Sarif, _) => println!("{}", sarif(&found, &status, checking)),
        (ScanFormat::Text, false) => text_report(&found, &status, &reported, checking, live),
    }
    if found.is_empty() {
        ExitCode::SUCCESS
    } else if live > 0 {
        ExitCode::from(EXIT_LIVE)
    } else {
        ExitCode::from(EXIT_FOUND)
    }
}

/// Asks the server about every distinct key found (by hash, 1,000 at a time).
async fn check(args: &ScanArgs, found: &[Finding]) -> Result<BTreeMap<String, KeyMatch>, Error> {
    let hashes: Vec<String> = found
        .iter()
        .filter(|f| f.kind != Kind::Token)
        .map(|f| f.hash.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let c = client(&args.remote)?;
    let mut out = BTreeMap::new();
    for chunk in hashes.chunks(1000) {
        for m in c.lookup_keys(chunk).await? {
            out.insert(m.hash.clone(), m);
        }
    }
    Ok(out)
}

/// Reports each distinct live key as a leak, with where it was first found.
async fn report(
    args: &ScanArgs,
    found: &[Finding],
    status: &BTreeMap<String, KeyMatch>,
) -> Result<HashSet<String>, Error> {
    let c = client(&args.remote)?;
    let mut done = HashSet::new();
    for f in found {
        if !status.get(&f.hash).is_some_and(is_live) || done.contains(&f.hash) {
            continue;
        }
        let source = match &f.commit {
            Some(c) => format!("{}:{} (commit {c})", f.path, f.line),
            None => format!("{}:{}", f.path, f.line),
        };
        let report = LeakReport {
            key: f.plaintext.clone(),
            source: Some(source),
            reporter: Some("keyward scan".into()),
        };
        // The server takes 30 reports a minute from one address: wait when it says so.
        let mut tries = 0;
        loop {
            match c.report_leak(&report).await {
                Ok(()) => break,
                Err(Error::Api {
                    status: 429,
                    retry_after,
                    ..
                }) if tries < 10 => {
                    let wait = retry_after.unwrap_or(std::time::Duration::from_secs(5));
                    eprintln!(
                        "(the server asks to wait {} s before more reports)",
                        wait.as_secs()
                    );
                    tokio::time::sleep(wait.min(std::time::Duration::from_secs(60))).await;
                    tries += 1;
                }
                Err(e) => return Err(e),
            }
        }
        done.insert(f.hash.clone());
    }
    Ok(done)
}

fn state(f: &Finding, status: &BTreeMap<String, KeyMatch>, checked: bool) -> &'static str {
    match (status.get(&f.hash), checked, f.kind) {
        (Some(m), _, _) => m.status.as_str(),
        (None, _, Kind::Token) => "unchecked",
        (None, true, _) => "unknown",
        (None, false, _) => "unchecked",
    }
}

fn where_(f: &Finding) -> String {
    match &f.commit {
        Some(c) => format!(
            "{}:{}:{} (commit {})",
            f.path,
            f.line,
            f.column,
            c.get(..12).unwrap_or(c)
        ),
        None => format!("{}:{}:{}", f.path, f.line, f.column),
    }
}

fn text_report(
    found: &[Finding],
    status: &BTreeMap<String, KeyMatch>,
    reported: &HashSet<String>,
    checked: bool,
    live: usize,
) {
    for f in found {
        let s = state(f, status, checked);
        let id = status
            .get(&f.hash)
            .map(|m| format!(" {}", m.key_id))
            .unwrap_or_default();
        let rep = if reported.contains(&f.hash) {
            " (reported as leaked)"
        } else {
            ""
        };
        println!(
            "{}  {} {}…{}  {s}{id}{rep}",
            where_(f),
            f.kind.as_str(),
            f.start,
            f.end
        );
    }
    let distinct = found.iter().map(|f| &f.hash).collect::<HashSet<_>>().len();
    if found.is_empty() {
        eprintln!("no keys found");
    } else if checked {
        eprintln!(
            "{} findings of {distinct} distinct keys; {live} live",
            found.len()
        );
    } else {
        eprintln!(
            "{} findings of {distinct} distinct keys (not checked: --check asks the server which are live)",
            found.len()
        );
    }
}

fn json_report(
    found: &[Finding],
    status: &BTreeMap<String, KeyMatch>,
    reported: &HashSet<String>,
    live: usize,
) -> Value {
    let items: Vec<Value> = found
        .iter()
        .map(|f| {
            let m = status.get(&f.hash);
            json!({
                "path": f.path, "line": f.line, "column": f.column, "commit": f.commit,
                "kind": f.kind.as_str(), "start": f.start, "end": f.end, "sha256": f.hash,
                "status": m.map(|m| m.status.as_str()),
                "key_id": m.map(|m| m.key_id.as_str()),
                "keyspace_id": m.map(|m| m.keyspace_id.as_str()),
                "reported": reported.contains(&f.hash),
            })
        })
        .collect();
    json!({"findings": items, "live": live})
}

/// A relative path as a URI reference: `/` kept, unreserved characters kept, every other
/// byte percent-encoded (a space, `ü`, `#`).
fn uri(path: &str) -> String {
    let path = path.trim_start_matches("./");
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// SARIF 2.1.0, as GitHub code scanning ingests it.
fn sarif(found: &[Finding], status: &BTreeMap<String, KeyMatch>, checked: bool) -> Value {
    let rules = json!([
        {"id": "keyward/live-key", "name": "LiveApiKey",
         "shortDescription": {"text": "A live keyward API key"},
         "fullDescription": {"text": "A keyward API key that the server says is live is in this file or its history. Revoke it (keyward scan --revoke, or POST /v1/leaks) and remove it."},
         "defaultConfiguration": {"level": "error"}},
        {"id": "keyward/api-key", "name": "ApiKey",
         "shortDescription": {"text": "A keyward API key"},
         "fullDescription": {"text": "A string of keyward's key format with a valid checksum. Run with --check to learn whether it is live."},
         "defaultConfiguration": {"level": "warning"}},
        {"id": "keyward/management-token", "name": "ManagementToken",
         "shortDescription": {"text": "A keyward management token"},
         "fullDescription": {"text": "A keyward management token (kwt_...). Revoke it in keyward."},
         "defaultConfiguration": {"level": "error"}},
        {"id": "keyward/imported-key", "name": "ImportedKey",
         "shortDescription": {"text": "A key of an imported format"},
         "fullDescription": {"text": "A word with a prefix given to --prefix."},
         "defaultConfiguration": {"level": "warning"}},
    ]);
    let results: Vec<Value> = found
        .iter()
        .map(|f| {
            let m = status.get(&f.hash);
            let (rule, level) = match (f.kind, m.is_some_and(is_live)) {
                (Kind::Token, _) => ("keyward/management-token", "error"),
                (_, true) => ("keyward/live-key", "error"),
                (Kind::Imported, false) => ("keyward/imported-key", "warning"),
                (Kind::Key, false) => ("keyward/api-key", "warning"),
            };
            let mut text = format!(
                "{} {}…{} ({})",
                f.kind.as_str(),
                f.start,
                f.end,
                state(f, status, checked)
            );
            if let Some(c) = &f.commit {
                text.push_str(&format!(", added in commit {c}"));
            }
            json!({
                "ruleId": rule,
                "level": level,
                "message": {"text": text},
                "locations": [{"physicalLocation": {
                    "artifactLocation": {"uri": uri(&f.path)},
                    "region": {"startLine": f.line, "startColumn": f.column},
                }}],
                "partialFingerprints": {"keySha256/v1": f.hash},
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "columnKind": "unicodeCodePoints",
            "tool": {"driver": {
                "name": "keyward scan",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "results": results,
        }],
    })
}
