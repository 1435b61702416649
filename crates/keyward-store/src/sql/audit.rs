//! The audit log: appending the next event of the hash chain, the filtered list (newest first)
//! and the export/verify walk (oldest first).
//!
//! Invariant: events are appended only inside a write transaction, which holds the write lock
//! (see the `sql` module docs), so `seq` has no gaps and each event's `prev_hash` is the hash of
//! the event before it; the hash covers exactly what a read returns.

pub(super) const AUDIT_COLS: &str =
    "seq, id, at, actor_type, actor_id, actor_name, action, target_type, \
    target_id, reason, request_id, ip, changes, prev_hash, hash";

/// One event as read: the columns of [`AUDIT_COLS`], in order.
pub(super) type EventColumns = (
    i64,
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
);

/// The event of one row's columns. An unknown actor type can only come from an edited row: it
/// is kept visible to the chain check (as `system`, so the hash no longer matches) rather than
/// failing the read.
pub(super) fn event(c: EventColumns) -> crate::Result<keyward_core::model::AuditEvent> {
    use keyward_core::model::{Actor, ActorKind, AuditEvent};
    let (seq, id, at, kind, actor_id, actor_name, action, target_type, target_id) =
        (c.0, c.1, c.2, c.3, c.4, c.5, c.6, c.7, c.8);
    let (reason, request_id, ip, changes, prev_hash, hash) = (c.9, c.10, c.11, c.12, c.13, c.14);
    Ok(AuditEvent {
        id,
        seq,
        at: keyward_core::time::Timestamp::from_millis(at),
        actor: Actor {
            kind: ActorKind::parse(&kind).unwrap_or(ActorKind::System),
            id: actor_id,
            name: actor_name,
        },
        action,
        target_type,
        target_id,
        reason,
        request_id,
        ip,
        changes: crate::sql::common::json("changes", &changes)?,
        prev_hash,
        hash,
    })
}

