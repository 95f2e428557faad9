//! Connecting a loaded config to its destination: target, credentials, client, budget, executor.
//!
//! `zdmap send` and `zdmap serve` both start here. The target is Zendesk at the configured
//! subdomain, an explicit `--zendesk-url`, or the built-in emulator started in-process
//! (`--emulator`), which is kept alive as long as the returned [`Destination`].

use crate::deliver::auth::{ChainStore, OAuthRequest, StoreError, scopes};
use crate::deliver::{
    Budget, Client, ClientOptions, CredentialNames, CredentialVars, Credentials, CredentialsError,
    Executor, LookupCache, RetryPolicy, Stats, Target, TargetChoice, TargetOverride, Transport,
};
use crate::mapping::config::Config;
use std::sync::Arc;

/// A ready destination: the executor and, with `--emulator`, the emulator it sends to.
pub struct Destination {
    pub executor: Arc<Executor>,
    pub stats: Arc<Stats>,
    pub emulator: Option<crate::emulator::Emulator>,
    /// The variables its credentials were read from in place of its mappings' (read again on
    /// reload).
    pub credential_names: CredentialNames,
}

/// Why a destination could not be set up. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Target(#[from] crate::deliver::TargetError),
    #[error("{0}")]
    Credentials(#[from] crate::deliver::CredentialsError),
    #[error("{0}")]
    TokenStore(#[from] StoreError),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("cannot start the emulator: {0}")]
    Emulator(std::io::Error),
}

/// The environment variables that hold credentials, as `destination.yaml` names them, and the
/// scopes an OAuth grant asks for (`auth.oauth.scope`, else what the mappings need).
pub fn credential_vars(config: &Config) -> CredentialVars {
    let mut vars = CredentialVars::default();
    if let Some(a) = &config.auth.api_token {
        vars.email = a.email_env.clone();
        vars.api_token = a.token_env.clone();
    }
    if let Some(o) = &config.auth.oauth_token {
        vars.oauth_token = o.token_env.clone();
    }
    let oauth = config.auth.oauth.as_ref();
    if let Some(o) = oauth {
        vars.client_id = o.client_id_env.clone();
        vars.client_secret = o.client_secret_env.clone();
    }
    vars.oauth = OAuthRequest {
        scope: oauth
            .and_then(|o| o.scope.clone())
            .unwrap_or_else(|| scopes::default_scope(&scopes::needs(config))),
        lifetime: oauth.and_then(|o| o.access_token_lifetime),
    };
    vars
}

/// The credentials to send with: the refresh-token chain in `token_store` when one is there,
/// else what the environment holds (else, where allowed, the emulator's placeholder).
pub async fn credentials(
    vars: &CredentialVars,
    token_store: Option<&Arc<dyn ChainStore>>,
    allow_placeholder: bool,
) -> Result<Credentials, SetupError> {
    if let Some(store) = token_store
        && store.read().await?.is_some()
    {
        return Ok(Credentials::chain(store.clone(), vars)?);
    }
    Ok(Credentials::from_env_or_placeholder(
        vars,
        allow_placeholder,
    )?)
}

/// The credentials read again for a reload: a chain stays the chain (its client secret read
/// again); the others come from the environment as at start.
pub fn reread_credentials(
    config: &Config,
    names: &CredentialNames,
    current: &Credentials,
    allow_placeholder: bool,
) -> Result<Credentials, CredentialsError> {
    let vars = names.apply(credential_vars(config));
    match current {
        Credentials::OAuthChain(chain) => Credentials::chain(chain.store.clone(), &vars),
        _ => Credentials::from_env_or_placeholder(&vars, allow_placeholder),
    }
}

/// Says at start which credentials are in use, and warns about API tokens' end.
fn announce(credentials: &Credentials) {
    tracing::info!(credentials = %credentials.describe(), "Zendesk credentials");
    if credentials.is_api_token() {
        tracing::warn!(
            "Zendesk deactivates every API token on {}: move to OAuth before then (README, \"Connecting to Zendesk\")",
            crate::deliver::auth::API_TOKENS_END
        );
    }
}

/// How requests are sent: timeouts and retry backoff (defaults suit Zendesk).
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    pub client: ClientOptions,
    pub retry: RetryPolicy,
    /// With the built-in emulator: where it writes its state when it goes away.
    pub emulator_final_state: Option<std::path::PathBuf>,
    /// Where a refresh-token chain from `zdmap auth login` is looked for.
    pub token_store: Option<Arc<dyn ChainStore>>,
    /// The variables this destination's credentials are read from, in place of those of
    /// `destination.yaml` (one destination of several, each with an account of its own).
    pub credential_names: CredentialNames,
}

