//! Real-browser tests of the dashboard: starts `keyward serve` on port 0 with a fresh SQLite
//! database and runs `node tests/browser/run.mjs` (headless Chromium through playwright-core)
//! against it: first-run setup link, sign-in, create a key and read its plaintext from the page,
//! verify it through the API, revoke it in the UI, a viewer who finds no revoke button and is
//! refused when posting the form, and CSRF refusals.
//!
//! Needs `node`, `/usr/bin/chromium` (or `KEYWARD_CHROMIUM`) and `npm ci` in `tests/browser`.
//! Without them the test says SKIPPED on standard error (past the harness's capture, so a
//! person sees it) and passes, except under `CI=true`, where it fails.
//! With `KEYWARD_SCREENSHOTS=docs/screenshots` it also writes screenshots of the main pages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_keyward");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// What is missing to run the browser tests, if anything.
fn missing_tools(root: &Path) -> Option<String> {
    let chromium = std::env::var("KEYWARD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node is not installed".into());
    }
    if !Path::new(&chromium).exists() {
        return Some(format!("{chromium} is missing (apt-get install chromium)"));
    }
    if !root
        .join("tests/browser/node_modules/playwright-core")
        .exists()
    {
        return Some("tests/browser/node_modules is missing (run npm ci in tests/browser)".into());
    }
    None
}

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_dashboard_works_in_a_real_browser() {
    let root = repo_root();
    if let Some(why) = missing_tools(&root) {
        if in_ci() {
            panic!("CI=true but the browser tests cannot run: {why}");
        }
        keyward_store::testing::announce_skip(&format!(
            "the_dashboard_works_in_a_real_browser did not run: {why}"
        ));
        return;
    }
    let dir = std::env::temp_dir().join(format!(
        "keyward-browser-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}", dir.join("keyward.db").display());

    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &db])
        .env("KEYWARD_USAGE_FLUSH_MS", "200")
        .env("KEYWARD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let server = Server(child);

    // The first-run setup link is printed on stdout: it also tells the port.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(i) = line.find("http://") {
                let _ = tx.send(line[i..].trim().to_string());
            }
        }
    });
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let link = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("keyward serve printed no setup link"));
    let base = link.split("/setup").next().unwrap_or_default().to_string();

    let mut node = Command::new("node");
    node.current_dir(&root).args([
        "tests/browser/run.mjs",
        "--url",
        &base,
        "--setup-link",
        &link,
        "--keyward",
        BIN,
        "--database-url",
        &db,
    ]);
    if let Ok(shots) = std::env::var("KEYWARD_SCREENSHOTS") {
        node.args(["--screenshots", &shots]);
    }
    let out = node.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    drop(server);
    let server_log = errors.join().unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "browser tests failed:\n{stdout}\n{}\nserver log:\n{server_log}",
        String::from_utf8_lossy(&out.stderr)
    );
}
