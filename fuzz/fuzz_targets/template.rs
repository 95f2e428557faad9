//! Template compilation: a string as a text template and as a lone expression.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: zdmap_fuzz::catch_stack_overflows(), |data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let mut templates = zdmap::mapping::template::Templates::new();
    if let Ok(text) = templates.text(source) {
        let _ = templates.variables(&text);
    }
    let _ = templates.expression(source);
});
