//! Logging in to the console: a form takes the admin token and answers a session cookie; a
//! wrong token gets the form again after a delay (one guess a second, see
//! [`super::super::session`]); logging out ends the session.

use super::super::session;
use super::super::{Access, AdminState};
use crate::queue::Queue;
use axum::Form;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{Value, json};
use std::sync::Arc;

fn page(problem: Option<&str>) -> Value {
    json!({
        "page": "login",
        "problem": problem,
        "version": env!("CARGO_PKG_VERSION"),
    })
}

pub(super) async fn form<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    headers: HeaderMap,
) -> Response {
    if state.access(&headers).is_some() {
        return Redirect::to("/").into_response();
    }
    state.pages.render("login.html", page(None))
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    token: String,
}

pub(super) async fn login<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    Form(form): Form<LoginForm>,
) -> Response {
    if !state.is_token(&form.token) {
        tracing::warn!("a wrong admin token was given at the console's login");
        state.sessions.wrong_token().await;
        let mut answer = state
            .pages
            .render("login.html", page(Some("That is not the admin token.")));
        *answer.status_mut() = StatusCode::UNAUTHORIZED;
        return answer;
    }
    let (id, _) = state.sessions.open();
    (
        [(header::SET_COOKIE, session::set_cookie(Some(&id)))],
        Redirect::to("/"),
    )
        .into_response()
}

pub(super) async fn logout<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    Extension(_access): Extension<Access>,
    headers: HeaderMap,
) -> Response {
    for id in headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(session::cookie_value)
    {
        state.sessions.close(id);
    }
    (
        [(header::SET_COOKIE, session::set_cookie(None))],
        Redirect::to("/login"),
    )
        .into_response()
}
