//! `keyward keys import --keyspace KS FILE`: keys issued by another system, from JSON Lines or
//! CSV of any size, read as a stream and sent in batches of at most 1,000 records (one request
//! each, taken whole or refused whole by the server). A progress line on a terminal, a summary
//! at the end.
//!
//! Invariants:
//! - A record that cannot be read stops the run before its batch is sent, naming its line; a
//!   batch the server refuses names the line of the record it refused. Batches sent before stay
//!   imported, and running the same file again skips every record whose `external_id` was
//!   imported (so a fixed file can simply be run again).
//! - Plaintext keys are held as `Secret`s (zeroed when dropped) and never printed: error
//!   messages show no value read from the file.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use keyward_client::{Error, ImportKeys, ImportRecord};
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

use crate::cli::{ImportArgs, ImportFormat};
use crate::exit::{EXIT_FAILED, EXIT_USAGE};
use crate::remote::{client, fail};

/// A batch's body stays well under the server's 4 MiB limit.
const MAX_BATCH_BYTES: usize = 3 * 1024 * 1024;

/// The CSV columns, as the record's fields.
const COLUMNS: &[&str] = &[
    "name",
    "owner",
    "scopes",
    "labels",
    "meta",
    "expires_at",
    "ratelimit",
    "remaining",
    "allowed_cidrs",
    "enabled",
    "created_at",
    "last_used_at",
    "external_id",
    "plaintext",
    "hash",
    "algorithm",
    "lookup",
];

