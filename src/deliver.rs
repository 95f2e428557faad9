//! Delivery to Zendesk (being written).

/// Where requests go: Zendesk itself (the default), an explicit URL, or the built-in emulator.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TargetArgs {
    /// Send to this base URL instead of https://{subdomain}.zendesk.com (e.g. a local emulator).
    #[arg(long, value_name = "URL", env = "ZDMAP_ZENDESK_URL")]
    pub zendesk_url: Option<String>,
    /// Start the built-in Zendesk emulator in-process and send to it.
    #[arg(long, conflicts_with = "zendesk_url")]
    pub emulator: bool,
}
