//! `list_keys` filters and keyset pagination, and `live_keys_of_owner`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use keyward_core::id::new_id;
use keyward_core::model::{Actor, Key, KeyStatus};
use keyward_core::time::Timestamp;
use keyward_store::{KeyFilter, Page, Store, UsageDelta};

use crate::support::*;

fn set(keys: &[&Key]) -> BTreeSet<String> {
    ids(keys.iter().copied())
}

async fn list_keys_filters_by_keyspace_ids_and_an_empty_list_matches_nothing(
    store: Arc<dyn Store>,
) {
    let ks1 = new_keyspace(&store, "one").await;
    let ks2 = new_keyspace(&store, "two").await;
    let ks3 = new_keyspace(&store, "three").await;
    let a = key(&ks1, at(1)).key;
    let b = key(&ks1, at(2)).key;
    let c = key(&ks2, at(3)).key;
    let d = key(&ks3, at(4)).key;
    insert_keys(&store, &[&a, &b, &c, &d]).await;

    let now = at(10);
    let only = |ids: Vec<&str>| KeyFilter {
        keyspace_ids: Some(ids.into_iter().map(String::from).collect()),
        ..all_keys(now)
    };
    assert_eq!(listed(&store, &all_keys(now)).await, set(&[&a, &b, &c, &d]));
    assert_eq!(listed(&store, &only(vec![&ks1.id])).await, set(&[&a, &b]));
    assert_eq!(
        listed(&store, &only(vec![&ks1.id, &ks3.id])).await,
        set(&[&a, &b, &d])
    );
    assert_eq!(
        listed(&store, &only(vec!["ks_unknown"])).await,
        BTreeSet::new()
    );
    // A token limited to no keyspace at all sees nothing (not everything).
    assert_eq!(listed(&store, &only(vec![])).await, BTreeSet::new());
}
conformance!(list_keys_filters_by_keyspace_ids_and_an_empty_list_matches_nothing
    => sqlite_list_keys_filters_by_keyspace_ids_and_an_empty_list_matches_nothing,
       postgres_list_keys_filters_by_keyspace_ids_and_an_empty_list_matches_nothing);

async fn list_keys_filters_by_owner(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let mut alice1 = key(&ks, at(1)).key;
    alice1.owner = Some("alice".into());
    let mut alice2 = key(&ks, at(2)).key;
    alice2.owner = Some("alice".into());
    let mut upper = key(&ks, at(3)).key;
    upper.owner = Some("Alice".into());
    let mut longer = key(&ks, at(4)).key;
    longer.owner = Some("alice2".into());
    let nobody = key(&ks, at(5)).key;
    insert_keys(&store, &[&alice1, &alice2, &upper, &longer, &nobody]).await;

    let by = |owner: &str| KeyFilter {
        owner: Some(owner.into()),
        ..all_keys(at(10))
    };
    assert_eq!(
        listed(&store, &by("alice")).await,
        set(&[&alice1, &alice2]),
        "owner is an exact match"
    );
    assert_eq!(listed(&store, &by("Alice")).await, set(&[&upper]));
    assert_eq!(listed(&store, &by("bob")).await, BTreeSet::new());
}
conformance!(list_keys_filters_by_owner
    => sqlite_list_keys_filters_by_owner, postgres_list_keys_filters_by_owner);

