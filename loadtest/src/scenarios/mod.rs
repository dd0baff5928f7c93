//! One module per scenario. Each has `Opts`, an `async fn run(opts) ->
//! Result<Report>` and a `Report` that is `Serialize` (the `--json` form)
//! and `Display` (the human summary). All of them are bounded: counts are
//! given, every phase has a deadline, every network wait a timeout.

pub mod commands;
pub mod cross;
pub mod db_baseline;
pub mod db_check;
pub mod fanout;
pub mod hold;
pub mod storm;
pub mod tcp_floor;
pub mod users;

use crate::client::{Api, Connector, Sources, Target};
use crate::tls::Tls;
use std::path::PathBuf;

/// What every socket scenario needs to find the server and its users.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Base URL of the server, or several separated by commas (instances
    /// of one deployment); only loopback hosts are accepted. Sockets are
    /// spread round-robin over them; logins and merchant setup go to the
    /// first.
    pub server: String,
    /// JSON-lines file of `{phone,user_id,access_token}`; `None`: keep
    /// tokens in memory only.
    pub tokens: Option<PathBuf>,
    /// Phones are `prefix` + a zero-padded index, 11 digits in all.
    pub prefix: String,
    /// Index of the first user this run uses.
    pub offset: u64,
    /// Whether newly logged-in tokens are written back to `tokens`
    /// (shard children only read the file their parent wrote).
    pub write_tokens: bool,
    /// Logins in flight at once.
    pub login_concurrency: usize,
    /// Loopback source addresses for client sockets.
    pub sources: Sources,
    /// PEM certificates to trust for `https://` servers (see [`crate::tls`]).
    pub ca: Option<PathBuf>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            server: "http://127.0.0.1:3000".into(),
            tokens: Some(PathBuf::from("tokens.jsonl")),
            prefix: "1990".into(),
            offset: 0,
            write_tokens: true,
            login_concurrency: 64,
            sources: Sources::default(),
            ca: None,
        }
    }
}

impl Setup {
    /// Every server, in the order given.
    pub fn targets(&self) -> anyhow::Result<Vec<Target>> {
        Target::parse_list(&self.server)
    }

    /// The base URLs, as given (for reports).
    pub fn server_names(&self) -> Vec<String> {
        self.server
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    /// The first server: logins and merchant setup go there.
    pub fn target(&self) -> anyhow::Result<Target> {
        Ok(self.targets()?.swap_remove(0))
    }

    /// The TLS client configuration, when `ca` is given.
    pub fn tls(&self) -> anyhow::Result<Option<Tls>> {
        self.ca
            .as_deref()
            .map(crate::tls::client_config)
            .transpose()
    }

    /// The REST door of the first server.
    pub fn api(&self) -> anyhow::Result<Api> {
        Api::new(&self.target()?, self.tls()?.as_ref())
    }

    /// A REST door per server, in order.
    pub fn apis(&self) -> anyhow::Result<Vec<Api>> {
        let tls = self.tls()?;
        self.targets()?
            .iter()
            .map(|t| Api::new(t, tls.as_ref()))
            .collect()
    }

    pub fn connector(&self) -> anyhow::Result<Connector> {
        Connector::new(&self.targets()?, self.sources, self.tls()?.as_ref())
    }
}

/// Refuses to open more sockets than this process's file limit allows,
/// with the way out.
pub(crate) fn check_socket_budget(sockets: usize) -> anyhow::Result<()> {
    let budget = crate::socket_budget();
    if sockets > budget {
        anyhow::bail!(
            "{sockets} sockets exceed this process's open-files budget ({budget}); \
             split the run with `loadtest shard --procs N -- ...`"
        );
    }
    Ok(())
}

/// A process-unique prefix for command ids and idempotency keys.
pub(crate) fn run_tag() -> String {
    let n: u32 = rand::random();
    format!("lt{:x}{n:08x}", chrono::Utc::now().timestamp())
}
