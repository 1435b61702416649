//! Who may do what: the one door of every rule about the acting party.
//!
//! Every front end (the HTTP API, the dashboard, the command line, and any added later) turns
//! its caller into a [`Ctx`]: the actor, its [`Role`] and the keyspaces it is limited to. The
//! control plane's functions ([`crate::service`], `reports`, [`crate::accounts`]) do
//! not take a bare context: each takes an [`Allowed`] proof of the right it needs, and the only
//! way to get one is [`Ctx::allow`], which applies the role matrix and, for the rights that
//! cover the whole installation, the keyspace limit. A new front end therefore cannot call a
//! control-plane function without passing the same check as the API; the compiler refuses it.
//!
//! What the check does not decide, the function does, from the same `Ctx`: whether an object
//! lies inside the context's keyspaces ([`Ctx::sees`], a 404 outside them) and whether an
//! action needs a context that is not limited to keyspaces ([`Ctx::require_unlimited`]).

use std::marker::PhantomData;

use keyward_core::id::new_id;
use keyward_core::kinds::{AuditAction, TargetType};
use keyward_core::model::{Actor, Permission, Role};
use keyward_core::time::Timestamp;
use keyward_store::NewEvent;
use serde_json::Map;

use crate::error::{Error, Result};

/// Who is acting, with which role, and within which keyspaces.
#[derive(Clone, Debug)]
pub struct Ctx {
    // The fields are the crate's: another crate builds a context only with
    // [`Ctx::operator`] (whoever holds the database), never with a role of its choosing.
    pub(crate) actor: Actor,
    /// What the actor may do (the matrix of [`Role::may`]).
    pub(crate) role: Role,
    pub(crate) request_id: Option<String>,
    pub(crate) ip: Option<String>,
    /// The keyspaces a limited token may act in; `None`: all.
    pub(crate) keyspaces: Option<Vec<String>>,
}

impl Ctx {
    /// Whoever holds the database itself (the command line's offline commands, tests): every
    /// right, no keyspace limit, as `admin`.
    pub fn operator(actor: Actor) -> Ctx {
        Ctx {
            actor,
            role: Role::Admin,
            request_id: None,
            ip: None,
            keyspaces: None,
        }
    }

    /// Checks the role (and, for rights over the whole installation, that the context is not
    /// limited to keyspaces) and hands out the proof the control plane's functions require.
    pub fn allow<R: Right>(&self) -> Result<Allowed<'_, R>> {
        if !self.role.may(R::PERMISSION) {
            return Err(Error::forbidden(format!(
                "role '{}' does not allow this",
                self.role.as_str()
            )));
        }
        if let Some(what) = R::UNLIMITED {
            self.require_unlimited(what)?;
        }
        witness::granted(R::PERMISSION);
        Ok(Allowed {
            ctx: self,
            right: PhantomData,
        })
    }

    /// Whether objects of keyspace `keyspace_id` exist for this context.
    pub fn sees(&self, keyspace_id: &str) -> bool {
        self.keyspaces
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|i| i == keyspace_id))
    }

    /// Refuses (403) a context limited to keyspaces.
    pub fn require_unlimited(&self, what: &str) -> Result<()> {
        match self.keyspaces {
            None => Ok(()),
            Some(_) => Err(Error::forbidden(format!(
                "{what} needs a token that is not limited to keyspaces"
            ))),
        }
    }

    /// An audit event by this actor, without changes yet.
    pub fn event(
        &self,
        now: Timestamp,
        action: AuditAction,
        target_type: TargetType,
        target_id: &str,
    ) -> NewEvent {
        NewEvent {
            id: new_id("evt", now),
            at: now,
            actor: self.actor.clone(),
            action,
            target_type,
            target_id: target_id.into(),
            reason: None,
            request_id: self.request_id.clone(),
            ip: self.ip.clone(),
            changes: Map::new(),
        }
    }
}

/// Proof that [`Ctx::allow`] granted right `R` to a context. It cannot be built elsewhere.
pub struct Allowed<'a, R: Right> {
    ctx: &'a Ctx,
    right: PhantomData<fn() -> R>,
}

impl<'a, R: Right> Allowed<'a, R> {
    pub fn ctx(&self) -> &'a Ctx {
        self.ctx
    }
}