async fn list_keys_filters_by_each_status_as_of_now(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let now = at(1000);
    let mut named: BTreeMap<&str, Key> = BTreeMap::new();
    let mut make = |name: &'static str, edit: &dyn Fn(&mut Key)| {
        let mut k = key(&ks, at(named.len() as i64)).key;
        k.name = name.into();
        edit(&mut k);
        named.insert(name, k);
    };
    let revoke = |k: &mut Key| {
        k.revoked_at = Some(at(500));
        k.revoked_by = Some(Actor::system());
        k.revoked_reason = Some("test".into());
    };
    make("active", &|_| {});
    make("active, expires later", &|k| {
        k.expires_at = Some(now.plus_millis(1))
    });
    make("rotating", &|k| {
        k.rotated_to = Some("key_successor".into());
        k.expires_at = Some(now.plus_secs(60));
    });
    make("disabled", &|k| k.enabled = false);
    make("disabled and rotating", &|k| {
        k.enabled = false;
        k.rotated_to = Some("key_successor".into());
    });
    make("expired", &|k| k.expires_at = Some(at(999)));
    make("expires exactly now", &|k| k.expires_at = Some(now));
    make("expired and disabled", &|k| {
        k.expires_at = Some(at(900));
        k.enabled = false;
    });
    make("expired while rotating", &|k| {
        k.expires_at = Some(at(900));
        k.rotated_to = Some("key_successor".into());
    });
    make("revoked", &|k| revoke(k));
    make("revoked and expired", &|k| {
        revoke(k);
        k.expires_at = Some(at(600));
    });
    make("revoked and disabled", &|k| {
        revoke(k);
        k.enabled = false;
    });
    let all: Vec<&Key> = named.values().collect();
    insert_keys(&store, &all).await;

    let expect = |names: &[&str]| -> BTreeSet<String> {
        names.iter().map(|n| named[n].id.clone()).collect()
    };
    let by = |status: KeyStatus, now: Timestamp| KeyFilter {
        status: Some(status),
        ..all_keys(now)
    };

    let cases = [
        (
            KeyStatus::Active,
            expect(&["active", "active, expires later"]),
        ),
        (KeyStatus::Rotating, expect(&["rotating"])),
        (
            KeyStatus::Disabled,
            expect(&["disabled", "disabled and rotating"]),
        ),
        (
            KeyStatus::Expired,
            expect(&[
                "expired",
                "expires exactly now",
                "expired and disabled",
                "expired while rotating",
            ]),
        ),
        (
            KeyStatus::Revoked,
            expect(&["revoked", "revoked and expired", "revoked and disabled"]),
        ),
    ];
    let mut union = BTreeSet::new();
    for (status, want) in cases {
        // The database's idea of the status is the model's.
        let model: BTreeSet<String> = all
            .iter()
            .filter(|k| k.status(now) == status)
            .map(|k| k.id.clone())
            .collect();
        assert_eq!(
            model, want,
            "Key::status disagrees with the test about {status:?}"
        );
        assert_eq!(
            listed(&store, &by(status, now)).await,
            want,
            "status {status:?}"
        );
        union.extend(want);
    }
    assert_eq!(union.len(), all.len(), "every key has exactly one status");

    // Status is computed at the filter's `now`: earlier, nothing had expired yet.
    let early = at(100);
    let model: BTreeSet<String> = all
        .iter()
        .filter(|k| k.status(early) == KeyStatus::Active)
        .map(|k| k.id.clone())
        .collect();
    assert_eq!(
        model,
        expect(&[
            "active",
            "active, expires later",
            "expired",
            "expires exactly now"
        ])
    );
    assert_eq!(listed(&store, &by(KeyStatus::Active, early)).await, model);
    assert_eq!(
        listed(&store, &by(KeyStatus::Expired, early)).await,
        BTreeSet::new()
    );
}
conformance!(list_keys_filters_by_each_status_as_of_now
    => sqlite_list_keys_filters_by_each_status_as_of_now,
       postgres_list_keys_filters_by_each_status_as_of_now);

