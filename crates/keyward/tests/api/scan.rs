//! `keyward scan` on a generated repository: keys in files and in old commits, found by format
//! and checksum, checked by hash, reported as leaks; text, JSON and SARIF; exit codes 0, 1, 5;
//! never the whole key in any output.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::both;
use crate::helpers::{TempDir, TestApp};

const BIN: &str = env!("CARGO_BIN_EXE_keyward");

fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=dev",
            "-c",
            "user.email=dev@example.com",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs `keyward scan`; every run is checked for a whole key in its output.
async fn scan(app: &TestApp, token: &str, args: &[&str]) -> Output {
    let (url, token) = (app.url.clone(), token.to_string());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let o = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .arg("scan")
            .args(&args)
            .env("KEYWARD_URL", url)
            .env("KEYWARD_TOKEN", token)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        keyward_core::keyformat::find_keys(&out(&o))
            .next()
            .is_none(),
        "a whole key in the output: {}",
        out(&o)
    );
    o
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn scan_finds_keys_in_files_and_history_checks_them_by_hash_and_reports_live_ones(
    app: TestApp,
) {
    if Command::new("git").arg("--version").output().is_err() {
        assert!(std::env::var("CI").is_err(), "git is required under CI");
        eprintln!("SKIPPED: git is not installed; the scan test needs it");
        return;
    }
    let ks = app.keyspace(json!({})).await;
    let (live_id, live) = app.key(&ks, json!({"owner": "acme"})).await;
    let (dead_id, dead) = app.key(&ks, json!({"owner": "acme"})).await;
    app.post(
        &format!("/v1/keys/{dead_id}/revoke"),
        json!({"reason": "old"}),
    )
    .await
    .expect(200);
    let prefix = live.rsplit_once('_').unwrap().0.to_string();
    // Well-formed but never issued here; and one character off (fails the checksum).
    let stranger = keyward_core::keyformat::generate(&prefix)
        .expose()
        .to_string();
    let typo = format!(
        "{}{}",
        &live[..live.len() - 1],
        if live.ends_with('A') { 'B' } else { 'A' }
    );

    let dir = TempDir::new();
    let repo = dir.0.join("repo");
    std::fs::create_dir_all(repo.join("src")).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(
        repo.join("src/config.py"),
        format!("import os\nAPI_KEY = \"{live}\"\n"),
    )
    .unwrap();
    // A path git quotes or pads, and an added line that looks like a diff header.
    std::fs::create_dir_all(repo.join("old notes")).unwrap();
    std::fs::write(
        repo.join("old notes/ünïcode.md"),
        format!("# notes\n++ {dead}\n"),
    )
    .unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "config"]);
    std::fs::write(
        repo.join("src/config.py"),
        "import os\nAPI_KEY = os.environ['API_KEY']\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("README.md"),
        format!("# demo\nexample: {stranger}\nnot a key: {typo}\n"),
    )
    .unwrap();
    std::fs::write(repo.join("blob.bin"), [0u8, 1, 2, 3]).unwrap();
    git(&repo, &["rm", "-q", "-r", "old notes"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "use the environment"]);
    let repo_s = repo.display().to_string();

    // The working tree only: the stranger, unchecked -> 5; the typo is not a key.
    let o = scan(&app, &app.admin, &[&repo_s]).await;
    assert_eq!(o.status.code(), Some(5), "{}", out(&o));
    let text = out(&o);
    assert!(text.contains("README.md:2:10"), "{text}");
    assert_eq!(text.matches("README.md").count(), 1, "{text}");
    assert!(text.contains("unchecked"), "{text}");

    // With the history and --check: the live key in the first commit -> 1.
    let o = scan(
        &app,
        &app.admin,
        &[&repo_s, "--git", "--check", "--format", "json"],
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let findings = v["findings"].as_array().unwrap();
    let by_status = |s: &str| findings.iter().filter(|f| f["status"] == s).count();
    assert_eq!(v["live"], 1);
    assert_eq!(by_status("active"), 1);
    assert_eq!(by_status("revoked"), 1);
    let active = findings.iter().find(|f| f["status"] == "active").unwrap();
    assert_eq!(active["key_id"], live_id.as_str());
    assert_eq!(active["path"], "src/config.py");
    assert_eq!(active["line"], 2);
    assert_eq!(active["column"], 12);
    assert_eq!(active["commit"].as_str().map(str::len), Some(40));
    assert!(findings
        .iter()
        .any(|f| f["path"].as_str().unwrap().ends_with("README.md") && f["status"].is_null()));
    let revoked = findings.iter().find(|f| f["status"] == "revoked").unwrap();
    assert_eq!(revoked["path"], "old notes/ünïcode.md");
    assert_eq!(
        (revoked["line"].as_u64(), revoked["column"].as_u64()),
        (Some(2), Some(4))
    );

    // SARIF 2.1.0 for code scanning.
    let o = scan(
        &app,
        &app.admin,
        &[&repo_s, "--git", "--check", "--format", "sarif"],
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["version"], "2.1.0");
    let results = s["runs"][0]["results"].as_array().unwrap();
    assert_eq!(results.len(), findings.len());
    assert!(results
        .iter()
        .any(|r| r["ruleId"] == "keyward/live-key" && r["level"] == "error"));
    let rules: Vec<&str> = s["runs"][0]["tool"]["driver"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(results
        .iter()
        .all(|r| rules.contains(&r["ruleId"].as_str().unwrap())
            && r["locations"][0]["physicalLocation"]["region"]["startLine"].as_u64() > Some(0)));

    validate_sarif(&o.stdout, &dir.0);

    // --check needs the audit right.
    let viewer = app.token("viewer", None).await;
    let o = scan(&app, &viewer, &[&repo_s, "--git", "--check"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("FORBIDDEN"), "{}", out(&o));

    // --revoke reports the live key; the next check finds only dead ones -> 5.
    let o = scan(&app, &app.admin, &[&repo_s, "--git", "--revoke"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("reported as leaked"), "{}", out(&o));
    let started = std::time::Instant::now();
    while app.verify_code(&live).await != "REVOKED" {
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let leaked = app.audit_actions("key.leaked").await;
    assert_eq!(leaked[0]["actor"]["name"], "keyward scan");
    assert!(leaked[0]["changes"]["source"][1]
        .as_str()
        .unwrap()
        .starts_with("src/config.py:2 (commit "));
    let o = scan(&app, &app.admin, &[&repo_s, "--git", "--check"]).await;
    assert_eq!(o.status.code(), Some(5), "{}", out(&o));

    // A clean tree -> 0; an imported format by prefix.
    let clean = dir.0.join("clean");
    std::fs::create_dir_all(&clean).unwrap();
    std::fs::write(clean.join("a.txt"), "nothing here\n").unwrap();
    let o = scan(&app, &app.admin, &[&clean.display().to_string()]).await;
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    std::fs::write(clean.join("b.env"), "LEGACY=sk_live_0123456789abcdefghij\n").unwrap();
    let o = scan(
        &app,
        &app.admin,
        &[&clean.display().to_string(), "--prefix", "sk_live_"],
    )
    .await;
    assert_eq!(o.status.code(), Some(5), "{}", out(&o));
    assert!(out(&o).contains("imported sk_live_…ij"), "{}", out(&o));
    assert!(!out(&o).contains("sk_live_0123456789abcdefghij"));
}
both!(scan_finds_keys_in_files_and_history_checks_them_by_hash_and_reports_live_ones);

/// The pre-commit hook shipped in `.pre-commit-hooks.yaml`, run as pre-commit runs it: its
/// `entry` with the staged file names. A key stops the commit; a clean file passes.
#[test]
fn the_shipped_pre_commit_hook_stops_a_commit_with_a_key() {
    let hooks = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.pre-commit-hooks.yaml"),
    )
    .unwrap();
    let entry = hooks
        .lines()
        .find_map(|l| l.trim().strip_prefix("entry:"))
        .unwrap()
        .trim();
    assert!(hooks.contains("pass_filenames: true"));
    let args: Vec<&str> = entry.split_whitespace().collect();
    assert_eq!(args[0], "keyward");
    let dir = TempDir::new();
    let staged = dir.0.join("settings.toml");
    let key = keyward_core::keyformat::generate("acme")
        .expose()
        .to_string();
    std::fs::write(&staged, format!("api_key = \"{key}\"\n")).unwrap();
    let clean = dir.0.join("clean.toml");
    std::fs::write(&clean, "debug = true\n").unwrap();
    let run = |files: &[&Path]| {
        Command::new(BIN)
            .args(&args[1..])
            .args(files)
            .env_remove("KEYWARD_TOKEN")
            .output()
            .unwrap()
    };
    let o = run(&[&staged, &clean]);
    assert_eq!(o.status.code(), Some(5), "{}", out(&o));
    assert!(!out(&o).contains(&key));
    assert_eq!(run(&[&clean]).status.code(), Some(0));
}

/// Checks SARIF against the SARIF 2.1.0 JSON schema with the validator of `tests/sarif`
/// (`npm ci` there; `.ci/run` installs it). Skipped with a notice outside CI when missing.
fn validate_sarif(sarif: &[u8], dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sarif");
    let ready = root.join("node_modules").is_dir()
        && Command::new("node").arg("--version").output().is_ok();
    if !ready {
        assert!(
            std::env::var("CI").is_err(),
            "CI: tests/sarif needs node and `npm ci`"
        );
        eprintln!("SKIPPED: SARIF schema check (run `npm ci` in tests/sarif)");
        return;
    }
    let file = dir.join("scan.sarif");
    std::fs::write(&file, sarif).unwrap();
    let o = Command::new("node")
        .arg(root.join("validate.mjs"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "SARIF 2.1.0 schema: {}", out(&o));
}

/// The real pre-commit tool (`.venv-precommit`, installed by `.ci/run` from PyPI) runs the
/// hook this repository ships, in another project: a staged file with a key fails the hook,
/// a clean one passes.
#[test]
fn the_pre_commit_tool_runs_the_shipped_hook() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let local = root.join(".venv-precommit/bin/pre-commit");
    let tool = if local.exists() {
        local
    } else if Command::new("pre-commit").arg("--version").output().is_ok() {
        "pre-commit".into()
    } else {
        assert!(std::env::var("CI").is_err(), "CI: pre-commit is required");
        eprintln!("SKIPPED: pre-commit is not installed (.ci/run installs it)");
        return;
    };
    let dir = TempDir::new();
    let project = dir.0.join("project");
    std::fs::create_dir_all(&project).unwrap();
    git(&project, &["init", "-q"]);
    let key = keyward_core::keyformat::generate("acme")
        .expose()
        .to_string();
    std::fs::write(
        project.join("settings.toml"),
        format!("api_key = \"{key}\"\n"),
    )
    .unwrap();
    std::fs::write(project.join("clean.toml"), "debug = true\n").unwrap();
    git(&project, &["add", "."]);
    // The hook's `entry` is `keyward scan`: the binary under test, first on the PATH.
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |file: &str| {
        Command::new(&tool)
            .current_dir(&project)
            .args(["try-repo"])
            .arg(&root)
            .args(["keyward-scan", "--files", file])
            .env("PATH", &path)
            .env("PRE_COMMIT_HOME", dir.0.join("cache"))
            .env_remove("KEYWARD_TOKEN")
            .output()
            .unwrap()
    };
    let o = run("settings.toml");
    assert!(!o.status.success(), "a key passed the hook: {}", out(&o));
    assert!(out(&o).contains("keyward scan"), "{}", out(&o));
    assert!(!out(&o).contains(&key), "the hook printed the key");
    let o = run("clean.toml");
    assert!(
        o.status.success(),
        "a clean file failed the hook: {}",
        out(&o)
    );
}
