//! The markup of the sign-in and first-run setup pages ([`crate::dashboard::auth`]): bare pages,
//! without navigation, posted before a session exists.

use maud::{html, Markup};

use crate::dashboard::ui::{bare_page, error_box};

/// The sign-in form.
pub(crate) struct LoginForm<'a> {
    /// The form's CSRF token, derived from the pre-session cookie.
    pub(crate) csrf: &'a str,
    /// Where to go after signing in (a local path).
    pub(crate) next: &'a str,
    pub(crate) email: &'a str,
    pub(crate) error: Option<&'a str>,
}

/// The setup form that creates the first admin.
pub(crate) struct SetupForm<'a> {
    /// The form's CSRF token, derived from the pre-session cookie.
    pub(crate) csrf: &'a str,
    /// The one-time setup token from the link.
    pub(crate) token: &'a str,
    pub(crate) email: &'a str,
    pub(crate) error: Option<&'a str>,
}

pub(crate) fn login(m: &LoginForm) -> Markup {
    bare_page(
        "Sign in",
        html! {
            div.card.narrow.auth {
                h1 { "Sign in" }
                p.sub { "Manage API keys, policies and the audit trail." }
                (error_box(m.error))
                form method="post" action="/login" {
                    input type="hidden" name="csrf" value=(m.csrf);
                    input type="hidden" name="next" value=(m.next);
                    label for="email" { "Email" }
                    input #email type="email" name="email" value=(m.email) autocomplete="username" required autofocus;
                    label for="password" { "Password" }
                    input #password type="password" name="password" autocomplete="current-password" required;
                    button.primary.wide type="submit" { "Sign in" }
                }
            }
        },
    )
}

/// The sign-in page of an installation without users.
pub(crate) fn no_users() -> Markup {
    bare_page(
        "Set up keyward",
        html! {
            div.card.narrow {
                h1 { "No users yet" }
                p { "This installation has no dashboard users. Open the one-time setup link that "
                    code { "keyward serve" } " printed when it started, or create a user on the server:" }
                pre.cmd { "keyward user create --email you@example.com --role admin" }
            }
        },
    )
}

pub(crate) fn setup(m: &SetupForm) -> Markup {
    bare_page(
        "Create the first admin",
        html! {
            div.card.narrow.auth {
                h1 { "Welcome to keyward" }
                p.sub { "Create the first administrator. This link works once and expires within an hour." }
                (error_box(m.error))
                form method="post" action="/setup" {
                    input type="hidden" name="csrf" value=(m.csrf);
                    input type="hidden" name="token" value=(m.token);
                    label for="email" { "Email" }
                    input #email type="email" name="email" value=(m.email) autocomplete="username" required autofocus;
                    label for="password" { "Password" }
                    input #password type="password" name="password" minlength="12" autocomplete="new-password" required;
                    p.hint { "At least 12 characters. A passphrase of several words is easiest to remember." }
                    label for="confirm" { "Repeat the password" }
                    input #confirm type="password" name="confirm" minlength="12" autocomplete="new-password" required;
                    button.primary.wide type="submit" { "Create admin and sign in" }
                }
            }
        },
    )
}

/// A setup link that expired or was used.
pub(crate) fn setup_gone() -> Markup {
    bare_page(
        "Setup link not valid",
        html! {
            div.card.narrow {
                h1 { "This setup link is not valid" }
                p { "It has expired or was already used. Restart " code { "keyward serve" }
                    " on an empty database for a new link, or create a user on the server:" }
                pre.cmd { "keyward user create --email you@example.com --role admin" }
                p { a.button.secondary href="/login" { "Go to sign-in" } }
            }
        },
    )
}