async fn list_keys_filters_by_an_exact_label(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let mut n = 0;
    let mut with = |labels: &[(&str, &str)]| {
        n += 1;
        let mut k = key(&ks, at(n)).key;
        k.labels = labels
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        k
    };
    let prod = with(&[("env", "prod"), ("team", "billing")]);
    let prod_only = with(&[("env", "prod")]);
    let production = with(&[("env", "production")]);
    let pre = with(&[("env", "pre-prod")]);
    let other_name = with(&[("xenv", "prod")]);
    let capital = with(&[("Env", "prod")]);
    let spaced = with(&[("env", "prod ")]);
    let quoted_value = with(&[("note", "\"env\":\"prod\"")]);
    let swapped = with(&[("prod", "env")]);
    let tricky = with(&[("env", "a \"q\" \\ ü,:}")]);
    let path_like = with(&[("k8s.io/app-name_1", "web")]);
    let empty_value = with(&[("env", "")]);
    let none = with(&[]);
    let all = [
        &prod,
        &prod_only,
        &production,
        &pre,
        &other_name,
        &capital,
        &spaced,
        &quoted_value,
        &swapped,
        &tricky,
        &path_like,
        &empty_value,
        &none,
    ];
    insert_keys(&store, &all).await;

    let by = |k: &str, v: &str| KeyFilter {
        label: Some((k.into(), v.into())),
        ..all_keys(at(100))
    };
    assert_eq!(
        listed(&store, &by("env", "prod")).await,
        set(&[&prod, &prod_only])
    );
    assert_eq!(listed(&store, &by("team", "billing")).await, set(&[&prod]));
    assert_eq!(
        listed(&store, &by("env", "production")).await,
        set(&[&production])
    );
    assert_eq!(
        listed(&store, &by("env", "pro")).await,
        BTreeSet::new(),
        "no prefix match on values"
    );
    assert_eq!(
        listed(&store, &by("nv", "prod")).await,
        BTreeSet::new(),
        "no suffix match on names"
    );
    assert_eq!(
        listed(&store, &by("Env", "prod")).await,
        set(&[&capital]),
        "names are case-sensitive"
    );
    assert_eq!(
        listed(&store, &by("env", "PROD")).await,
        BTreeSet::new(),
        "values are case-sensitive"
    );
    assert_eq!(
        listed(&store, &by("env", "a \"q\" \\ ü,:}")).await,
        set(&[&tricky])
    );
    assert_eq!(
        listed(&store, &by("k8s.io/app-name_1", "web")).await,
        set(&[&path_like])
    );
    assert_eq!(listed(&store, &by("env", "")).await, set(&[&empty_value]));
    assert_eq!(
        listed(&store, &by("note", "\"env\":\"prod\"")).await,
        set(&[&quoted_value])
    );
    assert_eq!(listed(&store, &by("missing", "x")).await, BTreeSet::new());
}
conformance!(list_keys_filters_by_an_exact_label
    => sqlite_list_keys_filters_by_an_exact_label, postgres_list_keys_filters_by_an_exact_label);

async fn list_keys_matches_a_name_substring_case_insensitively(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let mut n = 0;
    let mut named = |name: &str| {
        n += 1;
        let mut k = key(&ks, at(n)).key;
        k.name = name.into();
        k
    };
    let billing_prod = named("Billing PROD key");
    let billing_staging = named("billing-staging");
    let orders = named("orders");
    let percent = named("100% off_sale");
    let underscore_free = named("100x offXsale");
    insert_keys(
        &store,
        &[
            &billing_prod,
            &billing_staging,
            &orders,
            &percent,
            &underscore_free,
        ],
    )
    .await;

    let q = |s: &str| KeyFilter {
        name_contains: Some(s.into()),
        ..all_keys(at(100))
    };
    assert_eq!(
        listed(&store, &q("BILLING")).await,
        set(&[&billing_prod, &billing_staging])
    );
    assert_eq!(
        listed(&store, &q("billing")).await,
        set(&[&billing_prod, &billing_staging])
    );
    assert_eq!(listed(&store, &q("prod k")).await, set(&[&billing_prod]));
    assert_eq!(listed(&store, &q("OrDeRs")).await, set(&[&orders]));
    assert_eq!(listed(&store, &q("zzz")).await, BTreeSet::new());
    // `%` and `_` are plain characters, not LIKE wildcards.
    assert_eq!(listed(&store, &q("%")).await, set(&[&percent]));
    assert_eq!(listed(&store, &q("off_")).await, set(&[&percent]));
    assert_eq!(listed(&store, &q("100_")).await, BTreeSet::new());
}
conformance!(list_keys_matches_a_name_substring_case_insensitively
    => sqlite_list_keys_matches_a_name_substring_case_insensitively,
       postgres_list_keys_matches_a_name_substring_case_insensitively);

