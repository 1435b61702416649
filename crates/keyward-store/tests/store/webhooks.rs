//! Webhooks: the transactional outbox, and deliveries claimed, attempted and finished.

use std::collections::BTreeSet;
use std::sync::Arc;

use keyward_core::id::new_id;
use keyward_core::model::Webhook;
use keyward_store::{AfterAttempt, Attempt, DueDelivery, OutboxEvent, Page, Store, TimeCursor};

use crate::support::*;

fn webhook(url: &str, events: &[&str], keyspace_id: Option<&str>, secs: i64) -> Webhook {
    Webhook {
        id: new_id("whk", at(secs)),
        url: url.into(),
        events: events.iter().map(|e| e.to_string()).collect(),
        keyspace_id: keyspace_id.map(str::to_string),
        created_at: at(secs),
        created_by: token_actor("tok_admin"),
    }
}

fn secret_of(hook: &Webhook) -> String {
    format!("whsec_{}", hook.id)
}

async fn insert_webhooks(store: &Arc<dyn Store>, hooks: &[&Webhook]) {
    let mut tx = store.begin().await.unwrap();
    for h in hooks {
        tx.insert_webhook(h, &secret_of(h)).await.unwrap();
        assert_eq!(tx.webhook(&h.id).await.unwrap().as_ref(), Some(*h));
    }
    tx.commit().await.unwrap();
}

fn event(kind: &str, secs: i64, keyspace_id: Option<&str>) -> OutboxEvent {
    let id = new_id("evt", at(secs));
    OutboxEvent {
        body: format!(r#"{{"id":"{id}","type":"{kind}","data":{{"note":"ünïcødé"}}}}"#),
        id,
        kind: kind.into(),
        at: at(secs),
        keyspace_id: keyspace_id.map(str::to_string),
        key_id: Some("key_x".into()),
    }
}

async fn enqueue(store: &Arc<dyn Store>, events: &[&OutboxEvent]) {
    let mut tx = store.begin().await.unwrap();
    for e in events {
        tx.enqueue(e).await.unwrap();
    }
    tx.commit().await.unwrap();
}

async fn due(store: &Arc<dyn Store>, secs: i64) -> Vec<DueDelivery> {
    store.due_deliveries(at(secs), 100, 100).await.unwrap()
}

/// (webhook id, event id) of each delivery.
fn pairs(due: &[DueDelivery]) -> BTreeSet<(String, String)> {
    due.iter()
        .map(|d| (d.webhook_id.clone(), d.event_id.clone()))
        .collect()
}

fn pair(h: &Webhook, e: &OutboxEvent) -> (String, String) {
    (h.id.clone(), e.id.clone())
}

async fn enqueue_creates_one_delivery_per_matching_webhook(store: Arc<dyn Store>) {
    let ks1 = new_keyspace(&store, "acme").await;
    let ks2 = new_keyspace(&store, "beta").await;
    let every_ks = webhook(
        "https://hooks.example/all",
        &["key.created", "key.revoked"],
        None,
        1,
    );
    let revoked_ks1 = webhook(
        "https://hooks.example/ks1",
        &["key.revoked"],
        Some(&ks1.id),
        2,
    );
    let created_ks2 = webhook(
        "https://hooks.example/ks2",
        &["key.created"],
        Some(&ks2.id),
        3,
    );
    insert_webhooks(&store, &[&every_ks, &revoked_ks1, &created_ks2]).await;
    assert_eq!(
        store.webhook(&every_ks.id).await.unwrap(),
        Some(every_ks.clone())
    );
    assert_eq!(
        store
            .list_webhooks(&Page {
                limit: 10,
                after: None
            })
            .await
            .unwrap(),
        vec![created_ks2.clone(), revoked_ks1.clone(), every_ks.clone()]
    );

    let created1 = event("key.created", 10, Some(&ks1.id));
    let revoked1 = event("key.revoked", 11, Some(&ks1.id));
    let expired1 = event("key.expired", 12, Some(&ks1.id));
    let created2 = event("key.created", 13, Some(&ks2.id));
    let created_none = event("key.created", 14, None);
    // Rolled back with its transaction: no delivery.
    let mut tx = store.begin().await.unwrap();
    tx.enqueue(&created1).await.unwrap();
    drop(tx);
    assert!(due(&store, 1_000).await.is_empty());

    enqueue(
        &store,
        &[&created1, &revoked1, &expired1, &created2, &created_none],
    )
    .await;
    let all = due(&store, 1_000).await;
    assert_eq!(
        pairs(&all),
        BTreeSet::from([
            pair(&every_ks, &created1),
            pair(&every_ks, &revoked1),
            pair(&revoked_ks1, &revoked1),
            pair(&every_ks, &created2),
            pair(&created_ks2, &created2),
            pair(&every_ks, &created_none),
        ]),
        "by event type and keyspace filter; an event no hook wants has no delivery"
    );
    assert_eq!(all.len(), 6, "one delivery per (webhook, event)");
    let order: Vec<&str> = all.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(
        order,
        vec![
            created1.id.as_str(),
            revoked1.id.as_str(),
            revoked1.id.as_str(),
            created2.id.as_str(),
            created2.id.as_str(),
            created_none.id.as_str(),
        ],
        "oldest first"
    );
    let d = all.iter().find(|d| d.webhook_id == created_ks2.id).unwrap();
    assert_eq!(
        (
            d.url.as_str(),
            d.secret.clone(),
            d.kind.as_str(),
            d.body.as_str(),
            d.attempts,
            d.created_at
        ),
        (
            created_ks2.url.as_str(),
            secret_of(&created_ks2),
            "key.created",
            created2.body.as_str(),
            0,
            at(13)
        )
    );

    // Due from the event's time on (inclusive), at most `limit`.
    assert!(due(&store, 9).await.is_empty());
    assert_eq!(
        pairs(&due(&store, 11).await),
        BTreeSet::from([
            pair(&every_ks, &created1),
            pair(&every_ks, &revoked1),
            pair(&revoked_ks1, &revoked1),
        ])
    );
    let two = store.due_deliveries(at(1_000), 2, 100).await.unwrap();
    assert_eq!(two, all[..2].to_vec());
    // At most one of each webhook: its oldest.
    let one_each = store.due_deliveries(at(1_000), 100, 1).await.unwrap();
    let hooks: BTreeSet<&str> = all.iter().map(|d| d.webhook_id.as_str()).collect();
    assert_eq!(one_each.len(), hooks.len());
    for d in &one_each {
        assert_eq!(Some(d), all.iter().find(|a| a.webhook_id == d.webhook_id));
    }

    // A webhook created later gets no delivery for earlier events.
    let late = webhook("https://hooks.example/late", &["key.created"], None, 20);
    insert_webhooks(&store, &[&late]).await;
    assert_eq!(due(&store, 1_000).await, all);

    // Deleting a webhook deletes its pending deliveries.
    let mut tx = store.begin().await.unwrap();
    tx.delete_webhook(&every_ks.id).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.webhook(&every_ks.id).await.unwrap(), None);
    assert_eq!(
        pairs(&due(&store, 1_000).await),
        BTreeSet::from([pair(&revoked_ks1, &revoked1), pair(&created_ks2, &created2)])
    );
}
conformance!(enqueue_creates_one_delivery_per_matching_webhook
    => sqlite_enqueue_creates_one_delivery_per_matching_webhook,
       postgres_enqueue_creates_one_delivery_per_matching_webhook);