/// One row of the role matrix, as a type.
pub trait Right: sealed::Sealed {
    const PERMISSION: Permission;
    /// `Some(what)`: the right covers the whole installation, so a context limited to
    /// keyspaces is refused (403) whatever its role.
    const UNLIMITED: Option<&'static str>;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! rights {
    ($($(#[$doc:meta])* $name:ident => $perm:ident, $unlimited:expr;)*) => {$(
        $(#[$doc])*
        pub enum $name {}
        impl sealed::Sealed for $name {}
        impl Right for $name {
            const PERMISSION: Permission = Permission::$perm;
            const UNLIMITED: Option<&'static str> = $unlimited;
        }
    )*};
}

rights! {
    /// Verify keys when the server requires a token for it (`verifier`, `admin`).
    Verify => Verify, None;
    /// Read keyspaces, keys, usage and anomalies (every role but `verifier`).
    ReadKeys => ReadKeys, None;
    /// Create, update, rotate and revoke keys (`admin`, `manager`).
    WriteKeys => WriteKeys, None;
    /// Update keyspaces and their policies (`admin`).
    WriteKeyspaces => WriteKeyspaces, None;
    /// Create keyspaces (`admin`; not limited to keyspaces): a row of the matrix with the
    /// limit of the installation-wide rights, so a limited token is refused before its body is
    /// read, like token and webhook creation.
    CreateKeyspaces => WriteKeyspaces, Some("creating keyspaces");
    /// Read the audit trail and reports (`admin`, `auditor`; not limited to keyspaces).
    ReadAudit => ReadAudit, Some("reading the audit trail and reports");
    /// Manage tokens, webhooks and dashboard users (`admin`; not limited to keyspaces).
    ManageTokens => ManageTokens, Some("managing tokens, webhooks and users");
}

/// Which right a request was granted, for the test that proves every route reaches the door
/// (feature `test-hooks`; without it these are no-ops the compiler removes).
pub mod witness {
    use keyward_core::model::Permission;

    #[cfg(feature = "test-hooks")]
    tokio::task_local! {
        static GRANTED: std::cell::Cell<Option<Permission>>;
    }

    pub fn granted(_p: Permission) {
        #[cfg(feature = "test-hooks")]
        let _ = GRANTED.try_with(|g| {
            // The first grant is the route's gate; later ones are reads it makes on the way.
            if g.get().is_none() {
                g.set(Some(_p));
            }
        });
    }

    /// Runs `f` and returns the first right it was granted.
    #[cfg(feature = "test-hooks")]
    pub async fn observe<F: std::future::Future>(f: F) -> (F::Output, Option<Permission>) {
        GRANTED
            .scope(std::cell::Cell::new(None), async move {
                let out = f.await;
                (out, GRANTED.with(|g| g.get()))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_core::model::Actor;

    fn ctx(role: Role, keyspaces: Option<Vec<String>>) -> Ctx {
        Ctx {
            keyspaces,
            ..Ctx::operator(Actor::cli("t"))
        }
        .with_role(role)
    }

    impl Ctx {
        fn with_role(mut self, role: Role) -> Ctx {
            self.role = role;
            self
        }
    }

    #[test]
    fn a_right_is_granted_by_the_role_matrix_and_rights_over_everything_refuse_limited_contexts() {
        assert!(ctx(Role::Viewer, None).allow::<ReadKeys>().is_ok());
        assert!(ctx(Role::Viewer, None).allow::<WriteKeys>().is_err());
        assert!(ctx(Role::Verifier, None).allow::<ReadKeys>().is_err());
        assert!(ctx(Role::Verifier, None).allow::<Verify>().is_ok());
        let limited = Some(vec!["ks_1".to_string()]);
        assert!(ctx(Role::Admin, limited.clone())
            .allow::<WriteKeys>()
            .is_ok());
        let e = ctx(Role::Admin, limited.clone()).allow::<ReadAudit>().err();
        assert_eq!(e.map(|e| e.code), Some(crate::error::ErrorCode::Forbidden));
        assert!(ctx(Role::Admin, limited).allow::<ManageTokens>().is_err());
        assert!(ctx(Role::Admin, None).allow::<ManageTokens>().is_ok());
    }

    /// The front ends translate; only the control plane reads and writes the store. A handler
    /// that reached for the store would skip the door, so their sources may not name it.
    #[test]
    fn the_http_and_dashboard_front_ends_never_touch_the_store() {
        fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    files(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut checked = 0;
        for dir in ["http", "dashboard"] {
            let mut all = Vec::new();
            files(&root.join(dir), &mut all);
            for path in all {
                let text = std::fs::read_to_string(&path).unwrap();
                for (n, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or("");
                    for bad in [".store", "dyn Store", "StoreTx", "keyward_store::Store"] {
                        assert!(
                            !code.contains(bad),
                            "{}:{}: `{bad}` in a front end; go through crate::service",
                            path.display(),
                            n + 1
                        );
                    }
                }
                checked += 1;
            }
        }
        assert!(checked >= 10, "only {checked} files checked");
    }
}
