//! One SQL implementation of [`Store`], written once and instantiated for SQLite and
//! PostgreSQL. Both accept the same statements (`$n` parameters, `RETURNING`, `COALESCE`); the
//! few differences are macro parameters (the substring function) or live in each backend's
//! `open` and migrations.
//!
//! Write transactions start by updating the single `write_lock` row: that serializes writers
//! across every node (PostgreSQL row lock, SQLite's write lock) so the audit chain's `seq` has no
//! gaps and each event's `prev_hash` is the previous event's hash.
//!
//! # Layout
//! The SQL is cut by concern, one file each: `keys.rs` (keyspaces, keys, the lifecycle sweep's
//! queries), `leases.rs` (quota leases), `usage.rs` (usage batches, buckets, roll-up, source
//! addresses), `anomalies.rs`, `tokens.rs`, `audit.rs`, `webhooks.rs` (webhooks, outbox,
//! deliveries, attempts), `feed.rs` (the change feed, history pruning), `users.rs` (dashboard
//! users and sessions) and `migrate.rs` (the schema). `common.rs` holds what they share.
//!
//! Each concern file defines a `for_backend!` macro that expands, inside a backend, to a module
//! of free functions over that backend's types: `sql/keys.rs` becomes `sqlite::keys` and
//! `postgres::keys`, from one SQL text. `sql_backend!` instantiates them all for one backend
//! and implements [`Store`] and [`StoreTx`] as one call per method into the concern that holds
//! its SQL, so those impls are also the index of where each method's SQL is.
//! `sqlite.rs` and `postgres.rs` open each backend and pass its dialect differences.
//!
//! [`Store`]: crate::Store
//! [`StoreTx`]: crate::StoreTx

mod anomalies;
mod audit;
mod common;
mod feed;
mod identities;
mod imports;
mod keys;
pub(crate) mod known;
mod leases;
mod migrate;
mod tokens;
mod usage;
mod users;
mod webhooks;

