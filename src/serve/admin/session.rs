//! The console's sessions: a person logs in with the admin token once and gets a random session
//! id in a cookie (`HttpOnly; SameSite=Strict`), kept here in memory with an expiry; each
//! session has its own CSRF token, which every state-changing request it authorizes must carry.
//! A restart logs everyone out. Wrong tokens are slowed down (one guess a second, all clients
//! together).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cookie that carries the session id.
pub(crate) const COOKIE: &str = "zdmap_session";

/// How long a session lasts after login.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Sessions kept at most; past it the one that ends first goes.
const MAX_SESSIONS: usize = 256;

/// How long a wrong token holds the login door shut.
const WRONG_TOKEN_DELAY: Duration = Duration::from_secs(1);

/// A logged-in person.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    /// The token each form and `fetch` of this session carries.
    pub(crate) csrf: String,
    ends: Instant,
}

/// The sessions of one admin listener.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<String, Session>>,
    /// Held while a wrong token's delay runs, so guesses go one at a time.
    door: tokio::sync::Mutex<()>,
}

impl Sessions {
    /// A new session: its id (for the cookie) and itself.
    pub(crate) fn open(&self) -> (String, Session) {
        let id = random_hex();
        let session = Session {
            csrf: random_hex(),
            ends: Instant::now() + LIFETIME,
        };
        let mut live = crate::base::sync::lock(&self.live);
        let now = Instant::now();
        live.retain(|_, s| s.ends > now);
        if live.len() >= MAX_SESSIONS
            && let Some(first) = live
                .iter()
                .min_by_key(|(_, s)| s.ends)
                .map(|(id, _)| id.clone())
        {
            live.remove(&first);
        }
        live.insert(id.clone(), session.clone());
        (id, session)
    }

    /// The live session of `id`, if any.
    pub(crate) fn get(&self, id: &str) -> Option<Session> {
        let live = crate::base::sync::lock(&self.live);
        live.get(id).filter(|s| s.ends > Instant::now()).cloned()
    }

    pub(crate) fn close(&self, id: &str) {
        crate::base::sync::lock(&self.live).remove(id);
    }

    /// Waits out the delay of a wrong token, one guess at a time.
    pub(crate) async fn wrong_token(&self) {
        let _door = self.door.lock().await;
        tokio::time::sleep(WRONG_TOKEN_DELAY).await;
    }
}

/// The session id in a `Cookie` header's value.
pub(crate) fn cookie_value(cookies: &str) -> Option<&str> {
    cookies
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` value that keeps `id` (or, with `None`, removes the cookie).
pub(crate) fn set_cookie(id: Option<&str>) -> String {
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
            LIFETIME.as_secs()
        ),
        None => format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    }
}

/// Whether two tokens are the same, in time that does not depend on where they differ.
pub(crate) fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn random_hex() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_until_closed() {
        let sessions = Sessions::default();
        let (id, session) = sessions.open();
        let header = format!("other=1; {}", set_cookie(Some(&id)));
        let found = cookie_value(&header).expect("the cookie");
        assert_eq!(found, id);
        assert_eq!(sessions.get(found).map(|s| s.csrf), Some(session.csrf));
        assert!(sessions.get("not-a-session").is_none());
        sessions.close(&id);
        assert!(sessions.get(&id).is_none());
        assert!(set_cookie(None).contains("Max-Age=0"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::default();
        let first = sessions.open().0;
        for _ in 0..MAX_SESSIONS {
            sessions.open();
        }
        assert!(sessions.get(&first).is_none(), "the oldest went");
        assert_eq!(crate::base::sync::lock(&sessions.live).len(), MAX_SESSIONS);
    }
}
