//! The config loader on a mappings directory made from bytes: the parts between NUL bytes are
//! `destination.yaml`, then one action file each.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("zdmap-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        dir
    })
}

fuzz_target!(init: zdmap_fuzz::catch_stack_overflows(), |data: &[u8]| {
    let dir = dir();
    for entry in std::fs::read_dir(dir).expect("the temp dir").flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    for (i, part) in data.split(|b| *b == 0).take(8).enumerate() {
        let name = match i {
            0 => "destination.yaml".to_owned(),
            n => format!("action{n}.yaml"),
        };
        std::fs::write(dir.join(name), part).expect("write a file");
    }
    let _ = zdmap::mapping::config::Config::load(dir, &[]);
});
