//! The emulator's state as the tests read it (`Emulator::state()`).

use serde_json::Value;
use std::collections::HashSet;

/// How many `what` (`users`, `tickets`, `events`...) `state` holds.
pub fn count(state: &Value, what: &str) -> usize {
    state[what].as_array().map_or(0, Vec::len)
}

/// Checks that `state` holds `n` tickets, each external id once: nothing duplicated, nothing
/// lost.
pub fn each_ticket_once(state: &Value, n: usize) {
    let ids: Vec<&str> = state["tickets"]
        .as_array()
        .expect("tickets")
        .iter()
        .filter_map(|t| t["external_id"].as_str())
        .collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), n, "tickets created: nothing duplicated");
    assert_eq!(unique.len(), n, "each external id once: nothing lost");
}

/// The `properties.n` of every user event `state` holds, sorted: the tests number their tracks
/// so that a lost or doubled one shows.
pub fn event_numbers(state: &Value) -> Vec<u64> {
    let mut ns: Vec<u64> = state["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["properties"]["n"].as_u64())
        .collect();
    ns.sort_unstable();
    ns
}

/// Waits (up to a minute) until `emu` holds a ticket whose subject is `subject`.
pub async fn ticket_created(emu: &zdmap::emulator::Emulator, subject: &str) {
    super::wait::eventually(
        &format!("the ticket {subject:?} is created"),
        std::time::Duration::from_secs(60),
        async || {
            emu.state()["tickets"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["subject"] == subject))
        },
    )
    .await;
}