pub async fn run(a: ImportArgs) -> ExitCode {
    match run_(a).await {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

/// What was read, and where.
struct Read_ {
    line: u64,
    record: Result<ImportRecord, String>,
}

/// The records of a file, one at a time.
enum Records {
    Jsonl {
        input: Box<dyn BufRead>,
        line: u64,
        bytes: u64,
    },
    Csv {
        reader: Box<csv::Reader<Box<dyn BufRead>>>,
        columns: Vec<String>,
    },
}

impl Records {
    fn open(path: &Path, format: Option<ImportFormat>) -> Result<(Records, Option<u64>), Error> {
        let (mut input, size): (Box<dyn BufRead>, Option<u64>) = if path.as_os_str() == "-" {
            (Box::new(BufReader::new(std::io::stdin())), None)
        } else {
            let f = std::fs::File::open(path)
                .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
            let size = f.metadata().ok().map(|m| m.len());
            (Box::new(BufReader::with_capacity(1 << 16, f)), size)
        };
        let format = match format {
            Some(f) => f,
            None => match path.extension().and_then(|e| e.to_str()) {
                Some("csv") => ImportFormat::Csv,
                Some("jsonl" | "ndjson" | "json") => ImportFormat::Jsonl,
                _ => {
                    let head = input
                        .fill_buf()
                        .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
                    match head.iter().find(|b| !b.is_ascii_whitespace()) {
                        Some(b'{') => ImportFormat::Jsonl,
                        _ => ImportFormat::Csv,
                    }
                }
            },
        };
        Ok(match format {
            ImportFormat::Jsonl => (
                Records::Jsonl {
                    input,
                    line: 0,
                    bytes: 0,
                },
                size,
            ),
            ImportFormat::Csv => {
                let mut reader = csv::ReaderBuilder::new()
                    .has_headers(true)
                    .trim(csv::Trim::All)
                    .from_reader(input);
                let columns: Vec<String> = reader
                    .headers()
                    .map_err(|e| usage(format!("{}: no CSV header ({e})", path.display())))?
                    .iter()
                    .map(|c| c.to_ascii_lowercase())
                    .collect();
                if let Some(c) = columns.iter().find(|c| !COLUMNS.contains(&c.as_str())) {
                    return Err(usage(format!(
                        "{}: unknown column '{c}' (columns: {})",
                        path.display(),
                        COLUMNS.join(", ")
                    )));
                }
                (
                    Records::Csv {
                        reader: Box::new(reader),
                        columns,
                    },
                    size,
                )
            }
        })
    }

    /// Bytes of the file read so far.
    fn position(&self) -> u64 {
        match self {
            Records::Jsonl { bytes, .. } => *bytes,
            Records::Csv { reader, .. } => reader.position().byte(),
        }
    }

    fn next(&mut self) -> Option<Read_> {
        match self {
            Records::Jsonl { input, line, bytes } => loop {
                let mut buf = Zeroizing::new(String::new());
                *line += 1;
                match input.read_line(&mut buf) {
                    Ok(0) => return None,
                    Ok(n) => *bytes += n as u64,
                    Err(e) => {
                        return Some(Read_ {
                            line: *line,
                            record: Err(format!("cannot be read ({})", e.kind())),
                        })
                    }
                }
                if buf.trim().is_empty() {
                    continue;
                }
                let record = serde_json::from_str::<ImportRecord>(&buf)
                    .map_err(|e| format!("is not a record ({})", without_values(&e.to_string())));
                return Some(Read_ {
                    line: *line,
                    record,
                });
            },
            Records::Csv { reader, columns } => {
                let mut row = csv::StringRecord::new();
                match reader.read_record(&mut row) {
                    Ok(false) => None,
                    Ok(true) => {
                        let line = row.position().map_or(0, |p| p.line());
                        Some(Read_ {
                            line,
                            record: csv_record(columns, &row),
                        })
                    }
                    Err(e) => Some(Read_ {
                        line: e.position().map_or(0, |p| p.line()),
                        record: Err(format!(
                            "is not valid CSV ({})",
                            without_values(&e.to_string())
                        )),
                    }),
                }
            }
        }
    }
}

/// A CSV row as a record: empty cells are left out; `scopes` and `allowed_cidrs` are lists
/// separated by spaces, commas or semicolons (or JSON); `labels` is `name=value` pairs
/// separated by semicolons (or a JSON object); `meta` and `ratelimit` are JSON objects.
fn csv_record(columns: &[String], row: &csv::StringRecord) -> Result<ImportRecord, String> {
    let mut obj = Map::new();
    for (col, cell) in columns.iter().zip(row.iter()) {
        if cell.is_empty() {
            continue;
        }
        let v = match col.as_str() {
            "scopes" | "allowed_cidrs" if !cell.starts_with('[') => Value::Array(
                cell.split([' ', ',', ';'])
                    .filter(|s| !s.is_empty())
                    .map(|s| json!(s))
                    .collect(),
            ),
            "labels" if !cell.starts_with('{') => {
                let mut m = BTreeMap::new();
                for pair in cell.split(';').filter(|p| !p.trim().is_empty()) {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| "column labels: write name=value;name=value".to_string())?;
                    m.insert(k.trim().to_string(), v.trim().to_string());
                }
                json!(m)
            }
            "scopes" | "allowed_cidrs" | "labels" | "meta" | "ratelimit" => {
                serde_json::from_str(cell).map_err(|_| format!("column {col}: not JSON"))?
            }
            "remaining" => json!(cell
                .parse::<i64>()
                .map_err(|_| "column remaining: not an integer".to_string())?),
            "enabled" => match cell.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => json!(true),
                "false" | "0" | "no" => json!(false),
                _ => return Err("column enabled: write true or false".into()),
            },
            // Times: RFC 3339, or milliseconds since the epoch.
            "expires_at" | "created_at" | "last_used_at" => match cell.parse::<i64>() {
                Ok(n) => json!(keyward_client::Timestamp::from_millis(n)),
                Err(_) => json!(cell),
            },
            _ => json!(cell),
        };
        obj.insert(col.clone(), v);
    }
    serde_json::from_value::<ImportRecord>(Value::Object(obj))
        .map_err(|e| format!("is not a record ({})", without_values(&e.to_string())))
}

/// An error message with every quoted value replaced, so no key read from the file is shown.
fn without_values(m: &str) -> String {
    let mut out = String::with_capacity(m.len());
    let mut quoted = false;
    for c in m.chars() {
        match c {
            '"' if !quoted => {
                quoted = true;
                out.push_str("\"…");
            }
            '"' => {
                quoted = false;
                out.push('"');
            }
            _ if quoted => {}
            _ => out.push(c),
        }
    }
    out
}

fn usage(m: impl Into<String>) -> Error {
    Error::Usage(m.into())
}

