//! `zdmap healthcheck`: the probe of a container image that has no curl.

use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct HealthcheckArgs {
    /// The URL to ask.
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:8088/healthz",
        env = "ZDMAP_HEALTHCHECK_URL"
    )]
    pub url: String,
    /// How long to wait for the answer.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = super::serve::parse_duration)]
    pub timeout: Duration,
}

/// Exit 0 when `--url` answers 200, else 1 with the reason on standard error.
pub fn healthcheck(args: &HealthcheckArgs) -> ExitCode {
    super::block_on(async {
        let answer = match reqwest::Client::builder().timeout(args.timeout).build() {
            Ok(client) => client.get(&args.url).send().await,
            Err(e) => {
                super::say(format!("error: cannot build the HTTP client: {e}"));
                return ExitCode::from(1);
            }
        };
        match answer {
            Ok(r) if r.status() == reqwest::StatusCode::OK => ExitCode::SUCCESS,
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                super::say(format!(
                    "unhealthy: {} answered {status}: {}",
                    args.url,
                    body.trim()
                ));
                ExitCode::from(1)
            }
            Err(e) => {
                super::say(format!("unhealthy: {}: {e}", args.url));
                ExitCode::from(1)
            }
        }
    })
}
