//! The `ammotrace` command line. `init`, `serve` and `reindex` work on a data directory;
//! `import`, `search` and `export` are clients of a running node's API (its address and admin
//! token are read from the data directory unless `--url`/`--token` are given).

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::config::Config;
use crate::identity::ADMIN_TOKEN_FILE;
use crate::import::Format;
use crate::node::{self, INDEX_DIR, Node, STORE_DIR};

/// `println!` for a command's output. When the reader has gone (`ammotrace search … | head`),
/// the command ends quietly and successfully instead of panicking on the broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::cli::stdout_failed(e);
        }
    }};
}

mod federation;

/// Refuses to `act` on a data directory whose node is running: its store is locked by it.
/// Returns the store, opened: hold it while acting, so that no node starts meanwhile.
pub(crate) fn ensure_stopped(data_dir: &Path, act: &str) -> anyhow::Result<crate::store::Store> {
    if !data_dir.join("config.toml").is_file() {
        bail!(
            "cannot {act}: {} is not a node's data directory (no config.toml)",
            data_dir.display()
        );
    }
    let path = data_dir.join(STORE_DIR);
    match crate::store::Store::open(&path) {
        Ok(store) => Ok(store),
        Err(e) => bail!(
            "cannot {act} while the node in {} runs (its store is in use: {e}); stop it first",
            data_dir.display()
        ),
    }
}

/// Ends the process after a failed write to standard output: quietly with success when the
/// reader closed the pipe (it has what it wanted), with an error otherwise.
pub(crate) fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write the output: {e}");
    std::process::exit(1);
}

/// Default data directory of a plain `ammotrace serve`.
pub const DEFAULT_DATA_DIR: &str = "ammotrace-data";