async fn list_keys_unused_for_counts_from_creation_when_never_used(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let now = at(10_000);
    let cutoff = at(10_000 - 3_600);

    let old_never_used = key(&ks, at(0)).key;
    let new_never_used = key(&ks, at(9_000)).key;
    let created_at_cutoff = key(&ks, cutoff).key;
    let created_just_after_cutoff = key(&ks, cutoff.plus_millis(1)).key;
    let mut used_long_ago = key(&ks, at(1)).key;
    used_long_ago.last_used_at = Some(at(100));
    let mut used_at_cutoff = key(&ks, at(2)).key;
    used_at_cutoff.last_used_at = Some(cutoff);
    let used_recently = key(&ks, at(3)).key; // use recorded by the flusher below
    insert_keys(
        &store,
        &[
            &old_never_used,
            &new_never_used,
            &created_at_cutoff,
            &created_just_after_cutoff,
            &used_long_ago,
            &used_at_cutoff,
            &used_recently,
        ],
    )
    .await;
    let delta = UsageDelta {
        key_id: used_recently.id.clone(),
        calls: 1,
        last_used_at: Some(at(9_999)),
        ..UsageDelta::default()
    };
    store.apply_usage(&[delta]).await.unwrap();

    let unused = |secs: i64, now: Timestamp| KeyFilter {
        unused_for_secs: Some(secs),
        ..all_keys(now)
    };
    assert_eq!(
        listed(&store, &unused(3_600, now)).await,
        set(&[
            &old_never_used,
            &created_at_cutoff,
            &used_long_ago,
            &used_at_cutoff
        ])
    );
    assert_eq!(
        listed(&store, &unused(0, now)).await.len(),
        7,
        "unused for 0 s: every key"
    );
    assert_eq!(listed(&store, &unused(100_000, now)).await, BTreeSet::new());
}
conformance!(list_keys_unused_for_counts_from_creation_when_never_used
    => sqlite_list_keys_unused_for_counts_from_creation_when_never_used,
       postgres_list_keys_unused_for_counts_from_creation_when_never_used);

async fn list_keys_combines_filters(store: Arc<dyn Store>) {
    let ks1 = new_keyspace(&store, "one").await;
    let ks2 = new_keyspace(&store, "two").await;
    let mut target = key(&ks1, at(1)).key;
    target.owner = Some("alice".into());
    target.name = "Billing".into();
    target.labels = BTreeMap::from([("env".into(), "prod".into())]);
    let mut other_keyspace = target.clone();
    other_keyspace.id = new_id("key", at(1));
    other_keyspace.keyspace_id = ks2.id.clone();
    other_keyspace.hash = key(&ks2, at(1)).key.hash;
    let mut other_owner = key(&ks1, at(2)).key;
    other_owner.name = "Billing".into();
    other_owner.labels = target.labels.clone();
    let mut revoked = target.clone();
    revoked.id = new_id("key", at(3));
    revoked.hash = key(&ks1, at(3)).key.hash;
    revoked.revoked_at = Some(at(5));
    insert_keys(&store, &[&target, &other_keyspace, &other_owner, &revoked]).await;

    let f = KeyFilter {
        keyspace_ids: Some(vec![ks1.id.clone()]),
        owner: Some("alice".into()),
        status: Some(KeyStatus::Active),
        label: Some(("env".into(), "prod".into())),
        name_contains: Some("bill".into()),
        unused_for_secs: Some(60),
        ..all_keys(at(100))
    };
    assert_eq!(listed(&store, &f).await, set(&[&target]));
}
conformance!(list_keys_combines_filters
    => sqlite_list_keys_combines_filters, postgres_list_keys_combines_filters);

/// Reads every page of `filter` with pages of `limit`, checking each page's size.
async fn read_all_pages(store: &Arc<dyn Store>, filter: &KeyFilter, limit: i64) -> Vec<Key> {
    let mut f = filter.clone();
    f.page = Page { limit, after: None };
    let mut out = Vec::new();
    for _ in 0..1000 {
        let page = store.list_keys(&f).await.unwrap();
        assert!(
            page.len() as i64 <= limit,
            "a page of {} with limit {limit}",
            page.len()
        );
        let Some(last) = page.last() else { return out };
        f.page.after = Some((last.created_at.millis(), last.id.clone()));
        out.extend(page);
    }
    panic!("pagination did not end");
}

