//! The built-in emulator with no rate limit, and delivery set up to it with the shipped mappings.

use std::path::Path;
use std::sync::Arc;
use zdmap::config::Config;
use zdmap::deliver::TargetArgs;
use zdmap::deliver::setup::{ConnectOptions, Destination, connect};
use zdmap::emulator::{Emulator, EmulatorOptions};

/// The setting that lifts zdmap's own request budget.
pub const UNLIMITED: &str = "requests_per_minute=0";

/// A fresh emulator and a destination delivering to it.
pub async fn emulated_destination() -> (Emulator, Destination) {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    let config = Config::load(Path::new("mappings"), &[UNLIMITED.to_owned()]).expect("mappings");
    let target = TargetArgs {
        zendesk_url: Some(emu.url()),
        emulator: false,
    };
    let dest = connect(Arc::new(config), &target, ConnectOptions::default())
        .await
        .expect("connect");
    (emu, dest)
}