#[derive(Debug, Parser)]
#[command(
    name = "ammotrace",
    version,
    about = "Federated seized-ammunition tracing node"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a data directory: keys, TLS certificate, admin token, commented config.toml.
    Init {
        /// The directory to create (it must not hold a node already).
        #[arg(long)]
        data_dir: PathBuf,
        /// This node's State (ISO 3166-1 alpha-3 or user-assigned, e.g. XAA).
        #[arg(long)]
        node_id: String,
        /// A host name or address partners reach the federation API at (repeat for more):
        /// the TLS certificate names it, besides localhost, 127.0.0.1 and the node id.
        #[arg(long = "tls-name")]
        tls_names: Vec<String>,
    },
    /// Serve the local API. With no flags: initialise ./ammotrace-data with the embedded
    /// default configuration if needed, and serve it on 127.0.0.1.
    Serve {
        /// The node's data directory, made by `init` (default: ./ammotrace-data, initialised
        /// with the embedded default configuration if absent).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Listen address of the local API (overrides config.toml).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Listen address of the federation API (overrides config.toml).
        #[arg(long)]
        federation_listen: Option<SocketAddr>,
    },
    /// Import a JSON Lines, CSV or XLSX file into a running node.
    Import {
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
        /// Store valid records even if some are rejected (default: all or nothing).
        #[arg(long)]
        partial: bool,
        /// Records per request (JSON Lines).
        #[arg(long, default_value_t = 2000)]
        batch: usize,
        /// Rewrite each JSON record's originating_state to this node's State.
        #[arg(long)]
        as_own: bool,
        /// Requests in flight at once: while one batch is stored and flushed (one writer at a
        /// time), the others are parsed and validated. Three kept both cores of a 2-core node
        /// busier than two (about 5% more records/s, the same CPU per record: decision 0015).
        #[arg(long, default_value_t = 3)]
        jobs: usize,
    },
    /// Search a running node.
    Search {
        #[command(flatten)]
        client: ClientArgs,
        /// Lot or batch number as read (`21-85`, `LOT 21/85`); `?` one character, `*` any run.
        #[arg(long)]
        lot: Option<String>,
        /// Headstamp transcription, tokens in any order (`539 85`); `?`/`*` allowed.
        #[arg(long)]
        headstamp: Option<String>,
        /// Calibre as written (`7.62x39`, `7,62×39 mm`).
        #[arg(long)]
        calibre: Option<String>,
        /// Free text, tried as a lot and as headstamp tokens.
        #[arg(long)]
        q: Option<String>,
        /// Only events in this country (ISO 3166-1 alpha-3).
        #[arg(long)]
        country: Option<String>,
        /// Only events from this date (YYYY, YYYY-MM or YYYY-MM-DD).
        #[arg(long)]
        from: Option<String>,
        /// Only events up to this date (YYYY, YYYY-MM or YYYY-MM-DD; `2024` is all of 2024).
        #[arg(long)]
        to: Option<String>,
        /// Only items of this category (e.g. small_arms_ammunition).
        #[arg(long)]
        category: Option<String>,
        /// Most hits to show (default: the node's search.default_limit).
        #[arg(long)]
        limit: Option<usize>,
        /// Sibling lots (same maker, year and interfix, one digit apart in the lot number)
        /// instead of the lot itself.
        #[arg(long)]
        siblings: bool,
        /// Also ask every partner (needs --purpose and --case-ref).
        #[arg(long)]
        federated: bool,
        /// Why this search is made (sent to partners and audited).
        #[arg(long)]
        purpose: Option<String>,
        /// The case this search serves.
        #[arg(long)]
        case_ref: Option<String>,
        /// Print the raw JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Export every record's latest version as JSON Lines.
    Export {
        #[command(flatten)]
        client: ClientArgs,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Also export retracted records (their retraction version).
        #[arg(long)]
        include_retracted: bool,
    },
    /// Rebuild the search index from the store (stop the node first).
    Reindex {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// The node's signing keys: show, rotate, revoke.
    #[command(subcommand)]
    Keys(federation::KeysCommand),
    /// Partners: this node's card, add, list.
    #[command(subcommand)]
    Peers(federation::PeersCommand),
    /// Sharing policies: what a partner receives, and why.
    #[command(subcommand)]
    Policy(federation::PolicyCommand),
    /// The audit log: verify its hash chain.
    #[command(subcommand)]
    Audit(federation::AuditCommand),
    /// Disclosure requests (follow-up on a hit): ask, list, approve, decline.
    #[command(subcommand)]
    Requests(federation::RequestsCommand),
}

/// How a client command reaches a node.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Data directory of the node (for its address and admin token).
    #[arg(long, default_value = DEFAULT_DATA_DIR, env = "AMMOTRACE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Base URL of the node's API, e.g. http://127.0.0.1:8600.
    #[arg(long, env = "AMMOTRACE_URL")]
    pub url: Option<String>,
    /// API token (default: the data directory's admin token). A base64url token may begin
    /// with `-`, so the value is taken as it is.
    #[arg(
        long,
        env = "AMMOTRACE_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub token: Option<String>,
}

/// An API client for the CLI commands.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        let base = match &args.url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            // The node serving this directory says where it listens; else config.toml.
            None => match std::fs::read_to_string(args.data_dir.join(SERVING_FILE)) {
                Ok(url) if url.trim().starts_with("http") => url.trim().to_owned(),
                _ => {
                    let config = Config::load(&args.data_dir)
                        .context("no --url given and no node data directory found")?;
                    format!("http://{}", config.api.listen)
                }
            },
        };
        let token = match &args.token {
            Some(t) => t.clone(),
            None => std::fs::read_to_string(args.data_dir.join(ADMIN_TOKEN_FILE))
                .context("no --token given and no admin.token in the data directory")?
                .trim()
                .to_owned(),
        };
        Ok(Client {
            http: reqwest::Client::new(),
            base,
            token,
        })
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }
}

pub(crate) async fn answer(
    response: reqwest::Response,
) -> anyhow::Result<(reqwest::StatusCode, Value)> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