async fn list_keys_pages_newest_first_without_duplicates_or_omissions(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "acme").await;
    let other = new_keyspace(&store, "other").await;
    // 23 keys over 5 distinct creation times (so most positions are ties broken by id), and
    // inserted in an order unrelated to either.
    let mut keys: Vec<Key> = (0..23)
        .map(|i| {
            let mut k = key(&ks, at(i % 5)).key;
            k.owner = Some(if i % 3 == 0 { "alice" } else { "bob" }.into());
            k
        })
        .collect();
    let order: Vec<usize> = (0..23).map(|i| (i * 7) % 23).collect();
    let shuffled: Vec<&Key> = order.iter().map(|&i| &keys[i]).collect();
    insert_keys(&store, &shuffled).await;
    // A key of another keyspace in the middle of the range, filtered out below.
    let outsider = key(&other, at(2)).key;
    insert_keys(&store, &[&outsider]).await;

    keys.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    let expected: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
    let in_ks = KeyFilter {
        keyspace_ids: Some(vec![ks.id.clone()]),
        ..all_keys(at(100))
    };

    for limit in [1, 2, 4, 5, 22, 23, 24, 500] {
        let got: Vec<String> = read_all_pages(&store, &in_ks, limit)
            .await
            .into_iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(got, expected, "pages of {limit}");
    }

    // A single page starts at the newest key.
    let first = store
        .list_keys(&KeyFilter {
            page: Page {
                limit: 3,
                after: None,
            },
            ..in_ks.clone()
        })
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|k| k.id.clone()).collect::<Vec<_>>(),
        expected[..3].to_vec()
    );

    // A cursor need not name an existing row: everything strictly after it comes back.
    for cursor in [
        (at(2).millis(), "key_".to_string()),
        (at(2).millis(), "key_zzzzzzzz".to_string()),
        (at(3).millis() - 1, "z".to_string()),
    ] {
        let want: Vec<String> = keys
            .iter()
            .filter(|k| (k.created_at.millis(), k.id.as_str()) < (cursor.0, cursor.1.as_str()))
            .map(|k| k.id.clone())
            .collect();
        let f = KeyFilter {
            page: Page {
                limit: 500,
                after: Some(cursor.clone()),
            },
            ..in_ks.clone()
        };
        let got: Vec<String> = store
            .list_keys(&f)
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(got, want, "after {cursor:?}");
    }

    // Paging with a filter pages through the filtered rows only.
    let alice = KeyFilter {
        owner: Some("alice".into()),
        ..in_ks.clone()
    };
    let want: Vec<String> = keys
        .iter()
        .filter(|k| k.owner.as_deref() == Some("alice"))
        .map(|k| k.id.clone())
        .collect();
    assert_eq!(want.len(), 8);
    let got: Vec<String> = read_all_pages(&store, &alice, 3)
        .await
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(got, want);

    // Without the keyspace filter the outsider takes its place in the order.
    let everything: Vec<String> = read_all_pages(&store, &all_keys(at(100)), 4)
        .await
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(everything.len(), 24);
    assert_eq!(
        everything.iter().collect::<BTreeSet<_>>().len(),
        24,
        "no duplicates"
    );
    assert!(everything.contains(&outsider.id));
}
conformance!(list_keys_pages_newest_first_without_duplicates_or_omissions
    => sqlite_list_keys_pages_newest_first_without_duplicates_or_omissions,
       postgres_list_keys_pages_newest_first_without_duplicates_or_omissions);

