//! The command line (SPEC §2): one function per command, each ending in an exit code.
//!
//! Errors are one clear line on stderr and a non-zero exit. Nothing secret is printed.
//! Exit codes: 0 success, 1 failure, 2 usage, 3 rotation overdue (`keys status`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::audit::{self, Actor};
pub use crate::bootstrap::{CliError, open_db, open_vault};
use crate::clock::{SystemClock, rfc3339};
use crate::config::{Config, LogFormat};
use crate::vault::rootkey;
use crate::vault::{RootKey, RootKeySource, Vault, VaultError};

/// Strongbox: a credential vault and OAuth broker for AI agents.
#[derive(Debug, Parser)]
#[command(name = "strongbox", version, about)]
pub struct Cli {
    /// Configuration file (default: strongbox.toml if present).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage the root key and key-encryption keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Inspect the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The provider catalogue.
    #[command(subcommand)]
    Providers(ProvidersCommand),
    /// Register agent services.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Validate configuration, providers, tools, policies and keys; non-zero exit with a
    /// clear message.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum AgentsCommand {
    /// Register an agent; its secret is printed once, alone on the last line. With
    /// `--jwks-file` it authenticates with `private_key_jwt` and has no secret.
    Add {
        name: String,
        /// A redirect URI for the authorization code flow (repeatable; https, or plain
        /// http to a loopback address).
        #[arg(long = "redirect-uri", value_name = "URI")]
        redirect_uris: Vec<String>,
        /// A JSON Web Key Set with the agent's public keys (ES256 / EdDSA).
        #[arg(long, value_name = "FILE")]
        jwks_file: Option<std::path::PathBuf>,
    },
    /// The registered agents.
    List,
    /// Remove an agent and every delegation to it.
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create the root key (development) and the first key-encryption key.
    Init,
    /// Key versions, state, age, records per version; exit 3 when rotation is overdue.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Make a new key-encryption key version primary.
    Rotate,
    /// Re-wrap every record still under an older version; online and resumable.
    Rewrap {
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Destroy an old version; refused while any record still uses it.
    Retire { version: i64 },
    /// Re-seal all key-encryption keys under a new root key.
    RotateRoot {
        /// Read the new root key from this file (base64 of 32 bytes).
        #[arg(long, value_name = "PATH")]
        new_key_file: Option<PathBuf>,
    },
    /// Open every record to prove it is readable (run before `retire`).
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// The provider catalogue and which providers are configured.
    List,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain end to end; non-zero exit on any break.
    Verify,
}

type CliResult = Result<ExitCode, CliError>;

/// Loads configuration for `cli`; separate so `main` can set up logging from it first.
pub fn load_config(cli: &Cli) -> Result<Config, CliError> {
    let config = Config::load(cli.config.as_deref())?;
    config.production_guards()?;
    Ok(config)
}

/// Sets up tracing on stderr in the configured format. `RUST_LOG` overrides the level.
pub fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    // Colours only for a terminal: a file or a log collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

/// Runs a parsed command.
pub async fn run(cli: Cli, config: Config) -> CliResult {
    match cli.command {
        Command::Serve => crate::http::serve::run(config).await,
        Command::Migrate => {
            open_db(&config).await?;
            say(format_args!("migrations applied"))
        }
        Command::Keys(cmd) => keys(cmd, &config).await,
        Command::Audit(AuditCommand::Verify) => {
            let db = open_db(&config).await?;
            let v = audit::verify(&db).await?;
            say(format_args!(
                "audit trail intact: {} events, head {}",
                v.events, v.head
            ))
        }
        Command::Providers(ProvidersCommand::List) => providers_list(&config),
        Command::Agents(cmd) => agents(cmd, &config).await,
        Command::Check => check(&config).await,
    }
}

async fn agents(cmd: AgentsCommand, config: &Config) -> CliResult {
    let db = open_db(config).await?;
    let agents = crate::agents::Agents::new(db, Arc::new(SystemClock));
    match cmd {
        AgentsCommand::Add {
            name,
            redirect_uris,
            jwks_file,
        } => {
            let registration = registration(redirect_uris, jwks_file.as_deref())?;
            let (agent, secret) = agents.add(&name, &registration, Actor::Cli).await?;
            let mut out = std::io::stdout().lock();
            match secret {
                Some(secret) => {
                    writeln!(
                        out,
                        "registered agent {} (id {}); its secret follows and is not shown again",
                        agent.name, agent.id
                    )?;
                    writeln!(out, "{}", secret.reveal())?;
                }
                None => writeln!(
                    out,
                    "registered agent {} (id {}); it authenticates with private_key_jwt",
                    agent.name, agent.id
                )?,
            }
            Ok(ExitCode::SUCCESS)
        }
        AgentsCommand::List => {
            let list = agents.list().await?;
            let mut out = std::io::stdout().lock();
            if list.is_empty() {
                writeln!(out, "no agents registered")?;
            }
            for a in list {
                writeln!(
                    out,
                    "{}\t{}\tcreated {}",
                    a.name,
                    a.id,
                    rfc3339(a.created_at)
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        AgentsCommand::Remove { name } => {
            agents.remove(&name, Actor::Cli).await?;
            say(format_args!("removed agent {name} and its delegations"))
        }
    }
}

/// What `agents add` registers besides the name, checked.
fn registration(
    redirect_uris: Vec<String>,
    jwks_file: Option<&std::path::Path>,
) -> Result<crate::agents::Registration, CliError> {
    if let Some(bad) = redirect_uris
        .iter()
        .find(|r| !crate::grants::valid_redirect_uri(r))
    {
        return Err(CliError(format!(
            "--redirect-uri {bad:?}: an absolute https URL (plain http only to a loopback address), no fragment"
        )));
    }
    let jwks = match jwks_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError(format!("--jwks-file {}: {e}", path.display())))?;
            crate::grants::check_jwks(&text)
                .map_err(|e| CliError(format!("--jwks-file {}: {e}", path.display())))?;
            Some(text)
        }
    };
    Ok(crate::agents::Registration {
        redirect_uris,
        jwks,
    })
}

async fn keys(cmd: KeysCommand, config: &Config) -> CliResult {
    let allow_generate = matches!(cmd, KeysCommand::Init);
    let db = open_db(config).await?;
    let vault = open_vault(config, db, allow_generate).await?;
    match cmd {
        KeysCommand::Init => match vault.init(Actor::Cli).await? {
            Some(v) => say(format_args!("created KEK version {v} (primary)")),
            None => say(format_args!("already initialized; nothing to do")),
        },
        KeysCommand::Status { json } => status(&vault, json).await,
        KeysCommand::Rotate => {
            let v = vault.rotate(Actor::Cli).await?;
            say(format_args!(
                "KEK version {v} is now primary; run `strongbox keys rewrap`"
            ))
        }
        KeysCommand::Rewrap { batch } => {
            let r = vault.rewrap(Actor::Cli, batch).await?;
            say(format_args!(
                "rewrapped {} records ({} already current)",
                r.rewrapped, r.skipped
            ))?;
            if r.failed.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            for (id, why) in &r.failed {
                eprintln!("strongbox: record {id} could not be re-wrapped: {why}");
            }
            Err(CliError(format!(
                "{} records could not be re-wrapped",
                r.failed.len()
            )))
        }
        KeysCommand::Retire { version } => {
            vault.retire(Actor::Cli, version).await?;
            say(format_args!(
                "KEK version {version} retired; its key material is destroyed"
            ))
        }
        KeysCommand::RotateRoot { new_key_file } => rotate_root(config, &vault, new_key_file).await,
        KeysCommand::Verify => {
            vault.check_ready().await?;
            let r = vault.verify_all().await?;
            for (id, why) in &r.failed {
                eprintln!("strongbox: record {id} does not open: {why}");
            }
            if r.failed.is_empty() {
                say(format_args!("all {} records open", r.ok))
            } else {
                Err(CliError(format!(
                    "{} of {} records do not open",
                    r.failed.len(),
                    r.ok + r.failed.len() as u64
                )))
            }
        }
    }
}

async fn status(vault: &Vault, json: bool) -> CliResult {
    let s = vault.status().await?;
    if json {
        say(format_args!("{}", s.to_json()))?;
    } else {
        say(format_args!(
            "{:>7}  {:<12}  {:<20}  {:>10}  {:>10}",
            "VERSION", "STATE", "CREATED", "RECORDS", "WRAPS"
        ))?;
        for v in &s.versions {
            say(format_args!(
                "{:>7}  {:<12}  {:<20}  {:>10}  {:>10}",
                v.version,
                v.state,
                rfc3339(v.created_at),
                v.records,
                v.wraps
            ))?;
        }
        if s.rotation_due {
            say(format_args!("rotation is due: run `strongbox keys rotate`"))?;
        }
    }
    Ok(if s.rotation_due {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

async fn rotate_root(config: &Config, vault: &Vault, new_key_file: Option<PathBuf>) -> CliResult {
    let file_mode = std::env::var_os("STRONGBOX_ROOT_KEY").is_none();
    let new_root = if let Ok(text) = std::env::var("STRONGBOX_NEW_ROOT_KEY") {
        RootKey::new(
            rootkey::parse(&text, "STRONGBOX_NEW_ROOT_KEY")?,
            RootKeySource::Env,
        )
    } else if let Some(path) = &new_key_file {
        rootkey::load_file(path, config.https)?
            .ok_or_else(|| CliError(format!("{} does not exist", path.display())))?
    } else if file_mode {
        let path = config.keys_dir.join(rootkey::ROOT_KEY_FILE);
        RootKey::new(
            crate::crypto::Key32::generate().map_err(VaultError::from)?,
            RootKeySource::File(path),
        )
    } else {
        return Err(CliError(
            "the root key comes from STRONGBOX_ROOT_KEY: give the new one in STRONGBOX_NEW_ROOT_KEY or --new-key-file".into(),
        ));
    };
    if new_root.id() == vault.root_key_id() {
        return Err(CliError(
            "the new root key is the same as the current one".into(),
        ));
    }
    // In file mode the new key is on disk before any KEK is sealed under it.
    if file_mode {
        rootkey::write_pending(&config.keys_dir, new_root.key())?;
    }
    let n = vault.rotate_root(Actor::Cli, &new_root).await?;
    if file_mode {
        let path = rootkey::install_pending(&config.keys_dir)?;
        say(format_args!(
            "re-sealed {n} KEKs under root key {}; installed {}",
            new_root.id(),
            path.display()
        ))?;
    } else {
        say(format_args!(
            "re-sealed {n} KEKs under root key {}; set STRONGBOX_ROOT_KEY to the new key on every instance",
            new_root.id()
        ))?;
    }
    say(format_args!(
        "restart running instances so they load the new root key"
    ))
}

fn providers_list(config: &Config) -> CliResult {
    let providers = crate::providers::resolve(config)?;
    say(format_args!(
        "{:<12}  {:<6}  {:<9}  {:<10}  {:<5}  DEFAULT SCOPES",
        "NAME", "KIND", "SOURCE", "CONFIGURED", "LOGIN"
    ))?;
    for p in providers.values() {
        say(format_args!(
            "{:<12}  {:<6}  {:<9}  {:<10}  {:<5}  {}",
            p.name,
            p.kind.as_str(),
            if p.builtin { "catalogue" } else { "config" },
            if p.configured { "yes" } else { "no" },
            if p.login { "yes" } else { "no" },
            p.scopes.join(&p.scope_separator)
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn check(config: &Config) -> CliResult {
    let providers = crate::providers::resolve(config)?;
    let tools = crate::tools::resolve(config)?;
    for (name, t) in &config.tools {
        if !providers.contains_key(&t.provider) {
            return Err(CliError(format!(
                "tools.\"{name}\": provider {:?} is not in the catalogue or the config",
                t.provider
            )));
        }
    }
    let policies = crate::policy::Policies::load(&config.policies_dir)?;
    for (name, p) in &config.providers {
        p.client_secret(name)?;
    }
    let env = std::env::var("STRONGBOX_ROOT_KEY").ok();
    let root = rootkey::load(&config.keys_dir, env.as_deref(), config.https)?;
    if root.is_none() && config.https {
        return Err(crate::bootstrap::missing_root_key(config).into());
    }
    say(format_args!(
        "configuration is valid: {} providers configured, {} tools, {} policies from {} files",
        providers.values().filter(|p| p.configured).count(),
        tools.len(),
        policies.len(),
        policies.files().len()
    ))
}

fn say(args: std::fmt::Arguments<'_>) -> CliResult {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{args}")?;
    Ok(ExitCode::SUCCESS)
}