pub(crate) fn problem_text(body: &Value) -> String {
    let rejections = body
        .get("rejected")
        .and_then(Value::as_array)
        .is_some_and(|r| !r.is_empty());
    let mut text = body
        .get("detail")
        .and_then(Value::as_str)
        .unwrap_or(if rejections {
            "rejected:"
        } else {
            "request failed"
        })
        .to_owned();
    if let Some(rejected) = body.get("rejected").and_then(Value::as_array) {
        for r in rejected.iter().take(50) {
            text.push_str(&format!(
                "\n  row {}{}: {} {}",
                r["row"],
                r.get("column")
                    .and_then(Value::as_str)
                    .map(|c| format!(" (column {c})"))
                    .unwrap_or_default(),
                r["pointer"].as_str().unwrap_or(""),
                r["detail"].as_str().unwrap_or("")
            ));
        }
        if rejected.len() > 50 {
            text.push_str(&format!("\n  … and {} more", rejected.len() - 50));
        }
    }
    text
}

/// Runs the command line; the exit code says whether it worked.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "ammotrace=info,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colours for a terminal, not for a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Keys(c) => federation::keys(c),
        Command::Peers(c) => federation::peers(c),
        Command::Policy(c) => federation::policy(c).await,
        Command::Audit(c) => federation::audit(c),
        Command::Requests(c) => federation::requests(c).await,
        Command::Init {
            data_dir,
            node_id,
            tls_names,
        } => {
            let created = node::init_named(&data_dir, &node_id, &tls_names)?;
            out!("initialised {} for {node_id}", data_dir.display());
            out!("  signing key id: {}", created.key_id);
            out!(
                "  admin token:    {}",
                data_dir.join(ADMIN_TOKEN_FILE).display()
            );
            out!(
                "  configuration:  {}",
                data_dir.join("config.toml").display()
            );
            Ok(())
        }
        Command::Serve {
            data_dir,
            listen,
            federation_listen,
        } => serve(data_dir, listen, federation_listen).await,
        Command::Import {
            file,
            client,
            partial,
            batch,
            as_own,
            jobs,
        } => import(&file, &client, partial, batch.max(1), as_own, jobs.max(1)).await,
        Command::Search {
            client,
            lot,
            headstamp,
            calibre,
            q,
            country,
            from,
            to,
            category,
            limit,
            siblings,
            federated,
            purpose,
            case_ref,
            json,
        } => {
            if federated && (purpose.is_none() || case_ref.is_none()) {
                bail!("a federated search needs --purpose and --case-ref");
            }
            let client = Client::new(&client)?;
            let mut query: Vec<(&str, String)> = Vec::new();
            for (k, v) in [
                ("lot", lot),
                ("headstamp", headstamp),
                ("calibre", calibre),
                ("q", q),
                ("country", country),
                ("from", from),
                ("to", to),
                ("category", category),
                ("purpose", purpose),
                ("case_ref", case_ref),
            ] {
                if let Some(v) = v {
                    query.push((k, v));
                }
            }
            if let Some(l) = limit {
                query.push(("limit", l.to_string()));
            }
            if siblings {
                query.push(("siblings", "true".into()));
            }
            if federated {
                query.push(("scope", "federated".into()));
            }
            let (status, body) = answer(
                client
                    .request(reqwest::Method::GET, "/api/v1/search")
                    .query(&query)
                    .send()
                    .await?,
            )
            .await?;
            if !status.is_success() {
                bail!("{status}: {}", problem_text(&body));
            }
            if json {
                out!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                print_hits(&body);
                print_partners(&body);
            }
            Ok(())
        }
        Command::Export {
            client,
            output,
            include_retracted,
        } => {
            let client = Client::new(&client)?;
            let mut response = client
                .request(reqwest::Method::GET, "/api/v1/export")
                .query(&[("include_retracted", include_retracted)])
                .send()
                .await?;
            if !response.status().is_success() {
                let (status, body) = answer(response).await?;
                bail!("{status}: {}", problem_text(&body));
            }
            let mut out: Box<dyn Write> = match &output {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("cannot write {}", p.display()))?,
                )),
                None => Box::new(std::io::stdout().lock()),
            };
            let to_stdout = output.is_none();
            let written = |r: std::io::Result<()>| match r {
                Err(e) if to_stdout => stdout_failed(e),
                other => other,
            };
            while let Some(chunk) = response.chunk().await? {
                written(out.write_all(&chunk))?;
            }
            written(out.flush())?;
            Ok(())
        }
        Command::Reindex { data_dir } => {
            let config = Config::load(&data_dir)?;
            if !data_dir.join(STORE_DIR).is_dir() {
                bail!(
                    "{} holds no store: nothing to reindex (restore the store first)",
                    data_dir.join(STORE_DIR).display()
                );
            }
            let store = crate::store::Store::open(&data_dir.join(STORE_DIR))
                .context("cannot open the store (is the node still running?)")?;
            let bar = indicatif::ProgressBar::new(store.record_count() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} records {per_sec} {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let started = Instant::now();
            let (docs, mark) = crate::index::rebuild(
                &data_dir.join(INDEX_DIR),
                &store,
                config.index.writer_memory_mib,
                &|n| bar.set_position(n),
            )?;
            bar.finish_and_clear();
            out!(
                "reindexed {docs} items up to change {mark} in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

/// The per-partner status table of a federated search.
fn print_partners(body: &Value) {
    let Some(partners) = body.get("partners").and_then(Value::as_array) else {
        return;
    };
    out!();
    if partners.is_empty() {
        out!("no partner was asked: none is configured (`ammotrace peers add`)");
        return;
    }
    out!(
        "{:<8} {:<14} {:>8} {:>5}  detail",
        "partner",
        "status",
        "ms",
        "hits"
    );
    for p in partners {
        let hits = match p.get("count").and_then(Value::as_u64) {
            Some(count) => format!("{count}*"),
            None => p["hits"].as_u64().unwrap_or(0).to_string(),
        };
        let refs = p["refs"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|r| !r.is_empty())
            .map(|r| format!("refs: {r}"));
        out!(
            "{:<8} {:<14} {:>8} {:>5}  {}",
            p["id"].as_str().unwrap_or(""),
            p["status"].as_str().unwrap_or(""),
            p["latency_ms"].as_u64().unwrap_or(0),
            hits,
            refs.or_else(|| p["detail"].as_str().map(str::to_owned))
                .unwrap_or_default()
        );
    }
    if partners.iter().any(|p| p.get("count").is_some()) {
        out!(
            "* hit/no-hit partner: a count and references only; follow up with `ammotrace requests ask`"
        );
    }
}

/// The `from` column of a hit: its origin, marked `+` when the partner sent it in answer to
/// this search (not a copy replicated here).
fn from_column(hit: &Value) -> String {
    let live = if hit["via"] == "live_query" { "+" } else { "" };
    format!("{}{live}", hit["origin"].as_str().unwrap_or(""))
}

fn print_hits(body: &Value) {
    let hits = body
        .get("hits")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if hits.is_empty() {
        out!("no match");
        return;
    }
    out!(
        "{:<6} {:<11} {:<5} {:<18} {:<14} {:<16} {:<10} record",
        "score",
        "kind",
        "from",
        "lot",
        "headstamp",
        "calibre",
        "date"
    );
    for h in &hits {
        let item = &h["item"];
        out!(
            "{:<6} {:<11} {:<5} {:<18} {:<14} {:<16} {:<10} {}#{}",
            h["match"]["score"]
                .as_f64()
                .map(|s| format!("{s:.3}"))
                .unwrap_or_default(),
            h["match"]["kind"].as_str().unwrap_or(""),
            from_column(h),
            item.pointer("/lot/raw")
                .and_then(Value::as_str)
                .unwrap_or("-"),
            item.pointer("/headstamp/raw_transcription")
                .and_then(Value::as_str)
                .unwrap_or("-"),
            item.pointer("/calibre/raw")
                .and_then(Value::as_str)
                .unwrap_or("-"),
            h.pointer("/event/date/start")
                .and_then(Value::as_str)
                .unwrap_or(""),
            h["record_id"].as_str().unwrap_or(""),
            h["item_id"].as_str().unwrap_or(""),
        );
    }
    if hits.iter().any(|h| h["via"] == "live_query") {
        out!("+ sent by the partner in answer to this search (not a copy replicated here)");
    }
}

async fn serve(
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    federation_listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let explicit = data_dir.is_some();
    let data_dir = data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    if !data_dir.join("config.toml").exists() {
        anyhow::ensure!(
            !explicit,
            "{} is not initialised: run `ammotrace init --data-dir {} --node-id XXX` first",
            data_dir.display(),
            data_dir.display()
        );
        let default = Config::embedded_default()?;
        let created = node::init(&data_dir, &default.node_id)?;
        out!(
            "initialised {} with the embedded default configuration (node {}, key {})",
            data_dir.display(),
            default.node_id,
            created.key_id
        );
    }
    let mut config = Config::load(&data_dir)?;
    if let Some(listen) = listen {
        config.api.listen = listen;
    }
    if let Some(listen) = federation_listen {
        config.federation.listen = listen;
    }
    let node = Node::open_with(&data_dir, config)?;
    let listener = tokio::net::TcpListener::bind(node.config().api.listen)
        .await
        .with_context(|| format!("cannot listen on {}", node.config().api.listen))?;
    let address = listener.local_addr()?;
    let federation = if node.config().federation.enabled {
        let listener = std::net::TcpListener::bind(node.config().federation.listen)
            .with_context(|| format!("cannot listen on {}", node.config().federation.listen))?;
        Some(listener)
    } else {
        None
    };
    let shutdown = shutdown_signal();
    out!("ammotrace node {} serving", node.config().node_id);
    out!("  API:          http://{address}/api/v1   (OpenAPI: http://{address}/api/openapi.json)");
    if let Some(f) = &federation {
        out!(
            "  federation:   https://{}/federation/v1   (partners only; {} configured)",
            f.local_addr()?,
            node.peers().iter().count()
        );
    }
    out!(
        "  admin token:  {}",
        data_dir.join(ADMIN_TOKEN_FILE).display()
    );
    out!("  data:         {}", data_dir.display());
    let _ = std::io::stdout().flush();
    // Where this node's API really is (`--listen` may differ from config.toml, port 0 is
    // chosen by the system): client commands given only `--data-dir` read it.
    let serving = data_dir.join(SERVING_FILE);
    std::fs::write(&serving, format!("http://{address}\n"))
        .with_context(|| format!("cannot write {}", serving.display()))?;
    let served = node.serve(listener, federation, shutdown).await;
    let _ = std::fs::remove_file(&serving);
    served
}

/// In a data directory while its node serves: the base URL of the node's API.
const SERVING_FILE: &str = "api.url";

/// Installs the SIGINT and SIGTERM handlers now, so that a signal arriving any time after the
/// node has said it serves stops it gracefully (an async fn would install them only when
/// first polled), and resolves on the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    let install = |kind: SignalKind, name: &str| {
        signal(kind)
            .inspect_err(|e| {
                tracing::warn!("cannot handle {name}: {e}; it will stop the node abruptly")
            })
            .ok()
    };
    let interrupt = install(SignalKind::interrupt(), "SIGINT");
    let terminate = install(SignalKind::terminate(), "SIGTERM");
    async fn received(signal: Option<Signal>) {
        match signal {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    async move {
        tokio::select! { _ = received(interrupt) => {}, _ = received(terminate) => {} }
        tracing::info!("shutting down");
    }
}

async fn import(
    file: &Path,
    args: &ClientArgs,
    partial: bool,
    batch: usize,
    as_own: bool,
    jobs: usize,
) -> anyhow::Result<()> {
    let format = Format::from_path(file).ok_or_else(|| {
        anyhow::anyhow!("{}: name it .jsonl, .ndjson, .csv or .xlsx", file.display())
    })?;
    let client = Client::new(args)?;
    let node_id = if as_own {
        let (_, health) = answer(
            client
                .request(reqwest::Method::GET, "/healthz")
                .send()
                .await?,
        )
        .await?;
        health["node_id"].as_str().map(str::to_owned)
    } else {
        None
    };
    // Bodies of at most `batch` records (JSON Lines), or the whole sheet.
    let mut bodies: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut twice: Vec<String> = Vec::new();
    let mut total = 0usize;
    match format {
        Format::JsonLines => {
            let reader = std::io::BufReader::new(
                std::fs::File::open(file)
                    .with_context(|| format!("cannot open {}", file.display()))?,
            );
            let (mut body, mut count, mut first_line) = (Vec::new(), 0, 1);
            // All or nothing across batches: a record id twice in the file is found here,
            // since the node sees one batch at a time.
            let check_ids = !partial;
            let mut ids: std::collections::HashMap<crate::record::RecordId, usize> =
                std::collections::HashMap::new();
            for (i, line) in reader.lines().enumerate() {
                let mut line = line?;
                if check_ids
                    && let Ok(IdOnly {
                        record_id: Some(id),
                    }) = serde_json::from_str::<IdOnly>(&line)
                    && let Some(id) = crate::record::RecordId::parse(&id)
                    && let Some(first) = ids.insert(id, i + 1)
                {
                    twice.push(format!(
                        "  row {}: /record_id record {id} also appears at row {first}",
                        i + 1
                    ));
                }
                if let (Some(node_id), Ok(mut v)) = (&node_id, serde_json::from_str::<Value>(&line))
                {
                    if let Some(o) = v.as_object_mut() {
                        o.insert("originating_state".into(), Value::String(node_id.clone()));
                    }
                    line = v.to_string();
                }
                body.extend_from_slice(line.as_bytes());
                body.push(b'\n');
                if !line.trim().is_empty() {
                    count += 1;
                    total += 1;
                }
                if count == batch {
                    bodies.push((first_line, std::mem::take(&mut body)));
                    count = 0;
                    first_line = i + 2;
                }
            }
            if !body.is_empty() {
                bodies.push((first_line, body));
            }
        }
        Format::Csv | Format::Xlsx => {
            let bytes =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            bodies.push((1, bytes));
        }
    }
    let mode = if partial { "partial" } else { "atomic" };
    let started = Instant::now();
    let style =
        indicatif::ProgressStyle::with_template("{msg:10} {bar:40} {pos}/{len} requests {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    if !twice.is_empty() {
        for t in &twice {
            eprintln!("{t}");
        }
        bail!(
            "{}: rejected; nothing was stored (a record id appears twice)",
            file.display()
        );
    }
    // Pass 1 (all or nothing): validate every batch before storing any.
    if !partial && bodies.len() > 1 {
        let bar = indicatif::ProgressBar::new(bodies.len() as u64)
            .with_style(style.clone())
            .with_message("checking");
        let mut problems = Vec::new();
        for (first_line, body) in &bodies {
            let response = client
                .request(reqwest::Method::POST, "/api/v1/import")
                .query(&[("mode", "atomic"), ("dry_run", "true")])
                .header("content-type", format.media_type())
                .body(body.clone())
                .send()
                .await?;
            let (status, body) = answer(response).await?;
            if !status.is_success() {
                problems.push(offset_rows(body, first_line - 1));
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        if !problems.is_empty() {
            for p in &problems {
                eprintln!("{}", problem_text(p));
            }
            bail!(
                "{}: rejected; nothing was stored (use --partial to store the valid records)",
                file.display()
            );
        }
    }
    let bar = indicatif::ProgressBar::new(bodies.len() as u64)
        .with_style(style)
        .with_message("importing");
    let (mut accepted, mut rejected) = (0u64, 0u64);
    let mut reports = Vec::new();
    // Up to `jobs` requests in flight: the node validates one batch while it stores another.
    let mut in_flight = tokio::task::JoinSet::new();
    let mut pending = bodies.into_iter();
    loop {
        while in_flight.len() < jobs {
            let Some((first_line, body)) = pending.next() else {
                break;
            };
            let request = client
                .request(reqwest::Method::POST, "/api/v1/import")
                .query(&[("mode", mode)])
                .header("content-type", format.media_type())
                .body(body);
            in_flight.spawn(async move {
                let (status, body) = answer(request.send().await?).await?;
                Ok::<_, anyhow::Error>((status, offset_rows(body, first_line - 1)))
            });
        }
        let Some(done) = in_flight.join_next().await else {
            break;
        };
        let (status, body) = match done? {
            Ok(answer) => answer,
            Err(e) => {
                bar.abandon();
                in_flight.shutdown().await;
                bail!("{e:#}\n{}", stored_before(accepted));
            }
        };
        if !status.is_success() {
            bar.abandon();
            in_flight.shutdown().await;
            bail!(
                "{status}: {}\n{}",
                problem_text(&body),
                stored_before(accepted)
            );
        }
        accepted += body["accepted"].as_u64().unwrap_or(0);
        rejected += body["rejected_rows"].as_u64().unwrap_or(0);
        if body["rejected"].as_array().is_some_and(|r| !r.is_empty()) {
            reports.push(body);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    for r in &reports {
        eprintln!("{}", problem_text(r));
    }
    let secs = started.elapsed().as_secs_f64();
    out!(
        "{}: {accepted} records stored, {rejected} rejected, of {} read, in {secs:.1} s ({:.0} records/s)",
        file.display(),
        if total > 0 {
            total as u64
        } else {
            accepted + rejected
        },
        accepted as f64 / secs.max(1e-9)
    );
    if accepted == 0 && rejected > 0 {
        bail!("no record was stored");
    }
    Ok(())
}

/// What an import that failed midway had stored: those records stay.
fn stored_before(accepted: u64) -> String {
    if accepted == 0 {
        "nothing of this file was stored".to_owned()
    } else {
        format!(
            "{accepted} records of this file had been stored before the failure (at least; \
             requests in flight may have stored more) and stay stored: import the rest with \
             --partial, which refuses those already there"
        )
    }
}

/// Just the record id of a JSON Lines record (the rest is not even allocated).
#[derive(serde::Deserialize)]
struct IdOnly {
    record_id: Option<String>,
}

fn offset_rows(mut body: Value, offset: usize) -> Value {
    if offset > 0
        && body.get("rejected").is_some()
        && let Some(o) = body.as_object_mut()
    {
        // The node's summary counts rows within the batch: the renumbered list says it all.
        o.remove("detail");
    }
    if let Some(rejected) = body.get_mut("rejected").and_then(Value::as_array_mut) {
        for r in rejected {
            if let Some(row) = r.get("row").and_then(Value::as_u64) {
                r["row"] = Value::from(row + offset as u64);
            }
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_hits_are_marked_in_the_table() {
        assert_eq!(from_column(&serde_json::json!({"origin": "XBB"})), "XBB");
        assert_eq!(
            from_column(&serde_json::json!({"origin": "XBB", "via": "live_query"})),
            "XBB+"
        );
    }

    #[test]
    fn parses_the_contract_commands() {
        let cli = Cli::try_parse_from(["ammotrace", "init", "--data-dir", "d", "--node-id", "XAA"])
            .unwrap();
        assert!(matches!(cli.command, Command::Init { ref node_id, .. } if node_id == "XAA"));
        let cli = Cli::try_parse_from(["ammotrace", "serve"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Serve {
                data_dir: None,
                listen: None,
                federation_listen: None
            }
        ));
        let cli = Cli::try_parse_from(["ammotrace", "import", "f.csv", "--partial"]).unwrap();
        assert!(matches!(cli.command, Command::Import { partial: true, .. }));
        let cli =
            Cli::try_parse_from(["ammotrace", "search", "--lot", "21-85", "--siblings"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Search { siblings: true, .. }
        ));
        assert!(Cli::try_parse_from(["ammotrace", "serve", "--listen", "nowhere"]).is_err());
    }

    /// Tokens are base64url: one in 64 begins with `-`, and must still be taken as a value.
    #[test]
    fn a_token_beginning_with_a_hyphen_is_a_value() {
        let cli = Cli::try_parse_from([
            "ammotrace",
            "import",
            "f.jsonl",
            "--token",
            "-Ab_9",
            "--partial",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Import { ref client, partial: true, .. }
                if client.token.as_deref() == Some("-Ab_9")
        ));
    }
}
