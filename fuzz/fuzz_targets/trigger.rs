//! The trigger parser, and matching what it parsed against a fixed event.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: zdmap_fuzz::catch_stack_overflows(), |data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(trigger) = zdmap::mapping::trigger::Trigger::parse(source) {
        let event = serde_json::json!({
            "type": "track", "event": "Ticket Created", "userId": "u1",
            "properties": {"n": 1, "tags": ["a", "b"], "x": null}, "traits": {"email": "a@b.co"}
        });
        let _ = trigger.matches(&event);
    }
});
