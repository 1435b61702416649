//! Reads that several dashboard pages share (keyspaces for names and pickers, keys beyond one
//! page). Page modules import this one; it imports none of them, so the pages stay acyclic.

use std::collections::HashMap;

use keyward_core::model::{Key, Keyspace};
use keyward_store::{KeyFilter, Page};

use super::PageResult;
use crate::authz::{self, Allowed, Ctx};
use crate::service;
use crate::state::AppState;

/// Keys matching `filter`, newest first, up to `cap` (and whether there were more).
pub(crate) async fn scan_keys(
    st: &AppState,
    who: &Allowed<'_, authz::ReadKeys>,
    mut filter: KeyFilter,
    cap: usize,
) -> PageResult<(Vec<Key>, bool)> {
    let mut out = Vec::new();
    filter.page = Page {
        limit: 500,
        after: None,
    };
    loop {
        let rows = service::list_keys(st.records(), who, filter.clone()).await?;
        let n = rows.len();
        let last = rows.last().map(|k| (k.created_at.millis(), k.id.clone()));
        out.extend(rows);
        if out.len() >= cap {
            out.truncate(cap);
            return Ok((out, true));
        }
        match last {
            Some(pos) if n == 500 => filter.page.after = Some(pos),
            _ => return Ok((out, false)),
        }
    }
}

/// Keyspaces the context may see (for names and pickers).
pub(crate) async fn all_keyspaces(st: &AppState, ctx: &Ctx) -> PageResult<Vec<Keyspace>> {
    let who = ctx.allow::<authz::ReadKeys>()?;
    Ok(service::list_keyspaces(st.records(), &who, &KEYSPACES_SHOWN).await?)
}

/// The keyspaces the dashboard shows: the first 500.
pub(crate) const KEYSPACES_SHOWN: Page<keyward_store::TimeCursor> = Page {
    limit: 500,
    after: None,
};

/// Keyspace names by id.
pub(crate) fn keyspace_names(kss: &[Keyspace]) -> HashMap<String, String> {
    kss.iter().map(|k| (k.id.clone(), k.name.clone())).collect()
}