async fn live_keys_of_owner_excludes_revoked_and_expired_keys(store: Arc<dyn Store>) {
    let ks1 = new_keyspace(&store, "one").await;
    let ks2 = new_keyspace(&store, "two").await;
    let now = at(100);
    let owned = |ks: &keyward_core::model::Keyspace, secs: i64, owner: &str| {
        let mut k = key(ks, at(secs)).key;
        k.owner = Some(owner.into());
        k
    };
    let active = owned(&ks1, 1, "alice");
    let mut disabled = owned(&ks1, 2, "alice");
    disabled.enabled = false;
    let mut rotating = owned(&ks1, 3, "alice");
    rotating.rotated_to = Some("key_next".into());
    rotating.expires_at = Some(now.plus_secs(10));
    let mut revoked = owned(&ks1, 4, "alice");
    revoked.revoked_at = Some(at(50));
    let mut expired = owned(&ks1, 5, "alice");
    expired.expires_at = Some(at(99));
    let mut expires_now = owned(&ks1, 6, "alice");
    expires_now.expires_at = Some(now);
    let elsewhere = owned(&ks2, 7, "alice");
    let bobs = owned(&ks1, 8, "bob");
    let mut unowned = key(&ks1, at(9)).key;
    unowned.name = "alice".into();
    insert_keys(
        &store,
        &[
            &active,
            &disabled,
            &rotating,
            &revoked,
            &expired,
            &expires_now,
            &elsewhere,
            &bobs,
            &unowned,
        ],
    )
    .await;

    let mut tx = store.begin().await.unwrap();
    let got = ids(&tx.live_keys_of_owner("alice", None, now).await.unwrap());
    assert_eq!(got, set(&[&active, &disabled, &rotating, &elsewhere]));
    let got = ids(&tx
        .live_keys_of_owner("alice", Some(std::slice::from_ref(&ks1.id)), now)
        .await
        .unwrap());
    assert_eq!(got, set(&[&active, &disabled, &rotating]));
    let got = ids(&tx
        .live_keys_of_owner("alice", Some(&[ks2.id.clone(), ks1.id.clone()][..]), now)
        .await
        .unwrap());
    assert_eq!(got, set(&[&active, &disabled, &rotating, &elsewhere]));
    assert!(tx
        .live_keys_of_owner("alice", Some(&[][..]), now)
        .await
        .unwrap()
        .is_empty());
    assert!(tx
        .live_keys_of_owner("carol", None, now)
        .await
        .unwrap()
        .is_empty());
    // Evaluated at `now`: earlier, the expired keys were still live.
    let got = ids(&tx
        .live_keys_of_owner("alice", Some(std::slice::from_ref(&ks1.id)), at(10))
        .await
        .unwrap());
    assert_eq!(
        got,
        set(&[&active, &disabled, &rotating, &expired, &expires_now])
    );
    // Whole keys come back, not just ids.
    let full = tx.live_keys_of_owner("bob", None, now).await.unwrap();
    assert_eq!(full, vec![bobs.clone()]);
    // A key inserted in this transaction counts at once (max_keys_per_owner checks rely on it).
    let fresh = owned(&ks1, 10, "alice");
    tx.insert_key(&fresh).await.unwrap();
    let got = ids(&tx
        .live_keys_of_owner("alice", Some(std::slice::from_ref(&ks1.id)), now)
        .await
        .unwrap());
    assert_eq!(got, set(&[&active, &disabled, &rotating, &fresh]));
    drop(tx);
}
conformance!(live_keys_of_owner_excludes_revoked_and_expired_keys
    => sqlite_live_keys_of_owner_excludes_revoked_and_expired_keys,
       postgres_live_keys_of_owner_excludes_revoked_and_expired_keys);

/// The label and name indexes (migration 0012) follow every write of a key: a batch insert, a
/// change of labels or name, a revocation. A filter that matches more keys than the indexes
/// hand over (2,000) is answered by reading the list in order, with the same result.
fn all_of(keys: &[Key]) -> BTreeSet<String> {
    ids(keys)
}

