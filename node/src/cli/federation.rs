//! Federation commands: `keys`, `peers`, `policy`, `audit`. `keys` and `peers add` change the
//! data directory and take effect when the node (re)starts, which records the change in the
//! audit log.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use super::{Client, ClientArgs, DEFAULT_DATA_DIR, answer, problem_text};
use crate::config::Config;
use crate::identity::{self, KeyHistory};
use crate::peer::PeerConfig;
use crate::policy::Policy;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Show the key history (what partners fetch from /federation/v1/identity).
    Show {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Replace the node key; the rotation statement is signed by the old key. Restart the
    /// node to use the new key.
    Rotate {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Replace the TLS certificate with one for these host names or addresses (besides
    /// localhost, 127.0.0.1 and the node id). Partners must pin the new one: send them a new
    /// card. Restart the node to use it.
    Tls {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// A host name or address partners reach the federation API at (repeat for more).
        #[arg(long = "name", required = true)]
        names: Vec<String>,
    },
    /// Revoke a key (default: the current one, which is first replaced) from TIME (RFC 3339):
    /// signatures dated from then on are refused by partners.
    Revoke {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// From when its signatures are refused (RFC 3339, e.g. 2026-11-01T00:00:00Z): the time
        /// the key may have been exposed.
        #[arg(long)]
        at: String,
        /// Key id to revoke.
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PeersCommand {
    /// Print this node's card: what a partner needs to add it (id, url, key, certificate).
    Card {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The URL partners reach this node's federation API at (https://host:port).
        #[arg(long)]
        url: String,
    },
    /// Add a partner to config.toml (from its card, or from flags), with a policy (default:
    /// share nothing). Restart the node to apply.
    Add {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The partner's card (JSON from `ammotrace peers card`).
        #[arg(long)]
        card: Option<PathBuf>,
        /// The partner's node id (instead of a card).
        #[arg(long)]
        id: Option<String>,
        /// The partner's federation URL, https://host:port (instead of a card).
        #[arg(long)]
        url: Option<String>,
        /// The partner's public key as in its node.pub (`KEY_ID BASE64URL`).
        #[arg(long)]
        public_key: Option<String>,
        /// The partner's TLS certificate (PEM file), pinned.
        #[arg(long)]
        certificate_file: Option<PathBuf>,
        /// The partner's first key (`KEY_ID BASE64URL`), when its public key came by rotation:
        /// the keys before it are trusted through a chain from this one (cards carry it).
        #[arg(long)]
        first_key: Option<String>,
        /// What this node shares with the partner: a policy document (JSON, see
        /// schemas/policy.schema.json).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Do not pull the partner's feed.
        #[arg(long)]
        no_pull: bool,
    },
    /// List configured partners.
    List {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show a partner's policy, rule by rule; with --record, ask the running node exactly
    /// which fields of that record the partner would receive and why.
    Show {
        peer: String,
        #[command(flatten)]
        client: ClientArgs,
        /// A record id: every field of it, + or −, and why.
        #[arg(long)]
        record: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's hash chain; report the first broken entry.
    Verify {
        #[arg(long, default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum RequestsCommand {
    /// Requests received (to approve or decline) and sent, with their status.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ask a partner for the record behind a hit reference.
    Ask {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        partner: String,
        #[arg(long)]
        reference: String,
        #[arg(long)]
        purpose: String,
        #[arg(long)]
        case_ref: String,
    },
    /// Approve an incoming request: the record version is disclosed to the requester.
    Approve {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        reason: String,
    },
    /// Decline an incoming request, with a reason.
    Decline {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        reason: String,
    },
}

pub async fn requests(command: RequestsCommand) -> anyhow::Result<()> {
    let (client, method, path, body) = match command {
        RequestsCommand::List { client } => (
            client,
            reqwest::Method::GET,
            "/api/v1/disclosure-requests".to_owned(),
            None,
        ),
        RequestsCommand::Ask {
            client,
            partner,
            reference,
            purpose,
            case_ref,
        } => (
            client,
            reqwest::Method::POST,
            "/api/v1/disclosure-requests".to_owned(),
            Some(
                json!({ "partner": partner, "reference": reference, "purpose": purpose, "case_ref": case_ref }),
            ),
        ),
        RequestsCommand::Approve { id, client, reason } => (
            client,
            reqwest::Method::POST,
            format!("/api/v1/disclosure-requests/{id}/approve"),
            Some(json!({ "reason": reason })),
        ),
        RequestsCommand::Decline { id, client, reason } => (
            client,
            reqwest::Method::POST,
            format!("/api/v1/disclosure-requests/{id}/decline"),
            Some(json!({ "reason": reason })),
        ),
    };
    let client = Client::new(&client)?;
    let mut request = client.request(method, &path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let (status, body) = answer(request.send().await?).await?;
    anyhow::ensure!(status.is_success(), "{status}: {}", problem_text(&body));
    let list = match body.get("requests").and_then(Value::as_array) {
        Some(list) => list.clone(),
        None => vec![body],
    };
    if list.is_empty() {
        out!("no disclosure requests");
    }
    for r in list {
        out!(
            "{:<9} {:<9} {:<8} {}  purpose: {}  case: {}{}{}",
            r["direction"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            r["partner"].as_str().unwrap_or(""),
            r["id"].as_str().unwrap_or(""),
            r["purpose"].as_str().unwrap_or(""),
            r["case_ref"].as_str().unwrap_or(""),
            r["record_id"]
                .as_str()
                .map(|id| format!("  record: {id}"))
                .unwrap_or_default(),
            r["reason"]
                .as_str()
                .map(|why| format!("  reason: {why}"))
                .unwrap_or_default(),
        );
    }
    Ok(())
}

fn node_id(data_dir: &Path) -> anyhow::Result<String> {
    Ok(Config::load(data_dir)?.node_id)
}

pub fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Show { data_dir } => {
            let id = node_id(&data_dir)?;
            let current = identity::Identity::load(&data_dir, &id)?;
            let history = KeyHistory::load(&data_dir, &id, &current.verifying_key())?;
            out!("{}", serde_json::to_string_pretty(&history)?);
        }
        KeysCommand::Rotate { data_dir } => {
            let _held = super::ensure_stopped(&data_dir, "rotate the key")?;
            let id = node_id(&data_dir)?;
            let new = identity::rotate(&data_dir, &id)?;
            out!("rotated: the node key is now {new}; restart the node to use it");
        }
        KeysCommand::Tls { data_dir, names } => {
            let _held = super::ensure_stopped(&data_dir, "replace the TLS certificate")?;
            let id = node_id(&data_dir)?;
            identity::renew_tls(&data_dir, &id, &names)?;
            out!(
                "new TLS certificate for {}; send partners a new card (`peers card`), restart the node",
                names.join(", ")
            );
        }
        KeysCommand::Revoke { data_dir, at, key } => {
            let _held = super::ensure_stopped(&data_dir, "revoke a key")?;
            let id = node_id(&data_dir)?;
            let revoked = identity::revoke(&data_dir, &id, key.as_deref(), &at)?;
            let current = identity::Identity::load(&data_dir, &id)?;
            out!(
                "revoked {revoked} from {at}; the node key is {}; restart the node",
                current.key_id()
            );
        }
    }
    Ok(())
}

pub fn peers(command: PeersCommand) -> anyhow::Result<()> {
    match command {
        PeersCommand::Card { data_dir, url } => {
            out!("{}", serde_json::to_string_pretty(&card(&data_dir, &url)?)?);
        }
        PeersCommand::Add {
            data_dir,
            card,
            id,
            url,
            public_key,
            certificate_file,
            first_key,
            policy,
            no_pull,
        } => {
            let card: Value = match &card {
                Some(path) => serde_json::from_slice(
                    &std::fs::read(path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                )
                .with_context(|| format!("{} is not a card", path.display()))?,
                None => json!({}),
            };
            let field = |flag: Option<String>, name: &str| -> anyhow::Result<String> {
                flag.or_else(|| card.get(name).and_then(Value::as_str).map(str::to_owned))
                    .with_context(|| format!("give --{} or a --card", name.replace('_', "-")))
            };
            let certificate = match certificate_file {
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                None => card
                    .get("certificate")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .context("give --certificate-file or a --card")?,
            };
            let policy: Policy = match policy {
                Some(path) => serde_json::from_slice(
                    &std::fs::read(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                )
                .with_context(|| format!("{} is not a valid policy", path.display()))?,
                None => Policy::default(),
            };
            let peer = PeerConfig {
                id: field(id, "id")?,
                url: field(url, "url")?,
                public_key: field(public_key, "public_key")?,
                certificate,
                first_key: first_key.or_else(|| {
                    card.get("first_key")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                }),
                pull: !no_pull,
                policy,
            };
            add_peer(&data_dir, &peer)?;
            out!(
                "added partner {} (mode {}); restart the node to apply",
                peer.id,
                spelled(&peer.policy.mode)
            );
        }
        PeersCommand::List { data_dir } => {
            let config = Config::load(&data_dir)?;
            if config.peers.is_empty() {
                out!("no partners configured (add one with `ammotrace peers add`)");
            }
            for p in &config.peers {
                out!(
                    "{}\t{}\tmode={}\tpull={}",
                    p.id,
                    p.url,
                    spelled(&p.policy.mode),
                    p.pull
                );
            }
        }
    }
    Ok(())
}

/// The card of the node in `data_dir`, reached by partners at `url`: what `peers add --card`
/// takes (schema `schemas/envelope.schema.json#/$defs/peerCard`).
pub fn card(data_dir: &Path, url: &str) -> anyhow::Result<Value> {
    if !url.starts_with("https://") {
        bail!("--url {url:?}: partners reach the federation API over TLS, give https://HOST:PORT");
    }
    let config = Config::load(data_dir)?;
    let certificate = std::fs::read_to_string(data_dir.join(identity::TLS_CERT_FILE))?;
    let host = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .with_context(|| format!("--url {url:?} names no host"))?;
    // Partners check the name they dial against the certificate, as well as the pin.
    if !identity::certificate_names(&certificate, &host)? {
        bail!(
            "the TLS certificate is not valid for {host}: partners could not connect. Make a new \
             one with `ammotrace keys tls --name {host}` (the node stopped), then print the card"
        );
    }
    let public_key = std::fs::read_to_string(data_dir.join(identity::PUBLIC_KEY_FILE))?;
    let current = identity::parse_public_key(&public_key)?;
    let history = identity::KeyHistory::load(data_dir, &config.node_id, &current)?;
    let mut card = json!({
        "id": config.node_id,
        "url": url,
        "public_key": public_key.trim(),
        "certificate": certificate,
    });
    // After a rotation, the first key too: partners trust the keys before the current one
    // (what they signed) through the chain from it, not on the TLS pin alone.
    if let Some(first) = history.keys.first()
        && first.key_id != identity::key_id(&current)
    {
        card["first_key"] = json!(format!("{} {}", first.key_id, first.public_key));
    }
    Ok(card)
}

/// Appends a `[[peers]]` table to `config.toml`, after checking the result parses.
pub fn add_peer(data_dir: &Path, peer: &PeerConfig) -> anyhow::Result<()> {
    #[derive(serde::Serialize)]
    struct Wrapper<'a> {
        peers: [&'a PeerConfig; 1],
    }
    let path = data_dir.join("config.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let table = toml::to_string(&Wrapper { peers: [peer] })?;
    let new_text = format!(
        "{}\n# Added by `ammotrace peers add` on {}.\n{table}",
        text.trim_end(),
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    Config::parse(&new_text).with_context(|| format!("partner {} not added", peer.id))?;
    let tmp = data_dir.join("config.toml.tmp");
    std::fs::write(&tmp, new_text)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// A policy value as `config.toml` spells it (`hit_no_hit`, `admin1`).
fn spelled<T: serde::Serialize + std::fmt::Debug>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{value:?}"))
}

fn explain(policy: &Policy) -> Vec<String> {
    let mut lines = vec![format!("mode: {}", spelled(&policy.mode))];
    if policy.mode == crate::policy::Mode::None {
        lines.push("nothing leaves for this partner (default deny)".into());
        return lines;
    }
    lines.push(format!(
        "item categories: {}",
        if policy.categories.is_empty() {
            "none (so no record is shared)".into()
        } else {
            policy.categories.join(", ")
        }
    ));
    lines.push(format!(
        "field paths: {}",
        if policy.fields.is_empty() {
            "identity fields only".into()
        } else {
            policy.fields.join(", ")
        }
    ));
    lines.push(format!(
        "location precision: {}",
        spelled(&policy.location_precision)
    ));
    lines.push(format!("embargo: {} h", policy.embargo_hours));
    lines.push(format!(
        "case references: {}",
        if policy.case_references {
            "shared"
        } else {
            "withheld"
        }
    ));
    lines.push(format!(
        "casualty counts: {}",
        if policy.casualties {
            "shared"
        } else {
            "withheld"
        }
    ));
    lines.push(format!("may relay: {}", policy.relay));
    lines.push(format!(
        "most sensitive TLP shared: {}",
        serde_json::to_value(policy.max_tlp.unwrap_or(crate::policy::Tlp::Green))
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    ));
    lines.push(
        "never: records marked do-not-share, TLP RED, or not releasable to this partner".into(),
    );
    lines
}

pub async fn policy(command: PolicyCommand) -> anyhow::Result<()> {
    let PolicyCommand::Show {
        peer,
        client,
        record,
    } = command;
    match record {
        None => {
            let config = Config::load(&client.data_dir)?;
            let p = config
                .peers
                .iter()
                .find(|p| p.id == peer)
                .with_context(|| format!("no partner {peer} in config.toml"))?;
            out!("policy for {peer} (digest {})", p.policy.digest());
            for line in explain(&p.policy) {
                out!("  {line}");
            }
        }
        Some(record) => {
            let client = Client::new(&client)?;
            let (status, body) = answer(
                client
                    .request(
                        reqwest::Method::GET,
                        &format!("/api/v1/peers/{peer}/preview/{record}"),
                    )
                    .send()
                    .await?,
            )
            .await?;
            anyhow::ensure!(status.is_success(), "{}", problem_text(&body));
            out!(
                "{peer} {} record {} v{}: {}",
                if body["shared"] == true {
                    "would receive"
                } else {
                    "would not receive"
                },
                body["record_id"].as_str().unwrap_or_default(),
                body["version"],
                body["reason"].as_str().unwrap_or_default()
            );
            for f in body["fields"].as_array().into_iter().flatten() {
                out!(
                    "  {} {:<50} {}",
                    if f["disclosed"] == true { "+" } else { "-" },
                    f["path"].as_str().unwrap_or_default(),
                    f["reason"].as_str().unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

pub fn audit(command: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::Verify { data_dir } = command;
    let path = data_dir.join(crate::audit::AUDIT_FILE);
    if !path.is_file() {
        bail!(
            "no audit log at {} (is --data-dir the node's directory?)",
            path.display()
        );
    }
    match crate::audit::verify(&path) {
        Ok((entries, head)) => {
            out!("audit log intact: {entries} entries, head {head}");
            Ok(())
        }
        Err(broken) => bail!("audit log broken: {broken}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::federation::tests::{assert_follows, schema, with};

    fn add_from(data_dir: &Path, card: &Path) -> PeersCommand {
        PeersCommand::Add {
            data_dir: data_dir.to_owned(),
            card: Some(card.to_owned()),
            id: None,
            url: None,
            public_key: None,
            certificate_file: None,
            first_key: None,
            policy: None,
            no_pull: false,
        }
    }

    /// The card `peers card` prints follows `peerCard`, and `peers add --card` takes it as it
    /// is; a card the schema refuses, `peers add` refuses too.
    #[test]
    fn cards_follow_the_schema_and_peers_add_takes_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = |name: &str| tmp.path().join(name);
        for (name, id) in [("a", "XAA"), ("b", "XBB"), ("c", "XCC")] {
            crate::node::init(&dir(name), id).unwrap();
        }
        let validator = schema("envelope.schema.json", Some("peerCard"));
        let card = card(&dir("a"), "https://127.0.0.1:8601").unwrap();
        assert_follows(&validator, &card, "peer card");
        let write = |name: &str, card: &Value| {
            let path = dir(name);
            std::fs::write(&path, serde_json::to_string_pretty(card).unwrap()).unwrap();
            path
        };
        peers(add_from(&dir("b"), &write("card.json", &card))).unwrap();
        let added = &Config::load(&dir("b")).unwrap().peers[0];
        assert_eq!(
            json!([added.id, added.url, added.public_key, added.certificate]),
            json!([
                card["id"],
                card["url"],
                card["public_key"],
                card["certificate"]
            ])
        );

        for bad in [
            with(&card, "/certificate", None),
            with(&card, "/url", Some(json!("http://127.0.0.1:8601"))),
            with(&card, "/public_key", Some(json!("ed25519:AAAA not-a-key"))),
            with(&card, "/id", Some(json!(["XAA"]))),
        ] {
            assert!(!validator.is_valid(&bad), "{bad}");
            assert!(
                peers(add_from(&dir("c"), &write("bad.json", &bad))).is_err(),
                "{bad}"
            );
        }
        // `peers add` ignores members it does not know: so does the schema.
        let extra = with(&card, "/note", Some(json!("from the liaison meeting")));
        assert!(validator.is_valid(&extra));
        peers(add_from(&dir("c"), &write("extra.json", &extra))).unwrap();
        assert_eq!(Config::load(&dir("c")).unwrap().peers.len(), 1);
    }
}