/// The HTTP client for a config's target (with the credentials its `auth` names, or those of
/// [`ConnectOptions::credential_names`] in their place) and, with
/// `--emulator`, the emulator it sends to, kept alive by the caller.
pub async fn open_client(
    config: &Config,
    target: &TargetOverride,
    options: &ConnectOptions,
) -> Result<(Client, Option<crate::emulator::Emulator>), SetupError> {
    let (target, emulator) = match Target::resolve(target, config.setting_str("subdomain"))? {
        TargetChoice::Remote(t) => (t, None),
        TargetChoice::Emulator => {
            // An account with bulk user imports on (Zendesk enables them on request), so the
            // first run ends without a refusal; `zdmap emulator` keeps Zendesk's default.
            let emulator = crate::emulator::Emulator::start(crate::emulator::EmulatorOptions {
                final_state: options.emulator_final_state.clone(),
                bulk_import: true,
                ..crate::emulator::EmulatorOptions::default()
            })
            .await
            .map_err(SetupError::Emulator)?;
            (Target::from_url(&emulator.url())?, Some(emulator))
        }
    };
    let allow_placeholder = emulator.is_some() || target.allows_placeholder_credentials();
    let credentials = credentials(
        &options.credential_names.apply(credential_vars(config)),
        options.token_store.as_ref(),
        allow_placeholder,
    )
    .await?;
    announce(&credentials);
    let client = Client::new(target, credentials, options.client.clone())
        .map_err(|e| SetupError::Client(e.to_string()))?;
    Ok((client, emulator))
}

/// Sets up delivery for a config and a target choice.
pub async fn connect(
    config: Arc<Config>,
    target: &TargetOverride,
    options: ConnectOptions,
) -> Result<Destination, SetupError> {
    let (client, emulator) = open_client(&config, target, &options).await?;
    let credential_names = options.credential_names.clone();
    // The built-in emulator is not paced unless asked: it has no account limit to respect.
    let paced = emulator.is_none() || config.overridden.iter().any(|n| n == "requests_per_minute");
    let rpm = config
        .setting_u64("requests_per_minute")
        .and_then(|r| u32::try_from(r).ok())
        .filter(|r| *r > 0 && paced);
    let stats = Arc::new(Stats::new());
    let transport = Transport::new(
        client,
        Arc::new(Budget::new(rpm)),
        options.retry,
        stats.clone(),
    );
    let executor = Arc::new(Executor::new(
        config,
        transport,
        Arc::new(LookupCache::new()),
    ));
    Ok(Destination {
        executor,
        stats,
        emulator,
        credential_names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn budget_with(set: &[&str]) -> Option<u32> {
        let mappings = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        let config = Config::load(&mappings, &set).expect("mappings");
        let target = TargetOverride {
            zendesk_url: None,
            emulator: true,
        };
        let destination = connect(Arc::new(config), &target, ConnectOptions::default())
            .await
            .expect("connect");
        destination
            .executor
            .transport()
            .budget()
            .requests_per_minute()
    }

    #[tokio::test]
    async fn the_built_in_emulator_is_paced_only_when_asked() {
        assert_eq!(budget_with(&[]).await, None);
        assert_eq!(budget_with(&["requests_per_minute=120"]).await, Some(120));
    }
}