async fn label_and_name_filters_follow_every_write_and_page_through_many_matches(
    store: Arc<dyn Store>,
) {
    let ks = new_keyspace(&store, "acme").await;
    let other = new_keyspace(&store, "other").await;
    let made = |ks: &keyward_core::model::Keyspace, i: i64, team: &str, name: String| {
        let mut k = key(ks, at(i)).key;
        k.labels = BTreeMap::from([("team".to_string(), team.to_string())]);
        k.name = name;
        k
    };
    let common: Vec<Key> = (0..2_100)
        .map(|i| made(&ks, i, "core", format!("Common key {i}")))
        .collect();
    let rare: Vec<Key> = (0..3)
        .map(|i| made(&ks, 3_000 + i, "edge", format!("rare-XYZ-{i}")))
        .collect();
    let elsewhere = made(&other, 4_000, "edge", "rare-xyz-elsewhere".into());
    let mut tx = store.begin().await.unwrap();
    tx.insert_keys(&common).await.unwrap();
    tx.insert_keys(&rare).await.unwrap();
    tx.insert_keys(std::slice::from_ref(&elsewhere))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let now = at(10_000);
    let filter =
        |label: Option<(&str, &str)>, q: Option<&str>, spaces: Option<Vec<String>>| KeyFilter {
            keyspace_ids: spaces,
            label: label.map(|(k, v)| (k.into(), v.into())),
            name_contains: q.map(str::to_string),
            ..all_keys(now)
        };
    let in_acme = || Some(vec![ks.id.clone()]);
    // Every page of a filter, from its cursor.
    let paged = async |f: KeyFilter| -> BTreeSet<String> {
        let mut f = KeyFilter {
            page: Page {
                limit: 300,
                after: None,
            },
            ..f
        };
        let mut all = BTreeSet::new();
        loop {
            let page = store.list_keys(&f).await.unwrap();
            let Some(last) = page.last() else { return all };
            f.page.after = Some((last.created_at.millis(), last.id.clone()));
            for k in &page {
                assert!(all.insert(k.id.clone()), "{} listed twice", k.id);
            }
        }
    };
    assert_eq!(
        paged(filter(Some(("team", "core")), None, in_acme())).await,
        all_of(&common)
    );
    assert_eq!(
        paged(filter(None, Some("common KEY"), in_acme())).await,
        all_of(&common)
    );
    assert_eq!(
        paged(filter(Some(("team", "edge")), None, in_acme())).await,
        all_of(&rare)
    );
    assert_eq!(
        paged(filter(Some(("team", "edge")), None, None)).await,
        set(&[&rare[0], &rare[1], &rare[2], &elsewhere])
    );
    assert_eq!(
        paged(filter(None, Some("xyz-"), in_acme())).await,
        all_of(&rare)
    );
    assert_eq!(
        paged(filter(Some(("team", "edge")), Some("XYZ-1"), None)).await,
        set(&[&rare[1]])
    );
    assert_eq!(
        paged(filter(Some(("team", "core")), Some("xyz"), None)).await,
        BTreeSet::new()
    );
    assert_eq!(
        paged(filter(None, Some("Key 2099"), None)).await,
        set(&[&common[2_099]])
    );
    assert_eq!(
        paged(filter(None, Some("yz"), in_acme())).await,
        all_of(&rare),
        "two characters"
    );
    // Beyond ASCII, the index and the list fold case alike (the database's own `lower()`).
    let greek = made(&ks, 5_000, "intl", "ΟΔΟΣ api".into());
    let french = made(&ks, 5_001, "intl", "École key".into());
    let mut tx = store.begin().await.unwrap();
    tx.insert_keys(&[greek.clone(), french.clone()])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        paged(filter(None, Some("ΟΔΟΣ"), in_acme())).await,
        set(&[&greek])
    );
    assert_eq!(
        paged(filter(None, Some("ÉCOLE"), None)).await,
        set(&[&french])
    );
    assert_eq!(
        paged(filter(None, Some("cole k"), None)).await,
        set(&[&french])
    );

    // A change of labels and name moves the key in both indexes.
    let mut moved = rare[0].clone();
    moved.labels = BTreeMap::from([
        ("team".to_string(), "core".to_string()),
        ("env".to_string(), "prod".to_string()),
    ]);
    moved.name = "Renamed QQQ".into();
    let mut tx = store.begin().await.unwrap();
    tx.update_key(&moved).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        paged(filter(Some(("team", "edge")), None, in_acme())).await,
        set(&[&rare[1], &rare[2]])
    );
    assert_eq!(
        paged(filter(Some(("env", "prod")), None, None)).await,
        set(&[&moved])
    );
    assert_eq!(
        paged(filter(None, Some("xyz-"), in_acme())).await,
        set(&[&rare[1], &rare[2]])
    );
    assert_eq!(paged(filter(None, Some("qqq"), None)).await, set(&[&moved]));
    assert_eq!(
        paged(filter(Some(("team", "core")), None, None))
            .await
            .len(),
        2_101
    );

    // A batch revocation writes the revocation each key carries, and a feed row per key.
    let head = store.change_head().await.unwrap();
    let mut revoked: Vec<Key> = common[..700].to_vec();
    for k in &mut revoked {
        k.revoked_at = Some(at(9_000));
        k.revoked_by = Some(token_actor("tok_bulk"));
        k.revoked_reason = Some("left".into());
        k.updated_at = at(9_000);
        k.name = "not written".into();
    }
    revoked[0].revoked_reason = Some("another reason".into());
    let mut tx = store.begin().await.unwrap();
    tx.revoke_keys(&revoked).await.unwrap();
    tx.commit().await.unwrap();
    let status = |s: KeyStatus| KeyFilter {
        status: Some(s),
        ..filter(None, None, in_acme())
    };
    assert_eq!(paged(status(KeyStatus::Revoked)).await, all_of(&revoked));
    let read = store.key(&revoked[0].id).await.unwrap().unwrap();
    assert_eq!(read.revoked_reason.as_deref(), Some("another reason"));
    assert_eq!(read.revoked_by, Some(token_actor("tok_bulk")));
    assert_eq!(read.name, common[0].name, "only the revocation is written");
    let read = store.key(&revoked[699].id).await.unwrap().unwrap();
    assert_eq!(
        (read.revoked_at, read.updated_at),
        (Some(at(9_000)), at(9_000))
    );
    let feed = store.changes_after(head, 10_000).await.unwrap();
    let fed: BTreeSet<String> = feed.iter().map(|c| c.key_id.clone()).collect();
    assert_eq!(fed, all_of(&revoked));
}
conformance!(label_and_name_filters_follow_every_write_and_page_through_many_matches
    => sqlite_label_and_name_filters_follow_every_write_and_page_through_many_matches,
       postgres_label_and_name_filters_follow_every_write_and_page_through_many_matches);