async fn run_(a: ImportArgs) -> Result<ExitCode, Error> {
    let api = client(&a.remote)?;
    let (mut records, size) = Records::open(&a.file, a.format)?;
    let file = a.file.display().to_string();
    let progress = std::io::stderr().is_terminal();
    let started = Instant::now();
    let (mut read, mut created, mut skipped, mut requests) = (0u64, 0u64, 0u64, 0u64);
    loop {
        let mut batch = Vec::with_capacity(a.batch_size as usize);
        let mut lines = Vec::with_capacity(a.batch_size as usize);
        let mut bytes = 0;
        while batch.len() < a.batch_size as usize && bytes < MAX_BATCH_BYTES {
            let Some(r) = records.next() else { break };
            match r.record {
                Ok(rec) => {
                    bytes += serde_json::to_vec(&rec).map_or(0, |v| Zeroizing::new(v).len());
                    batch.push(rec);
                    lines.push(r.line);
                }
                Err(m) => {
                    end_progress(progress);
                    eprintln!("error: {file}:{}: the record {m}", r.line);
                    report_done(created, skipped, requests);
                    return Ok(ExitCode::from(EXIT_USAGE));
                }
            }
        }
        if batch.is_empty() {
            break;
        }
        let n = batch.len() as u64;
        let req = ImportKeys {
            keys: batch,
            allow_policy_violations: a.allow_policy_violations,
        };
        match api.import_keys(&a.keyspace, &req).await {
            Ok(answer) => {
                created += answer.created;
                skipped += answer.skipped;
                requests += 1;
                read += n;
            }
            Err(e) => {
                end_progress(progress);
                if let Error::Api { message, .. } = &e {
                    if let Some(line) = refused_line(message, &lines) {
                        eprintln!("error: {file}:{line}: {message}");
                        report_done(created, skipped, requests);
                        return Ok(ExitCode::from(EXIT_FAILED));
                    }
                }
                report_done(created, skipped, requests);
                return Err(e);
            }
        }
        if progress {
            let pct = size
                .filter(|s| *s > 0)
                .map(|s| format!(" ({}%)", records.position() * 100 / s))
                .unwrap_or_default();
            eprint!("\r{read} records sent: {created} created, {skipped} skipped{pct}   ");
            let _ = std::io::stderr().flush();
        }
    }
    end_progress(progress);
    let secs = started.elapsed().as_secs_f64();
    if a.remote.json {
        println!(
            "{}",
            json!({"records": read, "created": created, "skipped": skipped, "requests": requests, "seconds": secs})
        );
    } else {
        println!(
            "{file}: {read} records, {created} created, {skipped} skipped (imported before), in {requests} requests, {secs:.1} s"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The file line of the record a refusal names (`keys[i]...`).
fn refused_line(message: &str, lines: &[u64]) -> Option<u64> {
    let rest = message.strip_prefix("keys[")?;
    let i: usize = rest[..rest.find(']')?].parse().ok()?;
    lines.get(i).copied()
}

fn end_progress(progress: bool) {
    if progress {
        eprintln!();
    }
}

/// After a failure: what earlier batches did (they stay imported).
fn report_done(created: u64, skipped: u64, requests: u64) {
    if requests > 0 {
        eprintln!(
            "{requests} earlier requests were imported ({created} created, {skipped} skipped); \
             records with an external_id are skipped when the file is run again"
        );
    } else {
        eprintln!("nothing was imported");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csv_row_becomes_a_record() {
        let cols: Vec<String> = [
            "name",
            "scopes",
            "labels",
            "remaining",
            "enabled",
            "plaintext",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let row = csv::StringRecord::from(vec![
            "billing",
            "orders:read orders:write",
            "env=prod;team=a",
            "100",
            "no",
            "sk_live_0123456789abcdef",
        ]);
        let r = csv_record(&cols, &row).unwrap();
        assert_eq!(r.name.as_deref(), Some("billing"));
        assert_eq!(r.scopes, vec!["orders:read", "orders:write"]);
        assert_eq!(r.labels.get("team").map(String::as_str), Some("a"));
        assert_eq!((r.remaining, r.enabled), (Some(100), Some(false)));
        assert_eq!(
            r.plaintext.as_ref().map(|p| p.expose()),
            Some("sk_live_0123456789abcdef")
        );
    }

    #[test]
    fn messages_show_no_value_and_name_the_refused_line() {
        let m = without_values(r#"invalid type: string "sk_live_secret", expected i64"#);
        assert!(!m.contains("sk_live"), "{m}");
        assert_eq!(refused_line("keys[2].hash: bad", &[4, 7, 9]), Some(9));
        assert_eq!(refused_line("keyspace not found", &[4]), None);
    }
}
