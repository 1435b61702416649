//! Webhooks and their outbox: registered webhooks, events put in the outbox inside the
//! control-plane transaction that caused them (`enqueue`), one delivery per matching webhook,
//! the delivery workers' claim and finish, and the attempts log.
//!
//! Invariants: an event is kept only when some webhook wants it, and its deliveries commit (or
//! not) with the change itself; a delivery is worked on by one worker at a time (the lease in
//! `lease_until`, taken by `claim_delivery`); an attempt and the delivery's next state are
//! written in one transaction.

pub(super) const WEBHOOK_COLS: &str = "id, url, events, keyspace_id, created_at, created_by";

/// This file's SQL for one backend.
macro_rules! for_backend {
    ($DB:ty, $Row:ty) => {
        use keyward_core::model::Webhook;
        use keyward_core::time::Timestamp;

        use crate::sql::common::{get, json, map_err, push_after_time, to_json, Writes};
        use crate::sql::webhooks::WEBHOOK_COLS;
        use crate::{AfterAttempt, Attempt, DueDelivery, OutboxEvent, Page, Result, TimeCursor};

        fn webhook_from_row(r: &$Row) -> Result<Webhook> {
            Ok(Webhook {
                id: get(r, "id")?,
                url: get(r, "url")?,
                events: json("events", &get::<String, _>(r, "events")?)?,
                keyspace_id: get(r, "keyspace_id")?,
                created_at: Timestamp::from_millis(get(r, "created_at")?),
                created_by: json("created_by", &get::<String, _>(r, "created_by")?)?,
            })
        }

        // ---- webhooks ----

        pub(super) async fn webhook<'e, E: sqlx::Executor<'e, Database = $DB>>(e: E, id: &str) -> Result<Option<Webhook>> {
            let sql = format!("SELECT {WEBHOOK_COLS} FROM webhooks WHERE id = $1");
            let row = sqlx::query(&sql).bind(id).fetch_optional(e).await.map_err(map_err)?;
            row.as_ref().map(webhook_from_row).transpose()
        }

        pub(super) async fn list_webhooks(pool: &sqlx::Pool<$DB>, page: &Page<TimeCursor>) -> Result<Vec<Webhook>> {
            let mut q = sqlx::QueryBuilder::<$DB>::new(format!("SELECT {WEBHOOK_COLS} FROM webhooks WHERE 1 = 1"));
            push_after_time(&mut q, &page.after);
            q.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(page.limit);
            let rows = q.build().fetch_all(pool).await.map_err(map_err)?;
            rows.iter().map(webhook_from_row).collect()
        }

        pub(super) async fn insert_webhook(conn: &mut <$DB as sqlx::Database>::Connection, h: &Webhook, secret: &str) -> Result<()> {
            let sql = format!("INSERT INTO webhooks ({WEBHOOK_COLS}, secret) VALUES ($1, $2, $3, $4, $5, $6, $7)");
            sqlx::query(&sql)
                .bind(&h.id)
                .bind(&h.url)
                .bind(to_json(&h.events))
                .bind(&h.keyspace_id)
                .bind(h.created_at.millis())
                .bind(to_json(&h.created_by))
                .bind(secret)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?;
            Ok(())
        }

        pub(super) async fn delete_webhook(conn: &mut <$DB as sqlx::Database>::Connection, id: &str) -> Result<()> {
            for sql in [
                "DELETE FROM webhook_deliveries WHERE webhook_id = $1",
                "DELETE FROM webhooks WHERE id = $1",
            ] {
                sqlx::query(sql).bind(id).execute(&mut *conn).await.map_err(map_err)?;
            }
            Ok(())
        }

        // ---- the outbox ----

        /// Queues `e` for the webhooks that want it: `known`, when the transaction knows them
        /// (see `known`), else read (and then known).
        pub(super) async fn enqueue(conn: &mut <$DB as sqlx::Database>::Connection, known: &mut Option<std::sync::Arc<Vec<Webhook>>>, e: &OutboxEvent) -> Result<()> {
            enqueue_all(conn, known, std::slice::from_ref(e)).await
        }

        /// Queues each of `events` for the webhooks that want it, in a few multi-row
        /// statements per few hundred events (see [`enqueue`]).
        pub(super) async fn enqueue_all(conn: &mut <$DB as sqlx::Database>::Connection, known: &mut Option<std::sync::Arc<Vec<Webhook>>>, events: &[OutboxEvent]) -> Result<()> {
            const CHUNK: usize = 500;
            if events.is_empty() {
                return Ok(());
            }
            let all = match known {
                Some(all) => all.clone(),
                None => {
                    let sql = format!("SELECT {WEBHOOK_COLS} FROM webhooks");
                    let rows = sqlx::query(&sql).fetch_all(&mut *conn).await.map_err(map_err)?;
                    let all = std::sync::Arc::new(rows.iter().map(webhook_from_row).collect::<Result<Vec<_>>>()?);
                    *known = Some(all.clone());
                    all
                }
            };
            let (wanted, deliveries) = outbox_rows(&all, events);
            for chunk in wanted.chunks(CHUNK) {
                push_event_rows(&mut sqlx::QueryBuilder::new(""), chunk).build().execute(&mut *conn).await.map_err(map_err)?;
            }
            for chunk in deliveries.chunks(CHUNK) {
                push_delivery_rows(&mut sqlx::QueryBuilder::new(""), chunk).build().execute(&mut *conn).await.map_err(map_err)?;
            }
            Ok(())
        }

        /// [`enqueue_all`] of a few events with the webhooks known (`all`), as writes of `w`.
        pub(super) fn push_enqueue(w: &mut Writes<'static, $DB>, all: &[Webhook], events: &[OutboxEvent]) {
            let (wanted, deliveries) = outbox_rows(all, events);
            if !wanted.is_empty() {
                push_event_rows(w.next(), &wanted);
            }
            if !deliveries.is_empty() {
                push_delivery_rows(w.next(), &deliveries);
            }
        }

        /// The events some webhook wants (only those are kept), and a delivery (its new id,
        /// the webhook's id, the event) for each webhook that wants each.
        fn outbox_rows<'e, 'h>(all: &'h [Webhook], events: &'e [OutboxEvent]) -> (Vec<&'e OutboxEvent>, Vec<(String, &'h str, &'e OutboxEvent)>) {
            let mut wanted = Vec::new();
            let mut deliveries = Vec::new();
            for e in events {
                let mut any = false;
                for hook in all {
                    let kind_ok = hook.events.iter().any(|t| t == &e.kind);
                    let ks_ok = hook.keyspace_id.is_none() || hook.keyspace_id == e.keyspace_id;
                    if kind_ok && ks_ok {
                        deliveries.push((keyward_core::id::new_id("dlv", e.at), hook.id.as_str(), e));
                        any = true;
                    }
                }
                if any {
                    wanted.push(e);
                }
            }
            (wanted, deliveries)
        }

        fn push_event_rows<'q, 'a>(q: &'q mut sqlx::QueryBuilder<'a, $DB>, rows: &[&OutboxEvent]) -> &'q mut sqlx::QueryBuilder<'a, $DB> {
            q.push("INSERT INTO webhook_events (id, type, at, keyspace_id, key_id, body) ");
            q.push_values(rows, |mut b, e| {
                b.push_bind(e.id.clone())
                    .push_bind(e.kind.clone())
                    .push_bind(e.at.millis())
                    .push_bind(e.keyspace_id.clone())
                    .push_bind(e.key_id.clone())
                    .push_bind(e.body.clone());
            });
            q
        }

        fn push_delivery_rows<'q, 'a>(q: &'q mut sqlx::QueryBuilder<'a, $DB>, rows: &[(String, &str, &OutboxEvent)]) -> &'q mut sqlx::QueryBuilder<'a, $DB> {
            q.push("INSERT INTO webhook_deliveries (id, webhook_id, event_id, attempts, next_at, lease_until, state, created_at) ");
            q.push_values(rows, |mut b, (id, hook, e)| {
                b.push_bind(id.clone())
                    .push_bind(hook.to_string())
                    .push_bind(e.id.clone())
                    .push("0")
                    .push_bind(e.at.millis())
                    .push("NULL")
                    .push("'pending'")
                    .push_bind(e.at.millis());
            });
            q
        }

        // ---- deliveries and attempts ----

        pub(super) async fn webhook_secrets(pool: &sqlx::Pool<$DB>) -> Result<Vec<(String, String)>> {
            let rows = sqlx::query("SELECT id, secret FROM webhooks ORDER BY id")
                .fetch_all(pool)
                .await
                .map_err(map_err)?;
            rows.iter().map(|r| Ok((get(r, "id")?, get(r, "secret")?))).collect()
        }

        pub(super) async fn replace_webhook_secrets(pool: &sqlx::Pool<$DB>, secrets: &[(String, String)]) -> Result<()> {
            let mut tx = pool.begin().await.map_err(map_err)?;
            for (id, secret) in secrets {
                sqlx::query("UPDATE webhooks SET secret = $2 WHERE id = $1")
                    .bind(id)
                    .bind(secret)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
            }
            tx.commit().await.map_err(map_err)
        }

        pub(super) async fn due_deliveries(pool: &sqlx::Pool<$DB>, now: Timestamp, limit: i64, per_webhook: i64) -> Result<Vec<DueDelivery>> {
            // At most `per_webhook` of each endpoint: one endpoint's backlog cannot fill the
            // batch and keep the others waiting.
            let rows = sqlx::query(
                "SELECT d.id, d.webhook_id, w.url, w.secret, d.event_id, e.type, e.body, d.attempts, d.created_at \
                 FROM (SELECT id, webhook_id, event_id, attempts, created_at, next_at, \
                              ROW_NUMBER() OVER (PARTITION BY webhook_id ORDER BY next_at, id) AS rn \
                       FROM webhook_deliveries \
                       WHERE state = 'pending' AND next_at <= $1 AND (lease_until IS NULL OR lease_until < $1)) d \
                 JOIN webhooks w ON w.id = d.webhook_id JOIN webhook_events e ON e.id = d.event_id \
                 WHERE d.rn <= $3 \
                 ORDER BY d.next_at, d.id LIMIT $2",
            )
            .bind(now.millis())
            .bind(limit)
            .bind(per_webhook)
            .fetch_all(pool)
            .await
            .map_err(map_err)?;
            rows.iter()
                .map(|r| {
                    Ok(DueDelivery {
                        id: get(r, "id")?,
                        webhook_id: get(r, "webhook_id")?,
                        url: get(r, "url")?,
                        secret: get(r, "secret")?,
                        event_id: get(r, "event_id")?,
                        kind: get(r, "type")?,
                        body: get(r, "body")?,
                        attempts: get(r, "attempts")?,
                        created_at: Timestamp::from_millis(get(r, "created_at")?),
                    })
                })
                .collect()
        }

        pub(super) async fn claim_delivery(pool: &sqlx::Pool<$DB>, id: &str, now: Timestamp, lease_until: Timestamp) -> Result<bool> {
            let r = sqlx::query(
                "UPDATE webhook_deliveries SET lease_until = $3 WHERE id = $1 AND state = 'pending' \
                 AND (lease_until IS NULL OR lease_until < $2)",
            )
            .bind(id)
            .bind(now.millis())
            .bind(lease_until.millis())
            .execute(pool)
            .await
            .map_err(map_err)?;
            Ok(r.rows_affected() == 1)
        }

        pub(super) async fn finish_attempt(pool: &sqlx::Pool<$DB>, delivery_id: &str, webhook_id: &str, a: &Attempt, after: AfterAttempt) -> Result<()> {
            let mut tx = pool.begin().await.map_err(map_err)?;
            sqlx::query(
                "INSERT INTO webhook_attempts (id, webhook_id, delivery_id, event_id, type, attempt, status_code, error, at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&a.id)
            .bind(webhook_id)
            .bind(delivery_id)
            .bind(&a.event_id)
            .bind(&a.kind)
            .bind(a.attempt)
            .bind(a.status_code)
            .bind(&a.error)
            .bind(a.at.millis())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            let (state, next) = match after {
                AfterAttempt::Delivered => ("done", a.at.millis()),
                AfterAttempt::GiveUp => ("failed", a.at.millis()),
                AfterAttempt::RetryAt(t) => ("pending", t.millis()),
            };
            sqlx::query("UPDATE webhook_deliveries SET attempts = $2, state = $3, next_at = $4, lease_until = NULL WHERE id = $1")
                .bind(delivery_id)
                .bind(a.attempt)
                .bind(state)
                .bind(next)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            tx.commit().await.map_err(map_err)
        }

        pub(super) async fn list_attempts(pool: &sqlx::Pool<$DB>, webhook_id: &str, page: &Page<TimeCursor>) -> Result<Vec<Attempt>> {
            let mut q = sqlx::QueryBuilder::<$DB>::new(
                "SELECT id, event_id, type, attempt, status_code, error, at FROM webhook_attempts WHERE webhook_id = ",
            );
            q.push_bind(webhook_id.to_string());
            if let Some((at, id)) = &page.after {
                q.push(" AND (at < ").push_bind(*at);
                q.push(" OR (at = ").push_bind(*at);
                q.push(" AND id < ").push_bind(id.clone()).push("))");
            }
            q.push(" ORDER BY at DESC, id DESC LIMIT ").push_bind(page.limit);
            let rows = q.build().fetch_all(pool).await.map_err(map_err)?;
            rows.iter()
                .map(|r| {
                    Ok(Attempt {
                        id: get(r, "id")?,
                        event_id: get(r, "event_id")?,
                        kind: get(r, "type")?,
                        attempt: get(r, "attempt")?,
                        status_code: get(r, "status_code")?,
                        error: get(r, "error")?,
                        at: Timestamp::from_millis(get(r, "at")?),
                    })
                })
                .collect()
        }
    };
}
pub(super) use for_backend;
