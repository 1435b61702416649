//! Anomalies: recorded once per occurrence (the dedup key), listed newest first.

use std::sync::Arc;

use keyward_core::id::new_id;
use keyward_core::model::Anomaly;
use keyward_store::{AnomalyFilter, Page, Store, TimeCursor};
use serde_json::json;

use crate::support::*;

fn anomaly(key_id: &str, keyspace_id: &str, kind: &str, secs: i64) -> Anomaly {
    Anomaly {
        id: new_id("anm", at(secs)),
        key_id: key_id.into(),
        keyspace_id: keyspace_id.into(),
        kind: keyward_core::kinds::AnomalyKind::parse(kind).unwrap(),
        detected_at: at(secs),
        detail: json!({"seen": secs, "note": "ünïcødé \"quoted\"", "list": [1, null]}),
    }
}

/// Records each anomaly under its own dedup key in one committed transaction.
async fn record(store: &Arc<dyn Store>, found: &[(&Anomaly, &str)]) -> Vec<bool> {
    let mut tx = store.begin().await.unwrap();
    let mut recorded = Vec::new();
    for (a, dedup) in found {
        recorded.push(tx.insert_anomaly(a, dedup).await.unwrap());
    }
    tx.commit().await.unwrap();
    recorded
}

fn filter(limit: i64) -> AnomalyFilter {
    AnomalyFilter {
        page: Page { limit, after: None },
        ..AnomalyFilter::default()
    }
}

fn newest_first(list: &[&Anomaly]) -> Vec<Anomaly> {
    let mut v: Vec<Anomaly> = list.iter().map(|a| (*a).clone()).collect();
    v.sort_by(|x, y| (y.detected_at, &y.id).cmp(&(x.detected_at, &x.id)));
    v
}

async fn anomalies_are_recorded_once_per_dedup_key(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let k = key(&ks, at(0)).key;
    insert_keys(&store, &[&k]).await;
    let first = anomaly(&k.id, &ks.id, "spike", 10);
    let again = anomaly(&k.id, &ks.id, "spike", 11);
    let other = anomaly(&k.id, &ks.id, "spike", 12);

    // Within one transaction, and across transactions (nodes sweeping the same minute).
    assert_eq!(
        record(&store, &[(&first, "spike:k:10"), (&again, "spike:k:10")]).await,
        vec![true, false]
    );
    assert_eq!(record(&store, &[(&again, "spike:k:10")]).await, vec![false]);
    assert_eq!(record(&store, &[(&other, "spike:k:12")]).await, vec![true]);
    assert_eq!(
        store.list_anomalies(&filter(10)).await.unwrap(),
        vec![other.clone(), first.clone()],
        "the first one recorded is kept, with its detail"
    );

    // A rolled-back record leaves its dedup key free.
    let late = anomaly(&k.id, &ks.id, "new_source", 20);
    let mut tx = store.begin().await.unwrap();
    assert!(tx.insert_anomaly(&late, "source:k:1").await.unwrap());
    drop(tx);
    assert_eq!(store.list_anomalies(&filter(10)).await.unwrap().len(), 2);
    assert_eq!(record(&store, &[(&late, "source:k:1")]).await, vec![true]);
    assert_eq!(
        store.list_anomalies(&filter(10)).await.unwrap(),
        vec![late, other, first]
    );
}
conformance!(anomalies_are_recorded_once_per_dedup_key
    => sqlite_anomalies_are_recorded_once_per_dedup_key,
       postgres_anomalies_are_recorded_once_per_dedup_key);

async fn list_anomalies_filters_and_pages_newest_first(store: Arc<dyn Store>) {
    let ks1 = new_keyspace(&store, "acme").await;
    let ks2 = new_keyspace(&store, "beta").await;
    let k1 = key(&ks1, at(0)).key;
    let k2 = key(&ks1, at(0)).key;
    let k3 = key(&ks2, at(0)).key;
    insert_keys(&store, &[&k1, &k2, &k3]).await;
    let a1 = anomaly(&k1.id, &ks1.id, "spike", 10);
    let a2 = anomaly(&k1.id, &ks1.id, "new_source", 20);
    let a3 = anomaly(&k2.id, &ks1.id, "spike", 20); // same instant as a2: id breaks the tie
    let a4 = anomaly(&k3.id, &ks2.id, "spike", 30);
    let a5 = anomaly(&k1.id, &ks1.id, "dormant_reactivated", 5);
    let recorded = record(
        &store,
        &[
            (&a1, "d1"),
            (&a2, "d2"),
            (&a3, "d3"),
            (&a4, "d4"),
            (&a5, "d5"),
        ],
    )
    .await;
    assert_eq!(recorded, vec![true; 5]);

    let all = newest_first(&[&a1, &a2, &a3, &a4, &a5]);
    assert_eq!(store.list_anomalies(&filter(100)).await.unwrap(), all);

    let with = |f: AnomalyFilter| {
        let store = store.clone();
        async move { store.list_anomalies(&f).await.unwrap() }
    };
    assert_eq!(
        with(AnomalyFilter {
            keyspace_ids: Some(vec![ks2.id.clone()]),
            ..filter(100)
        })
        .await,
        vec![a4.clone()]
    );
    assert_eq!(
        with(AnomalyFilter {
            keyspace_ids: Some(vec![ks1.id.clone(), ks2.id.clone()]),
            ..filter(100)
        })
        .await,
        all
    );
    assert!(with(AnomalyFilter {
        keyspace_ids: Some(vec![]),
        ..filter(100)
    })
    .await
    .is_empty());
    assert_eq!(
        with(AnomalyFilter {
            key_id: Some(k1.id.clone()),
            ..filter(100)
        })
        .await,
        newest_first(&[&a1, &a2, &a5])
    );
    // `since` is inclusive.
    assert_eq!(
        with(AnomalyFilter {
            since: Some(at(20)),
            ..filter(100)
        })
        .await,
        newest_first(&[&a2, &a3, &a4])
    );
    assert_eq!(
        with(AnomalyFilter {
            key_id: Some(k1.id.clone()),
            since: Some(at(10)),
            keyspace_ids: Some(vec![ks1.id.clone()]),
            ..filter(100)
        })
        .await,
        newest_first(&[&a1, &a2])
    );
    assert!(with(AnomalyFilter {
        key_id: Some(k1.id.clone()),
        keyspace_ids: Some(vec![ks2.id.clone()]),
        ..filter(100)
    })
    .await
    .is_empty());

    // Pages of two, each after the last one seen, walk the whole list once.
    let mut walked = Vec::new();
    let mut after: Option<TimeCursor> = None;
    loop {
        let page = with(AnomalyFilter {
            page: Page {
                limit: 2,
                after: after.clone(),
            },
            ..AnomalyFilter::default()
        })
        .await;
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some((last.detected_at.millis(), last.id.clone()));
        walked.extend(page);
    }
    assert_eq!(walked, all);
}
conformance!(list_anomalies_filters_and_pages_newest_first
    => sqlite_list_anomalies_filters_and_pages_newest_first,
       postgres_list_anomalies_filters_and_pages_newest_first);
