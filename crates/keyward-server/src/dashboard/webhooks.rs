//! Webhooks, for admins: the subscriptions with their recent deliveries, create (the signing
//! secret shown once) and delete. The same permission as the API (`ManageTokens`, and a context
//! not limited to keyspaces); every change goes through [`service::create_webhook`] and
//! [`service::delete_webhook`]. The markup is in [`super::views::webhooks`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyward_store::Page;
use maud::Markup;

use super::data::{all_keyspaces, keyspace_names};
use super::ui;
use super::views::webhooks::{self as view, HookForm, WebhooksPage};
use super::{redirect, Form, PageError, PageResult, QueryMap, SignedIn};
use crate::authz::{self, Allowed, ManageTokens};
use crate::error::ErrorCode;
use crate::service;
use crate::state::AppState;

/// Delivery attempts shown under each webhook.
const ATTEMPTS_SHOWN: i64 = 8;

// The form's values live with its markup (`views::webhooks`); reading them is the handlers' part.
impl HookForm {
    fn from_form(f: &Form) -> Self {
        HookForm {
            url: f.get("url").unwrap_or("").trim().to_string(),
            events: f
                .0
                .iter()
                .filter(|(k, _)| k == "events")
                .map(|(_, v)| v.clone())
                .collect(),
            keyspace_id: f.get("keyspace_id").unwrap_or("").trim().to_string(),
        }
    }
}

/// The webhooks page with `form` in its create form (and `error` over it).
async fn webhooks_page<'a>(
    st: &AppState,
    who: &Allowed<'_, ManageTokens>,
    notice: Option<&'static str>,
    form: &'a HookForm,
    error: Option<&'a str>,
) -> PageResult<WebhooksPage<'a>> {
    let now = st.clock().now();
    let hooks = service::list_webhooks(
        st.records(),
        who,
        &Page {
            limit: 500,
            after: None,
        },
    )
    .await?;
    let kss = all_keyspaces(st, who.ctx()).await?;
    let spaces = keyspace_names(&kss);
    let mut cards = Vec::with_capacity(hooks.len());
    for h in hooks {
        let attempts = service::list_deliveries(
            st.records(),
            who,
            &service::webhook_id(&h.id)?,
            &Page {
                limit: ATTEMPTS_SHOWN,
                after: None,
            },
        )
        .await?;
        cards.push((h, attempts));
    }
    Ok(WebhooksPage {
        notice,
        hooks: cards,
        keyspaces: kss,
        keyspace_names: spaces,
        form,
        error,
        now,
    })
}

pub(crate) async fn list(
    State(st): State<AppState>,
    s: SignedIn,
    q: QueryMap,
) -> PageResult<Markup> {
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ManageTokens>()?;
    let notice = match q.get("done") {
        Some("deleted") => Some("The webhook was deleted."),
        Some("created") => Some(
            "The webhook was created. Its deliveries appear below as subscribed events happen.",
        ),
        _ => None,
    };
    let form = HookForm::default();
    let page = webhooks_page(&st, &who, notice, &form, None).await?;
    Ok(view::list(&s, &page))
}

pub(crate) async fn create(State(st): State<AppState>, s: SignedIn, form: Form) -> PageResult {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ManageTokens>()?;
    let v = HookForm::from_form(&form);
    let input = service::CreateWebhook {
        url: v.url.clone(),
        events: v.events.clone(),
        keyspace_id: (!v.keyspace_id.is_empty()).then(|| v.keyspace_id.clone()),
    };
    let (hook, secret) = match service::create_webhook(&st.control, &who, input).await {
        Ok(r) => r,
        Err(e) if e.code.is_request_error() && e.code != ErrorCode::Forbidden => {
            let page = webhooks_page(&st, &who, None, &v, Some(&e.message)).await?;
            let page = view::list(&s, &page);
            return Ok((crate::http::error::status(e.code), page).into_response());
        }
        Err(e) => return Err(e.into()),
    };
    Ok(ui::no_store(
        view::created(&s, &hook, &secret).into_response(),
    ))
}

pub(crate) async fn delete(
    State(st): State<AppState>,
    s: SignedIn,
    Path(id): Path<String>,
    form: Form,
) -> PageResult<Response> {
    s.check_csrf(&form)?;
    let ctx = s.ctx();
    let who = ctx.allow::<authz::ManageTokens>()?;
    if form.get("confirm") != Some("yes") {
        return Err(PageError::Failed(
            StatusCode::BAD_REQUEST,
            "Confirm the deletion by ticking the box.".into(),
        ));
    }
    service::delete_webhook(&st.control, &who, &service::webhook_id(&id)?).await?;
    Ok(redirect("/webhooks?done=deleted"))
}