/// Instantiates every concern's SQL for one backend, inside that backend's module (which defines
/// `$Store` with `pool` and `node`, and its `signal`), and implements [`Store`] and [`StoreTx`]
/// for it. `$name` is [`Store::backend`]; `$instr`, `$unrolled`, `$keyset`, `$gained`, `$batch`
/// and `$json_rows` are the dialect differences (see `keys.rs`, `usage.rs` and `common::json_rows_around`).
///
/// [`Store`]: crate::Store
/// [`StoreTx`]: crate::StoreTx
/// [`Store::backend`]: crate::Store::backend
macro_rules! sql_backend {
    ($Store:ident, $Tx:ident, $DB:ty, $Row:ty, $name:literal, $instr:literal, $unrolled:literal, $keyset:literal, $gained:literal, $batch:ident, $json_rows:expr) => {
        mod anomalies {
            crate::sql::anomalies::for_backend!($DB, $Row);
        }
        mod audit {
            crate::sql::audit::for_backend!($DB, $Row, $json_rows);
        }
        mod feed {
            crate::sql::feed::for_backend!($DB);
        }
        mod identities {
            crate::sql::identities::for_backend!($DB, $Row);
        }
        mod imports {
            crate::sql::imports::for_backend!($DB, $Row);
        }
        mod keys {
            crate::sql::keys::for_backend!($DB, $Row, $name, $instr, $json_rows);
        }
        mod leases {
            crate::sql::leases::for_backend!($DB);
        }
        mod tokens {
            crate::sql::tokens::for_backend!($DB, $Row);
        }
        mod usage {
            crate::sql::usage::for_backend!($DB, $unrolled, $keyset, $gained, $batch);
        }
        mod users {
            crate::sql::users::for_backend!($Store, $Tx, $DB, $Row);
        }
        mod webhooks {
            crate::sql::webhooks::for_backend!($DB, $Row);
        }

        /// One control-plane transaction of this backend: it holds the write lock from
        /// [`Store::begin`](crate::Store::begin) until it commits or is dropped.
        pub struct $Tx {
            tx: crate::sql::common::WriteTx<$DB>,
            node: String,
            /// What it knows without reading the store (`known`), handed back to `cell` when
            /// it commits.
            known: crate::sql::known::Known,
            cell: std::sync::Arc<crate::sql::known::KnownCell>,
            /// This node's write transaction under way (no prediction meanwhile).
            _writing: crate::sql::known::Writing,
        }

        /// `Store` and `StoreTx` for this backend: each method is one call into the concern module
        /// that holds its SQL.
        mod store {
            use std::sync::Arc;

            use async_trait::async_trait;
            use keyward_core::keyformat::KeyHash;
            use keyward_core::kinds::Granularity;
            use keyward_core::model::{
                Anomaly, AuditEvent, Identity, Key, Keyspace, Source, Token, Webhook,
            };
            use keyward_core::time::Timestamp;

            use super::{
                anomalies, audit, feed, identities, imports, keys, leases, tokens, usage, webhooks,
            };
            use super::{$Store, $Tx};
            use crate::sql::common::{map_err, Writes};
            use crate::users::{UserStore, UserTx};
            use crate::{
                AfterAttempt, AnomalyFilter, Attempt, AuditFilter, Bucket, CensusRules, Change,
                DueDelivery, Flagged, KeyBrief, KeyCensus, KeyFilter, KeyImport, NewEvent,
                OutboxEvent, Page, Prediction, Result, SlowCandidate, Store, StoreTx, TimeCursor,
                Totals, UsageDelta,
            };

            /// Commits a write transaction.
            async fn commit(mut tx: crate::sql::common::WriteTx<$DB>) -> Result<()> {
                sqlx::query("COMMIT")
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                tx.committed();
                Ok(())
            }

            #[async_trait]
            impl StoreTx for $Tx {
                fn users(&mut self) -> &mut dyn UserTx {
                    self
                }

                // keys.rs
                async fn keyspace(&mut self, id: &str) -> Result<Option<Keyspace>> {
                    if let Some(ks) = self.known.keyspace(id) {
                        return Ok(Some(ks));
                    }
                    let ks = keys::keyspace(&mut *self.tx, id).await?;
                    if let Some(ks) = &ks {
                        self.known.remember_keyspace(ks);
                    }
                    Ok(ks)
                }
                async fn insert_keyspace(&mut self, ks: &Keyspace) -> Result<()> {
                    self.known.forget_keyspace(&ks.id);
                    keys::insert_keyspace(&mut self.tx, ks).await
                }
                async fn update_keyspace(&mut self, ks: &Keyspace) -> Result<()> {
                    self.known.forget_keyspace(&ks.id);
                    keys::update_keyspace(&mut self.tx, &self.node, ks).await
                }
                async fn key(&mut self, id: &str) -> Result<Option<Key>> {
                    keys::key(&mut *self.tx, id).await
                }
                async fn insert_key(&mut self, k: &Key) -> Result<()> {
                    keys::insert_key(&mut self.tx, &self.node, k).await
                }
                async fn insert_keys(&mut self, k: &[Key]) -> Result<()> {
                    keys::insert_keys(&mut self.tx, &self.node, k).await
                }
                async fn revoke_keys(&mut self, k: &[Key]) -> Result<()> {
                    keys::revoke_keys(&mut self.tx, &self.node, k).await
                }
                async fn update_key(&mut self, k: &Key) -> Result<()> {
                    keys::update_key(&mut self.tx, &self.node, k).await
                }
                async fn set_remaining(&mut self, id: &str, remaining: Option<i64>) -> Result<()> {
                    keys::set_remaining(&mut self.tx, &self.node, id, remaining).await
                }
                async fn set_refill(&mut self, k: &Key) -> Result<()> {
                    keys::set_refill(&mut self.tx, k).await
                }
                async fn live_keys_of_owner(
                    &mut self,
                    owner: &str,
                    keyspace_ids: Option<&[String]>,
                    now: Timestamp,
                ) -> Result<Vec<Key>> {
                    keys::live_keys_of_owner(&mut self.tx, owner, keyspace_ids, now).await
                }
                // identities.rs
                async fn identity(&mut self, id: &str) -> Result<Option<Identity>> {
                    identities::identity(&mut *self.tx, id).await
                }
                async fn insert_identity(&mut self, i: &Identity) -> Result<()> {
                    identities::insert_identity(&mut self.tx, i).await
                }
                async fn update_identity(&mut self, i: &Identity) -> Result<()> {
                    identities::update_identity(&mut self.tx, i).await
                }
                async fn set_identity_quota(&mut self, i: &Identity) -> Result<()> {
                    identities::set_identity_quota(&mut self.tx, i).await
                }
                async fn delete_identity(&mut self, id: &str) -> Result<bool> {
                    identities::delete_identity(&mut self.tx, id).await
                }
                async fn announce_owner(&mut self, owner: &str, at: Timestamp) -> Result<()> {
                    identities::announce(&mut self.tx, &self.node, owner, at).await
                }

                // imports.rs
                async fn insert_import(&mut self, i: &KeyImport) -> Result<()> {
                    imports::insert_import(&mut self.tx, i).await
                }
                async fn key_by_external_id(
                    &mut self,
                    keyspace_id: &str,
                    external_id: &str,
                ) -> Result<Option<(String, Option<Vec<u8>>)>> {
                    imports::by_external_id(&mut self.tx, keyspace_id, external_id).await
                }
                async fn hash_taken(&mut self, hash: &KeyHash) -> Result<bool> {
                    imports::hash_taken(&mut self.tx, hash).await
                }
                async fn lookup_conflicts(&mut self, lookup: &str) -> Result<bool> {
                    imports::lookup_conflicts(&mut self.tx, lookup).await
                }
                async fn announce_import(
                    &mut self,
                    keyspace_id: &str,
                    at: Timestamp,
                ) -> Result<()> {
                    feed::keyspace_changed(&mut self.tx, &self.node, keyspace_id, at).await
                }
                async fn rehash(
                    &mut self,
                    key_id: &str,
                    hash: &KeyHash,
                    at: Timestamp,
                ) -> Result<bool> {
                    imports::rehash(&mut self.tx, &self.node, key_id, hash, at).await
                }
                async fn mark_expired(&mut self, id: &str, now: Timestamp) -> Result<bool> {
                    keys::mark_expired(&mut self.tx, id, now).await
                }
                async fn mark_warned(&mut self, id: &str, now: Timestamp) -> Result<bool> {
                    keys::mark_warned(&mut self.tx, id, now).await
                }

                // usage.rs
                async fn apply_usage(&mut self, deltas: &[UsageDelta]) -> Result<()> {
                    usage::apply_usage_in(&mut self.tx, &self.node, deltas).await
                }
                async fn copy_sources(&mut self, from_key: &str, to_key: &str) -> Result<()> {
                    usage::copy_sources(&mut self.tx, from_key, to_key).await
                }

                // tokens.rs
                async fn token(&mut self, id: &str) -> Result<Option<Token>> {
                    tokens::token(&mut *self.tx, id).await
                }
                async fn insert_token(&mut self, t: &Token, hash: &KeyHash) -> Result<()> {
                    tokens::insert_token(&mut self.tx, t, hash).await
                }
                async fn update_token(&mut self, t: &Token) -> Result<()> {
                    tokens::update_token(&mut self.tx, t).await
                }

                // audit.rs
                async fn append_audit(&mut self, e: NewEvent) -> Result<AuditEvent> {
                    audit::append_audit(&mut self.tx, &mut self.known.audit_head, e).await
                }
                async fn append_audits(&mut self, e: Vec<NewEvent>) -> Result<Vec<AuditEvent>> {
                    audit::append_audits(&mut self.tx, &mut self.known.audit_head, e).await
                }

                // webhooks.rs
                async fn enqueue(&mut self, e: &OutboxEvent) -> Result<()> {
                    webhooks::enqueue(&mut self.tx, &mut self.known.webhooks, e).await
                }
                async fn enqueue_all(&mut self, e: &[OutboxEvent]) -> Result<()> {
                    webhooks::enqueue_all(&mut self.tx, &mut self.known.webhooks, e).await
                }
                async fn insert_webhook(&mut self, h: &Webhook, secret: &str) -> Result<()> {
                    self.known.webhooks = None;
                    webhooks::insert_webhook(&mut self.tx, h, secret).await
                }
                async fn webhook(&mut self, id: &str) -> Result<Option<Webhook>> {
                    webhooks::webhook(&mut *self.tx, id).await
                }
                async fn delete_webhook(&mut self, id: &str) -> Result<()> {
                    self.known.webhooks = None;
                    webhooks::delete_webhook(&mut self.tx, id).await
                }

                // anomalies.rs
                async fn insert_anomaly(&mut self, a: &Anomaly, dedup: &str) -> Result<bool> {
                    anomalies::insert_anomaly(&mut self.tx, a, dedup).await
                }
                async fn insert_notice(&mut self, dedup: &str, at: Timestamp) -> Result<bool> {
                    anomalies::insert_notice(&mut self.tx, dedup, at).await
                }

                async fn commit_with_key(
                    self: Box<Self>,
                    k: &Key,
                    e: NewEvent,
                ) -> Result<AuditEvent> {
                    let $Tx {
                        mut tx,
                        node,
                        mut known,
                        cell,
                        _writing,
                    } = *self;
                    let head = audit::head_of(&mut tx, known.audit_head.take()).await?;
                    let (mut events, head) = audit::chained(head, vec![e])?;
                    let mut w = Writes::new();
                    keys::push_insert_keys(&mut w, &node, std::slice::from_ref(k));
                    audit::push_events(&mut w, &events);
                    if let Some(mut q) = w.finish() {
                        // SQLite runs the statements of one text and stops at an error, so the
                        // commit goes with them; PostgreSQL takes one statement at a time.
                        if $name == "sqlite" {
                            q.push("; COMMIT");
                            q.build().execute(&mut *tx).await.map_err(map_err)?;
                            tx.committed();
                        } else {
                            q.build().execute(&mut *tx).await.map_err(map_err)?;
                            commit(tx).await?;
                        }
                    } else {
                        commit(tx).await?;
                    }
                    known.audit_head = Some(head);
                    cell.keep(known);
                    events.pop().map(|(e, _)| e).ok_or_else(|| {
                        crate::StoreError::Other("no audit event was appended".into())
                    })
                }

                async fn commit(self: Box<Self>) -> Result<()> {
                    let $Tx {
                        tx,
                        known,
                        cell,
                        _writing,
                        ..
                    } = *self;
                    commit(tx).await?;
                    cell.keep(known);
                    Ok(())
                }
            }

            #[async_trait]
            impl Store for $Store {
                fn users(&self) -> &dyn UserStore {
                    self
                }

                fn backend(&self) -> &'static str {
                    $name
                }

                fn node_id(&self) -> &str {
                    &self.node
                }

                fn change_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
                    self.signal()
                }

                async fn ping(&self) -> Result<()> {
                    sqlx::query("SELECT 1")
                        .execute(&self.pool)
                        .await
                        .map_err(map_err)?;
                    Ok(())
                }

                async fn backup_to(&self, path: &str) -> Result<()> {
                    self.backup_into(path).await
                }

                async fn close(&self) {
                    self.writer().close().await;
                    self.before_close().await;
                    self.pool.close().await;
                }

                async fn begin(&self) -> Result<Box<dyn StoreTx>> {
                    let writing = self.known.writing();
                    let (last_tag, tag) = self.known.tags();
                    let (tx, n, hit) = self.begin_write(last_tag, &tag).await?;
                    Ok(Box::new($Tx {
                        tx,
                        node: self.node.clone(),
                        known: self.known.take(n, hit == Some(true), tag),
                        cell: self.known.clone(),
                        _writing: writing,
                    }))
                }

                fn predict(&self) -> Option<Prediction> {
                    let (known, writing) = self.known.predict()?;
                    Some(Prediction {
                        known,
                        _writing: writing,
                    })
                }

                async fn create_key_predicted(
                    &self,
                    p: Prediction,
                    k: &Key,
                    e: NewEvent,
                    outbox: &[OutboxEvent],
                ) -> Result<Option<AuditEvent>> {
                    let Prediction {
                        mut known,
                        _writing,
                    } = p;
                    let (Some(head), Some(hooks)) =
                        (known.audit_head.take(), known.webhooks.clone())
                    else {
                        return Ok(None);
                    };
                    let (mut events, head) = audit::chained(head, vec![e])?;
                    let (n, tag) = known.lock();
                    let new_tag = keyward_core::keyformat::base62_random(16);
                    let mut w = Writes::if_lock_at(n, tag.to_string(), new_tag.clone());
                    webhooks::push_enqueue(&mut w, &hooks, outbox);
                    keys::push_insert_keys(&mut w, &self.node, std::slice::from_ref(k));
                    audit::push_events(&mut w, &events);
                    match self.write_guarded(w.finish_guarded()).await {
                        Ok(()) => {}
                        Err(e) if Writes::<$DB>::refused(&e) => {
                            // No more guesses until a transaction finds the lock where this
                            // node left it (a refusal with a lasting cause would otherwise
                            // cost every create a round trip in vain).
                            self.known.mistrust();
                            if !Writes::<$DB>::lock_moved(&e) {
                                tracing::debug!(error = %e, "a predicted key creation was refused; creating it in a transaction");
                            }
                            return Ok(None);
                        }
                        Err(e) => return Err(map_err(e)),
                    }
                    known.advance(new_tag);
                    known.audit_head = Some(head);
                    self.known.keep(known);
                    events.pop().map(|(e, _)| Some(e)).ok_or_else(|| {
                        crate::StoreError::Other("no audit event was appended".into())
                    })
                }

                // keys.rs
                async fn keyspace(&self, id: &str) -> Result<Option<Keyspace>> {
                    keys::keyspace(&self.pool, id).await
                }
                async fn list_keyspaces(
                    &self,
                    ids: Option<&[String]>,
                    page: &Page<TimeCursor>,
                ) -> Result<Vec<Keyspace>> {
                    keys::list_keyspaces(&self.pool, ids, page).await
                }
                async fn key(&self, id: &str) -> Result<Option<Key>> {
                    keys::key(&self.pool, id).await
                }
                async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<Key>> {
                    keys::key_by_hash(&self.pool, hash).await
                }
                async fn list_keys(&self, f: &KeyFilter) -> Result<Vec<Key>> {
                    keys::list_keys(&self.pool, f).await
                }
                async fn key_briefs(
                    &self,
                    keyspace_ids: Option<&[String]>,
                    after: Option<TimeCursor>,
                    limit: i64,
                ) -> Result<Vec<KeyBrief>> {
                    keys::key_briefs(&self.pool, keyspace_ids, after, limit).await
                }
                async fn key_census(
                    &self,
                    rules: &CensusRules,
                    now: Timestamp,
                ) -> Result<KeyCensus> {
                    keys::key_census(&self.pool, rules, now).await
                }
                async fn flagged_keys(
                    &self,
                    rules: &CensusRules,
                    which: Flagged,
                    now: Timestamp,
                    limit: i64,
                ) -> Result<Vec<Key>> {
                    keys::flagged_keys(&self.pool, rules, which, now, limit).await
                }
                async fn identity(
                    &self,
                    id: &str,
                    keyspace_ids: Option<&[String]>,
                ) -> Result<Option<Identity>> {
                    identities::identity_in(&self.pool, id, keyspace_ids).await
                }
                async fn list_identities(
                    &self,
                    keyspace_ids: Option<&[String]>,
                    page: &Page<TimeCursor>,
                ) -> Result<Vec<Identity>> {
                    identities::list_identities(&self.pool, keyspace_ids, page).await
                }
                async fn usage_of_owner(
                    &self,
                    owner: &str,
                    keyspace_ids: Option<&[String]>,
                    granularity: Granularity,
                    from: Timestamp,
                    to: Timestamp,
                ) -> Result<Vec<Bucket>> {
                    usage::usage_of_owner(&self.pool, owner, keyspace_ids, granularity, from, to)
                        .await
                }
                async fn slow_candidates(
                    &self,
                    lookups: &[String],
                    keyspaces: Option<&[String]>,
                    now: Timestamp,
                    limit: i64,
                ) -> Result<Vec<SlowCandidate>> {
                    imports::slow_candidates(&self.pool, lookups, keyspaces, now, limit).await
                }
                async fn any_foreign_keys(&self) -> Result<bool> {
                    imports::any_foreign(&self.pool).await
                }
                async fn expired_unmarked(&self, now: Timestamp, limit: i64) -> Result<Vec<Key>> {
                    keys::expired_unmarked(&self.pool, now, limit).await
                }
                async fn expiring_unwarned(
                    &self,
                    keyspace_id: &str,
                    now: Timestamp,
                    until: Timestamp,
                    limit: i64,
                ) -> Result<Vec<Key>> {
                    keys::expiring_unwarned(&self.pool, keyspace_id, now, until, limit).await
                }
                async fn inactive_since(
                    &self,
                    keyspace_id: &str,
                    now: Timestamp,
                    cutoff: Timestamp,
                    limit: i64,
                ) -> Result<Vec<Key>> {
                    keys::inactive_since(&self.pool, keyspace_id, now, cutoff, limit).await
                }

                // leases.rs
                async fn lease_quota(
                    &self,
                    key_id: &str,
                    want: i64,
                    now: Timestamp,
                ) -> Result<Option<crate::Lease>> {
                    leases::lease_quota(self.writer(), &self.node, key_id, want, now).await
                }
                async fn return_lease(
                    &self,
                    key_id: &str,
                    amount: i64,
                    until: Option<Timestamp>,
                ) -> Result<()> {
                    leases::return_lease(self.writer(), &self.node, key_id, amount, until).await
                }
                async fn reclaim_stale_leases(&self, older_than: Timestamp) -> Result<u64> {
                    leases::reclaim_stale_leases(self.writer(), older_than).await
                }

                // usage.rs
                async fn apply_usage(&self, deltas: &[UsageDelta]) -> Result<()> {
                    usage::apply_usage(self.writer(), &self.node, deltas).await
                }
                async fn usage(
                    &self,
                    key_ids: Option<&[String]>,
                    granularity: Granularity,
                    from: Timestamp,
                    to: Timestamp,
                ) -> Result<Vec<Bucket>> {
                    usage::usage(&self.pool, key_ids, granularity, from, to).await
                }
                async fn minute_totals(
                    &self,
                    key_ids: &[String],
                    from: Timestamp,
                    to: Timestamp,
                ) -> Result<Vec<Totals>> {
                    usage::minute_totals(&self.pool, key_ids, from, to).await
                }
                async fn busy_minutes(
                    &self,
                    from: Timestamp,
                    to: Timestamp,
                    valid_at_least: i64,
                ) -> Result<Vec<Bucket>> {
                    usage::busy_minutes(&self.pool, from, to, valid_at_least).await
                }
                async fn usage_of_keyspace(
                    &self,
                    keyspace_id: &str,
                    granularity: Granularity,
                    from: Timestamp,
                    to: Timestamp,
                ) -> Result<Vec<Bucket>> {
                    usage::usage_of_keyspace(&self.pool, keyspace_id, granularity, from, to).await
                }
                async fn prune_usage(
                    &self,
                    granularity: Granularity,
                    before: Timestamp,
                ) -> Result<u64> {
                    usage::prune_usage(&self.pool, granularity, before).await
                }
                async fn rollup_usage(&self, before: Timestamp) -> Result<u64> {
                    usage::rollup_usage(self.writer(), before).await
                }
                async fn sources(&self, key_id: &str) -> Result<Vec<Source>> {
                    usage::sources(&self.pool, key_id).await
                }
                async fn known_sources(&self, key_ids: &[String]) -> Result<Vec<(String, String)>> {
                    usage::known_sources(&self.pool, key_ids).await
                }

                // anomalies.rs
                async fn list_anomalies(&self, f: &AnomalyFilter) -> Result<Vec<Anomaly>> {
                    anomalies::list_anomalies(&self.pool, f).await
                }

                // tokens.rs
                async fn token(&self, id: &str) -> Result<Option<Token>> {
                    tokens::token(&self.pool, id).await
                }
                async fn token_by_hash(&self, hash: &KeyHash) -> Result<Option<Token>> {
                    tokens::token_by_hash(&self.pool, hash).await
                }
                async fn list_tokens(&self, page: &Page<TimeCursor>) -> Result<Vec<Token>> {
                    tokens::list_tokens(&self.pool, page).await
                }
                async fn touch_token(&self, id: &str, at: Timestamp) -> Result<()> {
                    tokens::touch_token(&self.pool, id, at).await
                }

                // audit.rs
                async fn list_audit(&self, f: &AuditFilter) -> Result<Vec<AuditEvent>> {
                    audit::list_audit(&self.pool, f).await
                }
                async fn audit_after(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditEvent>> {
                    audit::audit_after(&self.pool, after_seq, limit).await
                }

                // webhooks.rs
                async fn webhook(&self, id: &str) -> Result<Option<Webhook>> {
                    webhooks::webhook(&self.pool, id).await
                }
                async fn list_webhooks(&self, page: &Page<TimeCursor>) -> Result<Vec<Webhook>> {
                    webhooks::list_webhooks(&self.pool, page).await
                }
                async fn webhook_secrets(&self) -> Result<Vec<(String, String)>> {
                    webhooks::webhook_secrets(&self.pool).await
                }
                async fn replace_webhook_secrets(
                    &self,
                    secrets: &[(String, String)],
                ) -> Result<()> {
                    webhooks::replace_webhook_secrets(self.writer(), secrets).await
                }
                async fn due_deliveries(
                    &self,
                    now: Timestamp,
                    limit: i64,
                    per_webhook: i64,
                ) -> Result<Vec<DueDelivery>> {
                    webhooks::due_deliveries(&self.pool, now, limit, per_webhook).await
                }
                async fn claim_delivery(
                    &self,
                    id: &str,
                    now: Timestamp,
                    lease_until: Timestamp,
                ) -> Result<bool> {
                    webhooks::claim_delivery(&self.pool, id, now, lease_until).await
                }
                async fn finish_attempt(
                    &self,
                    delivery_id: &str,
                    webhook_id: &str,
                    a: &Attempt,
                    after: AfterAttempt,
                ) -> Result<()> {
                    webhooks::finish_attempt(self.writer(), delivery_id, webhook_id, a, after).await
                }
                async fn list_attempts(
                    &self,
                    webhook_id: &str,
                    page: &Page<TimeCursor>,
                ) -> Result<Vec<Attempt>> {
                    webhooks::list_attempts(&self.pool, webhook_id, page).await
                }

                // feed.rs
                async fn prune_history(
                    &self,
                    history_before: Timestamp,
                    feed_before: Timestamp,
                ) -> Result<u64> {
                    feed::prune_history(&self.pool, history_before, feed_before).await
                }
                async fn changes_after(&self, seq: i64, limit: i64) -> Result<Vec<Change>> {
                    feed::changes_after(&self.pool, seq, limit).await
                }
                async fn change_head(&self) -> Result<i64> {
                    feed::change_head(&self.pool).await
                }
            }
        }
    };
}

// After the macro: the backends use it.
pub mod postgres;
pub mod sqlite;