fn attempt(
    e: &OutboxEvent,
    n: i64,
    status: Option<i64>,
    error: Option<&str>,
    secs: i64,
) -> Attempt {
    Attempt {
        id: new_id("att", at(secs)),
        event_id: e.id.clone(),
        kind: e.kind.clone(),
        attempt: n,
        status_code: status,
        error: error.map(str::to_string),
        at: at(secs),
    }
}

async fn deliveries_are_claimed_once_and_finished_by_their_attempts(store: Arc<dyn Store>) {
    let hook = webhook("https://hooks.example/a", &["key.revoked"], None, 1);
    let other = webhook("https://hooks.example/b", &["key.expired"], None, 1);
    insert_webhooks(&store, &[&hook, &other]).await;
    let e1 = event("key.revoked", 10, None);
    let e2 = event("key.revoked", 11, None);
    let e3 = event("key.revoked", 12, None);
    enqueue(&store, &[&e1, &e2, &e3]).await;
    let all = due(&store, 20).await;
    assert_eq!(all.len(), 3);
    let (d1, d2, d3) = (all[0].id.clone(), all[1].id.clone(), all[2].id.clone());
    assert_eq!(all[0].event_id, e1.id);

    // One worker takes the lease; another cannot while it lives (up to and including its end).
    assert!(store.claim_delivery(&d1, at(20), at(50)).await.unwrap());
    assert!(!store.claim_delivery(&d1, at(30), at(60)).await.unwrap());
    assert!(!store.claim_delivery(&d1, at(50), at(80)).await.unwrap());
    assert!(!pairs(&due(&store, 50).await).contains(&pair(&hook, &e1)));
    // After it, the delivery is due again and can be taken over (the worker died).
    assert!(pairs(&due(&store, 51).await).contains(&pair(&hook, &e1)));
    assert!(store.claim_delivery(&d1, at(51), at(90)).await.unwrap());
    assert!(!store
        .claim_delivery("dlv_nope", at(51), at(90))
        .await
        .unwrap());

    // A failed attempt with a retry: due again at that time, with its attempt count, unleased.
    let a1 = attempt(&e1, 1, Some(500), Some("HTTP 500"), 52);
    store
        .finish_attempt(&d1, &hook.id, &a1, AfterAttempt::RetryAt(at(120)))
        .await
        .unwrap();
    assert!(!pairs(&due(&store, 119).await).contains(&pair(&hook, &e1)));
    let again = due(&store, 120).await;
    let retry = again.iter().find(|d| d.id == d1).unwrap();
    assert_eq!((retry.attempts, retry.created_at), (1, at(10)));
    assert!(store.claim_delivery(&d1, at(120), at(150)).await.unwrap());
    // Given up: never due again, never claimed.
    let a2 = attempt(&e1, 2, None, Some("timeout"), 121);
    store
        .finish_attempt(&d1, &hook.id, &a2, AfterAttempt::GiveUp)
        .await
        .unwrap();
    assert!(!store
        .claim_delivery(&d1, at(10_000), at(10_100))
        .await
        .unwrap());

    // Delivered: done, never due again.
    assert!(store.claim_delivery(&d2, at(130), at(160)).await.unwrap());
    let a3 = attempt(&e2, 1, Some(200), None, 130);
    store
        .finish_attempt(&d2, &hook.id, &a3, AfterAttempt::Delivered)
        .await
        .unwrap();
    assert!(!store
        .claim_delivery(&d2, at(10_000), at(10_100))
        .await
        .unwrap());
    assert!(store.claim_delivery(&d3, at(130), at(160)).await.unwrap());
    let a4 = attempt(&e3, 1, Some(204), None, 130); // same instant as a3: id breaks the tie
    store
        .finish_attempt(&d3, &hook.id, &a4, AfterAttempt::Delivered)
        .await
        .unwrap();
    assert!(due(&store, 10_000).await.is_empty());

    // The attempts, newest first by (at, id), page by page.
    let mut expected = vec![a1, a2, a3, a4];
    expected.sort_by(|x, y| (y.at, &y.id).cmp(&(x.at, &x.id)));
    let list = |after: Option<TimeCursor>, limit: i64| {
        let store = store.clone();
        let id = hook.id.clone();
        async move {
            store
                .list_attempts(&id, &Page { limit, after })
                .await
                .unwrap()
        }
    };
    assert_eq!(list(None, 10).await, expected);
    let first = list(None, 3).await;
    assert_eq!(first, expected[..3].to_vec());
    let last = &first[2];
    let rest = list(Some((last.at.millis(), last.id.clone())), 3).await;
    assert_eq!(rest, expected[3..].to_vec());
    assert!(store
        .list_attempts(
            &other.id,
            &Page {
                limit: 10,
                after: None
            }
        )
        .await
        .unwrap()
        .is_empty());
}
conformance!(deliveries_are_claimed_once_and_finished_by_their_attempts
    => sqlite_deliveries_are_claimed_once_and_finished_by_their_attempts,
       postgres_deliveries_are_claimed_once_and_finished_by_their_attempts);

