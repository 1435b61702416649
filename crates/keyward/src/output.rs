//! Human-readable tables for the CLI (`--json` prints the API's JSON instead).

use serde_json::Value;

#[derive(Clone, Copy)]
pub enum Format {
    Table,
    Json,
}

/// A JSON value as a table cell: `-` for null, strings unquoted, lists joined by commas.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            if a.is_empty() {
                "-".into()
            } else {
                a.iter().map(cell).collect::<Vec<_>>().join(",")
            }
        }
        other => other.to_string(),
    }
}

fn s(v: &Value) -> String {
    cell(v)
}

/// Prints objects as a table of the given `(header, field)` columns.
pub fn rows(items: &[Value], columns: &[(&str, &str)]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|it| columns.iter().map(|(_, f)| cell(&it[*f])).collect())
        .collect();
    let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    table(&headers, &rows);
}

/// Prints rows as aligned columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

pub fn print_keys(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|k| {
            vec![
                s(&k["id"]),
                s(&k["name"]),
                s(&k["owner"]),
                s(&k["status"]),
                format!("{}…{}", s(&k["start"]), s(&k["end"])),
                s(&k["expires_at"]),
                s(&k["last_used_at"]),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "OWNER",
            "STATUS",
            "KEY",
            "EXPIRES",
            "LAST USED",
        ],
        &rows,
    );
}

pub fn print_key(k: &Value, format: Format) {
    if let Format::Json = format {
        println!("{k}");
        return;
    }
    let fields = [
        "id",
        "name",
        "keyspace_id",
        "owner",
        "status",
        "scopes",
        "labels",
        "created_at",
        "expires_at",
        "last_used_at",
        "call_count",
        "denied_count",
        "remaining",
        "ratelimit",
        "rotated_from",
        "rotated_to",
        "revoked_at",
        "revoked_reason",
    ];
    for f in fields {
        let v = if f == "id" {
            format!("{}  ({}…{})", s(&k["id"]), s(&k["start"]), s(&k["end"]))
        } else {
            s(&k[f])
        };
        println!("{:<14} {}", format!("{f}:"), v);
    }
}

pub fn print_keyspaces(items: &[Value]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|k| {
            vec![
                s(&k["id"]),
                s(&k["name"]),
                format!("{}_", s(&k["prefix"])),
                k["routes"].as_array().map_or(0, Vec::len).to_string(),
                s(&k["unmatched"]),
                s(&k["created_at"]),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "PREFIX", "RULES", "UNMATCHED", "CREATED"],
        &rows,
    );
}

/// One keyspace: its fields, then its route rules as a table.
pub fn print_keyspace(k: &Value) {
    let policy = k["policy"]
        .as_object()
        .map(|p| {
            p.iter()
                .map(|(f, v)| format!("{f}={}", s(v)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    for (label, v) in [
        ("id", s(&k["id"])),
        ("name", s(&k["name"])),
        ("prefix", format!("{}_", s(&k["prefix"]))),
        ("policy", policy),
        ("unmatched", s(&k["unmatched"])),
        ("updated", s(&k["updated_at"])),
    ] {
        println!("{label:<10} {v}");
    }
    let rules = k["routes"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if rules.is_empty() {
        println!("routes     none");
        return;
    }
    println!();
    let rows: Vec<Vec<String>> = rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let scopes: Vec<String> = r["scopes"]
                .as_array()
                .map(|a| a.iter().map(s).collect())
                .unwrap_or_default();
            vec![
                i.to_string(),
                r["method"].as_str().unwrap_or("any").to_string(),
                s(&r["path"]),
                if scopes.is_empty() {
                    "-".into()
                } else {
                    scopes.join(",")
                },
            ]
        })
        .collect();
    table(&["#", "METHOD", "PATH", "SCOPES"], &rows);
}