/// This file's SQL for one backend.
macro_rules! for_backend {
    ($DB:ty, $Row:ty, $json_rows:expr) => {
        use keyward_core::audit::{event_hash, GENESIS_HASH};
        use keyward_core::model::AuditEvent;

        use crate::sql::audit::AUDIT_COLS;
        use crate::sql::common::{get, json, map_err, to_json, Writes};
        use crate::{AuditFilter, NewEvent, Result};

        fn audit_from_row(r: &$Row) -> Result<AuditEvent> {
            crate::sql::audit::event((
                get(r, "seq")?,
                get(r, "id")?,
                get(r, "at")?,
                get(r, "actor_type")?,
                get(r, "actor_id")?,
                get(r, "actor_name")?,
                get(r, "action")?,
                get(r, "target_type")?,
                get(r, "target_id")?,
                get(r, "reason")?,
                get(r, "request_id")?,
                get(r, "ip")?,
                get(r, "changes")?,
                get(r, "prev_hash")?,
                get(r, "hash")?,
            ))
        }

        /// Appends `e` after the chain's last event: `head` when the transaction knows it (see
        /// `known`), else read; `head` is this event afterwards.
        pub(super) async fn append_audit(
            conn: &mut <$DB as sqlx::Database>::Connection,
            head: &mut Option<(i64, String)>,
            e: NewEvent,
        ) -> Result<AuditEvent> {
            let mut events = append_audits(conn, head, vec![e]).await?;
            events
                .pop()
                .ok_or_else(|| crate::StoreError::Other("no audit event was appended".into()))
        }

        /// Appends `events` in order after the chain's last event, each chained to the one
        /// before, in multi-row statements (a bulk change writes one event per key without a
        /// round trip per event). `head` is the last of them afterwards.
        pub(super) async fn append_audits(
            conn: &mut <$DB as sqlx::Database>::Connection,
            head: &mut Option<(i64, String)>,
            events: Vec<NewEvent>,
        ) -> Result<Vec<AuditEvent>> {
            if events.is_empty() {
                return Ok(Vec::new());
            }
            let (out, last) = chained(head_of(conn, head.take()).await?, events)?;
            for chunk in out.chunks(EVENT_CHUNK) {
                let mut w = Writes::new();
                push_events(&mut w, chunk);
                if let Some(mut q) = w.finish() {
                    q.build().execute(&mut *conn).await.map_err(map_err)?;
                }
            }
            *head = Some(last);
            Ok(out.into_iter().map(|(e, _)| e).collect())
        }

        /// 15 columns an event: this many stay under either backend's bind limit in one write.
        const EVENT_CHUNK: usize = 1000;

        /// The chain's last event (`seq` and hash): `known` when the transaction knows it (see
        /// `known`), else read.
        pub(super) async fn head_of(
            conn: &mut <$DB as sqlx::Database>::Connection,
            known: Option<(i64, String)>,
        ) -> Result<(i64, String)> {
            if let Some(h) = known {
                return Ok(h);
            }
            let last = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_err)?;
            Ok(match last {
                Some(r) => (get::<i64, _>(&r, "seq")?, get::<String, _>(&r, "hash")?),
                None => (0, GENESIS_HASH.to_string()),
            })
        }

        /// `events` chained in order after `head`, each with its changes as the text to store
        /// (the hash covers them as they round-trip through it); and the new head.
        pub(super) fn chained(
            head: (i64, String),
            events: Vec<NewEvent>,
        ) -> Result<(Vec<(AuditEvent, String)>, (i64, String))> {
            let (mut last_seq, mut prev_hash) = head;
            let mut out = Vec::with_capacity(events.len());
            for e in events {
                let changes_text = to_json(&e.changes);
                let mut event = AuditEvent {
                    id: e.id,
                    seq: last_seq + 1,
                    at: e.at,
                    actor: e.actor,
                    action: e.action.as_str().to_string(),
                    target_type: e.target_type.as_str().to_string(),
                    target_id: e.target_id,
                    reason: e.reason,
                    request_id: e.request_id,
                    ip: e.ip,
                    changes: json("changes", &changes_text)?,
                    prev_hash,
                    hash: String::new(),
                };
                event.hash = event_hash(&event);
                last_seq = event.seq;
                prev_hash = event.hash.clone();
                out.push((event, changes_text));
            }
            Ok((out, (last_seq, prev_hash)))
        }

        /// The rows of chained events (at most [`EVENT_CHUNK`]) as one write of `w`.
        pub(super) fn push_events(w: &mut Writes<'static, $DB>, events: &[(AuditEvent, String)]) {
            let q = w.next();
            q.push(format!("INSERT INTO audit_events ({AUDIT_COLS}) "));
            q.push_values(events, |mut b, (event, changes_text)| {
                b.push_bind(event.seq)
                    .push_bind(event.id.clone())
                    .push_bind(event.at.millis())
                    .push_bind(event.actor.kind.as_str())
                    .push_bind(event.actor.id.clone())
                    .push_bind(event.actor.name.clone())
                    .push_bind(event.action.clone())
                    .push_bind(event.target_type.clone())
                    .push_bind(event.target_id.clone())
                    .push_bind(event.reason.clone())
                    .push_bind(event.request_id.clone())
                    .push_bind(event.ip.clone())
                    .push_bind(changes_text.clone())
                    .push_bind(event.prev_hash.clone())
                    .push_bind(event.hash.clone());
            });
        }

        pub(super) async fn list_audit(
            pool: &sqlx::Pool<$DB>,
            f: &AuditFilter,
        ) -> Result<Vec<AuditEvent>> {
            let mut q = sqlx::QueryBuilder::<$DB>::new(format!(
                "SELECT {AUDIT_COLS} FROM audit_events WHERE 1 = 1"
            ));
            if let Some(v) = &f.target_id {
                q.push(" AND target_id = ").push_bind(v.clone());
            }
            if let Some(v) = &f.actor_id {
                q.push(" AND actor_id = ").push_bind(v.clone());
            }
            if let Some(v) = &f.action {
                q.push(" AND action = ").push_bind(v.clone());
            }
            if let Some(v) = f.from {
                q.push(" AND at >= ").push_bind(v.millis());
            }
            if let Some(v) = f.to {
                q.push(" AND at < ").push_bind(v.millis());
            }
            if let Some(seq) = f.page.after {
                q.push(" AND seq < ").push_bind(seq);
            }
            q.push(" ORDER BY seq DESC LIMIT ").push_bind(f.page.limit);
            let rows = q.build().fetch_all(pool).await.map_err(map_err)?;
            rows.iter().map(audit_from_row).collect()
        }

        /// Events with `seq > after_seq`, oldest first (the export and the chain check walk
        /// the whole trail; see `common::json_rows_around`).
        pub(super) async fn audit_after(
            pool: &sqlx::Pool<$DB>,
            after_seq: i64,
            limit: i64,
        ) -> Result<Vec<AuditEvent>> {
            let (head, tail) = crate::sql::common::json_rows_around($json_rows, AUDIT_COLS, "seq");
            let sql = format!(
                "{head}SELECT {AUDIT_COLS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2{tail}"
            );
            let rows: Vec<crate::sql::audit::EventColumns> = if head.is_empty() {
                sqlx::query_as(&sql)
                    .bind(after_seq)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
                    .map_err(map_err)?
            } else {
                let page: Option<String> = sqlx::query_scalar(&sql)
                    .bind(after_seq)
                    .bind(limit)
                    .fetch_one(pool)
                    .await
                    .map_err(map_err)?;
                crate::sql::common::from_json_rows("audit_events", page.as_deref())?
            };
            rows.into_iter().map(crate::sql::audit::event).collect()
        }
    };
}
pub(super) use for_backend;
