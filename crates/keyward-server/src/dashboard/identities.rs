//! The identities pages: list and create, one identity (keys, usage, enable/disable). Reads and
//! changes go through [`crate::service`] with the signed-in user's context, like the API's.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use keyward_core::model::Permission;
use keyward_store::Page;
use maud::Markup;
use serde_json::json;

use super::chart::{Usage, View};
use super::keys::parse_input;
use super::views::identities as view;
use super::{redirect, ui, Form, PageResult, QueryMap, SignedIn};
use crate::authz;
use crate::service;
use crate::state::AppState;

const PER_PAGE: i64 = 50;

pub(crate) async fn list(
    State(st): State<AppState>,
    s: SignedIn,
    q: QueryMap,
) -> PageResult<Markup> {
    render_list(&st, &s, q.get("after"), None).await
}

async fn render_list(
    st: &AppState,
    s: &SignedIn,
    after: Option<&str>,
    error: Option<&str>,
) -> PageResult<Markup> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    let after = after.and_then(|a| {
        let (ms, id) = a.split_once(':')?;
        Some((ms.parse().ok()?, id.to_string()))
    });
    let mut rows = service::list_identities(
        st.records(),
        &who,
        &Page {
            limit: PER_PAGE + 1,
            after,
        },
    )
    .await?;
    let next = (rows.len() as i64 > PER_PAGE).then(|| {
        rows.truncate(PER_PAGE as usize);
        let last = &rows[rows.len() - 1];
        format!(
            "/identities?after={}",
            ui::urlencode(&format!("{}:{}", last.created_at.millis(), last.id))
        )
    });
    Ok(view::list(
        s,
        &view::IdentityList {
            rows: &rows,
            next,
            may_write: s.may(Permission::WriteKeys) && ctx.require_unlimited("").is_ok(),
            error,
            now: st.clock().now(),
        },
    ))
}

pub(crate) async fn create(State(st): State<AppState>, s: SignedIn, form: Form) -> PageResult {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::WriteKeys>()?;
    let mut body = json!({ "id": form.get("id").unwrap_or("").trim() });
    if let Some(n) = form.text("name") {
        body["name"] = json!(n);
    }
    let input: service::CreateIdentity = parse_input(body)?;
    match service::create_identity(&st.control, &who, input).await {
        Ok(i) => Ok(redirect(&format!(
            "/identities/{}?done=created",
            ui::segment(&i.id)
        ))),
        Err(e) if e.code.is_request_error() && e.code != crate::error::ErrorCode::Forbidden => {
            let page = render_list(&st, &s, None, Some(&e.message)).await?;
            Ok((StatusCode::BAD_REQUEST, page).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn detail(
    State(st): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    q: QueryMap,
) -> PageResult<Markup> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ReadKeys>()?;
    let identity = service::get_identity(st.records(), &who, &id).await?;
    let view = View::parse(q.get("usage"));
    let now = st.clock().now();
    let (from, to) = view.range(now);
    let (_, buckets) =
        service::identity_usage(st.records(), &who, &id, view.granularity(), from, to).await?;
    let mut keys = service::identity_keys(
        st.records(),
        &who,
        &id,
        None,
        Page {
            limit: 101,
            after: None,
        },
    )
    .await?;
    let more_keys = keys.len() > 100;
    keys.truncate(100);
    let notice = match q.get("done") {
        Some("created") => {
            Some("The identity was created. Every key whose owner is its id belongs to it.")
        }
        Some("disabled") => Some("The identity was disabled: its keys verify DISABLED."),
        Some("enabled") => {
            Some("The identity was enabled: its keys verify as their own state says.")
        }
        _ => None,
    };
    Ok(view::detail(
        &s,
        &view::IdentityPage {
            identity: &identity,
            keys: &keys,
            more_keys,
            usage: Usage::from_buckets(view, now, &buckets),
            view,
            may_write: s.may(Permission::WriteKeys) && ctx.require_unlimited("").is_ok(),
            notice,
            now,
        },
    ))
}

pub(crate) async fn set_enabled(
    State(st): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    form: Form,
) -> PageResult {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::WriteKeys>()?;
    let enabled = form.get("enabled") == Some("true");
    let patch: service::PatchIdentity = parse_input(json!({ "enabled": enabled }))?;
    service::update_identity(&st.control, &who, &id, patch).await?;
    let done = if enabled { "enabled" } else { "disabled" };
    Ok(redirect(&format!(
        "/identities/{}?done={done}",
        ui::segment(&id)
    )))
}