async fn webhook_secrets_are_read_and_replaced_together(store: Arc<dyn Store>) {
    let a = webhook("https://hooks.example/a", &["key.created"], None, 1);
    let b = webhook("https://hooks.example/b", &["key.created"], None, 2);
    insert_webhooks(&store, &[&a, &b]).await;
    let mut want = vec![(a.id.clone(), secret_of(&a)), (b.id.clone(), secret_of(&b))];
    want.sort();
    assert_eq!(store.webhook_secrets().await.unwrap(), want);
    let sealed: Vec<(String, String)> = want
        .iter()
        .map(|(id, s)| (id.clone(), format!("kw1:00000000:{s}")))
        .collect();
    store.replace_webhook_secrets(&sealed).await.unwrap();
    assert_eq!(store.webhook_secrets().await.unwrap(), sealed);
    // Deliveries carry what is stored.
    let mut tx = store.begin().await.unwrap();
    tx.enqueue(&event("key.created", 10, None)).await.unwrap();
    tx.commit().await.unwrap();
    let due = store.due_deliveries(at(1_000), 100, 100).await.unwrap();
    assert!(due.iter().all(|d| d.secret.starts_with("kw1:")), "{due:?}");
}
conformance!(webhook_secrets_are_read_and_replaced_together
    => sqlite_webhook_secrets_are_read_and_replaced_together,
       postgres_webhook_secrets_are_read_and_replaced_together);