/// The inventory's lean read: every field as `key` reads it, in list order (newest first, ties
/// by id), a page at a time after a cursor, per keyspace.
async fn key_briefs_carry_each_keys_fields_in_list_order_a_page_at_a_time(store: Arc<dyn Store>) {
    let ks = new_keyspace(&store, "brief").await;
    let other = new_keyspace(&store, "elsewhere").await;
    let full = full_key(&ks, at(10)).key; // revoked, rotated, owned, used, expiring
    let plain = key(&ks, at(20)).key; // enabled, no owner, never used, no expiry
    let mut disabled = key(&ks, at(20)).key; // the same creation time: ordered by id
    disabled.enabled = false;
    disabled.owner = Some("ünïcødé \"owner\"".into());
    let mut expired = key(&ks, at(5)).key;
    expired.expires_at = Some(at(6));
    let mut rotating = key(&ks, at(30)).key;
    rotating.rotated_to = Some("key_next".into());
    rotating.name = "line\nbreak \\ and \u{1}".into();
    let elsewhere = key(&other, at(40)).key;
    insert_keys(
        &store,
        &[&full, &plain, &disabled, &expired, &rotating, &elsewhere],
    )
    .await;

    let mut expected = Vec::new();
    for k in [&full, &plain, &disabled, &expired, &rotating] {
        expected.push(store.key(&k.id).await.unwrap().expect("stored"));
    }
    expected.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    let ks_ids = [ks.id.clone()];
    let mut read = Vec::new();
    let mut after = None;
    loop {
        let page = store.key_briefs(Some(&ks_ids), after, 2).await.unwrap();
        assert!(page.len() <= 2, "a page of {} with limit 2", page.len());
        let Some(last) = page.last() else { break };
        after = Some((last.created_at.millis(), last.id.clone()));
        read.extend(page);
    }
    assert_eq!(read.len(), expected.len(), "{read:?}");
    for (b, k) in read.iter().zip(&expected) {
        assert_eq!(
            (
                &b.id,
                &b.keyspace_id,
                &b.name,
                &b.owner,
                b.enabled,
                b.created_at,
                b.expires_at,
                b.revoked,
                b.rotating,
                b.last_used_at,
                b.call_count
            ),
            (
                &k.id,
                &k.keyspace_id,
                &k.name,
                &k.owner,
                k.enabled,
                k.created_at,
                k.expires_at,
                k.revoked_at.is_some(),
                k.rotated_to.is_some(),
                k.last_used_at,
                k.call_count
            )
        );
    }
    let full_brief = read.iter().find(|b| b.id == full.id).expect("listed");
    assert!(full_brief.revoked && full_brief.rotating && full_brief.call_count == 42);
    assert!(
        !read
            .iter()
            .find(|b| b.id == disabled.id)
            .expect("listed")
            .enabled
    );

    let all = store.key_briefs(None, None, 100).await.unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(all[0].id, elsewhere.id);
    let none: [String; 0] = [];
    assert!(store
        .key_briefs(Some(&none), None, 100)
        .await
        .unwrap()
        .is_empty());
    let past_the_last = Some((at(1).millis(), String::new()));
    assert!(store
        .key_briefs(None, past_the_last, 100)
        .await
        .unwrap()
        .is_empty());
}
conformance!(key_briefs_carry_each_keys_fields_in_list_order_a_page_at_a_time
    => sqlite_key_briefs_carry_each_keys_fields_in_list_order_a_page_at_a_time, postgres_key_briefs_carry_each_keys_fields_in_list_order_a_page_at_a_time);
