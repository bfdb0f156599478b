//! `monitor map ...`: the replicated maps.
//!
//! ```text
//! monitor map create MAP | drop MAP
//! monitor map set MAP KEY VALUE [--if-version N | --if-absent] [--id ID]
//! monitor map del MAP KEY [--id ID]
//! monitor map get MAP KEY [--consistent]
//! monitor map list [MAP] [--after KEY] [--limit N] [--consistent]
//! monitor map history MAP [--from V] [--limit N]
//! monitor map load MAP FILE.yaml [--replace] [--chunk N]
//! ```
//!
//! Exit status: 0 when the update was applied or the read answered; 1 when
//! it was refused (outside the primary component, rejected by the map, a
//! key not found) or its outcome is unknown; 2 on bad usage or when the
//! server cannot be reached.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Subcommand;
use comfy_table::{presets, Table};
use flotilla_client::message::{Request, ServerMessage};
use flotilla_client::{Endpoint, JobId};
use indicatif::{ProgressBar, ProgressStyle};
use maps::api::{Freshness, Request as MapRequest, RequestError, Response, MAX_LIST};
use maps::bounds::{MAX_BATCH_OPS, OP_OVERHEAD};
use maps::{Op, Outcome, Update, UpdateId};
use serde_json::json;

use crate::{connect, println_checked, Failure, Output};

/// Bytes of entries in one update: a request must fit one client frame
/// (1 MiB), with room for the envelope.
const MAX_LOAD_BYTES: usize = 900 * 1024;
/// How long a request is retried while the primary component settles (no
/// change was made while it answers so).
const SETTLE_WAIT: Duration = Duration::from_secs(10);
/// How many times `load` sends a batch again with the same id after an
/// unknown outcome (a second application is impossible).
const LOAD_RETRIES: usize = 5;

/// `monitor map`.
#[derive(Debug, Subcommand)]
pub(crate) enum MapCommand {
    /// Create an empty map.
    Create {
        /// The map.
        map: String,
        #[command(flatten)]
        id: IdArg,
    },
    /// Drop a map and all its entries.
    Drop {
        /// The map.
        map: String,
        #[command(flatten)]
        id: IdArg,
    },
    /// Set a key.
    Set {
        /// The map.
        map: String,
        /// The key.
        #[arg(id = "map_key", value_name = "KEY")]
        key: String,
        /// The value.
        value: String,
        /// Only if the key was last written at this map version.
        #[arg(long, conflicts_with = "if_absent")]
        if_version: Option<u64>,
        /// Only if the key is absent.
        #[arg(long)]
        if_absent: bool,
        #[command(flatten)]
        id: IdArg,
    },
    /// Delete a key.
    Del {
        /// The map.
        map: String,
        /// The key.
        #[arg(id = "map_key", value_name = "KEY")]
        key: String,
        #[command(flatten)]
        id: IdArg,
    },
    /// Read a key.
    Get {
        /// The map.
        map: String,
        /// The key.
        #[arg(id = "map_key", value_name = "KEY")]
        key: String,
        /// Read through the primary server (never stale; refused outside
        /// the primary component).
        #[arg(long)]
        consistent: bool,
    },
    /// List a map's entries, or the maps when no map is named.
    List {
        /// The map.
        map: Option<String>,
        /// Start after this key.
        #[arg(long)]
        after: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// Read through the primary server.
        #[arg(long)]
        consistent: bool,
    },
    /// The updates a map took, as far as the server keeps them.
    History {
        /// The map.
        map: String,
        /// From this version.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Load the `key: value` mapping of a YAML file into a map (created if
    /// missing): one atomic update, or batches with --chunk.
    Load {
        /// The map.
        map: String,
        /// A YAML file holding one mapping of keys to scalar values. Each
        /// value is stored as written, without YAML typing: `1.50`, `0x10`,
        /// `yes` and `~` stay those characters; `key:` with nothing after it
        /// stores an empty value. A duplicate key, or a nested mapping or
        /// list, refuses the whole file.
        file: PathBuf,
        /// Replace the map's content (drop and create it first).
        #[arg(long)]
        replace: bool,
        /// Load in batches of at most N entries, each atomic on its own
        /// (readers may see the load in progress). Without it the whole
        /// file is one atomic update.
        #[arg(long, value_name = "N")]
        chunk: Option<usize>,
    },
}

/// `--id`: retry an update whose outcome was unknown.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct IdArg {
    /// The update's id (32 hexadecimal digits), to retry an update whose
    /// outcome was unknown: it is applied at most once. An id already used
    /// for a different update is refused.
    #[arg(long, value_parser = parse_id)]
    id: Option<UpdateId>,
}

fn parse_id(text: &str) -> Result<UpdateId, String> {
    if text.len() != 32 {
        return Err(format!("expected 32 hexadecimal digits, found {text:?}"));
    }
    u128::from_str_radix(text, 16)
        .map(UpdateId)
        .map_err(|_| format!("expected 32 hexadecimal digits, found {text:?}"))
}

fn new_id() -> anyhow::Result<UpdateId> {
    let job = JobId::random().context("cannot get random bytes for an update id")?;
    Ok(UpdateId(u128::from_be_bytes(*job.as_bytes())))
}

fn usage<T>(message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure {
        code: 2,
        error: anyhow!(message.into()),
    })
}

fn refused<T>(message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure {
        code: 1,
        error: anyhow!(message.into()),
    })
}

/// Runs `monitor map ...`.
pub(crate) async fn run(
    endpoint: &Endpoint,
    command: MapCommand,
    out: &Output,
) -> Result<u8, Failure> {
    match command {
        MapCommand::Create { map, id } => update(endpoint, out, &map, Op::CreateMap, id).await,
        MapCommand::Drop { map, id } => update(endpoint, out, &map, Op::DropMap, id).await,
        MapCommand::Set {
            map,
            key,
            value,
            if_version,
            if_absent,
            id,
        } => {
            let op = if if_absent || if_version.is_some() {
                Op::CompareAndSet {
                    key,
                    expected_version: if_version,
                    value,
                }
            } else {
                Op::Set { key, value }
            };
            update(endpoint, out, &map, op, id).await
        }
        MapCommand::Del { map, key, id } => update(endpoint, out, &map, Op::Del { key }, id).await,
        MapCommand::Get {
            map,
            key,
            consistent,
        } => get(endpoint, out, map, key, consistent).await,
        MapCommand::List {
            map: None,
            consistent,
            ..
        } => {
            if consistent {
                return usage("--consistent applies to a map's entries: name the map");
            }
            maps_list(endpoint, out).await
        }
        MapCommand::List {
            map: Some(map),
            after,
            limit,
            consistent,
        } => list(endpoint, out, map, after, limit, consistent).await,
        MapCommand::History { map, from, limit } => history(endpoint, out, map, from, limit).await,
        MapCommand::Load {
            map,
            file,
            replace,
            chunk,
        } => load(endpoint, out, map, file, replace, chunk).await,
    }
}

/// Sends one map request and returns the answer; a request refused while
/// the primary component settles is sent again for a while (it changed
/// nothing).
pub(crate) async fn ask(endpoint: &Endpoint, request: &MapRequest) -> Result<Response, Failure> {
    let wrapped = Request::Map(request.clone());
    if let Err(e) = wrapped.validate() {
        return usage(e.to_string());
    }
    let started = Instant::now();
    loop {
        let mut connection = connect(endpoint).await?;
        connection
            .send(&wrapped)
            .await
            .context("cannot send the request")?;
        let response = match connection.recv().await {
            Ok(Some(ServerMessage::Map(response))) => response,
            Ok(Some(ServerMessage::Error { message, .. })) => {
                return refused(format!("the server at {endpoint} refused: {message}"))
            }
            Ok(Some(other)) => {
                return Err(anyhow!(
                    "the server at {endpoint} answered with a {}, not a map reply",
                    flotilla_client::follow::message_name(&other)
                )
                .into())
            }
            Ok(None) => {
                return match request {
                    MapRequest::Update(u) => refused(unknown_text(
                        endpoint,
                        &u.map,
                        u.id,
                        "the server closed the connection before answering",
                    )),
                    _ => Err(anyhow!(
                        "the server at {endpoint} closed the connection before answering"
                    )
                    .into()),
                }
            }
            Err(e) => {
                let e = anyhow::Error::from(e).context(format!("lost the server at {endpoint}"));
                return match request {
                    MapRequest::Update(u) => refused(format!(
                        "{}\n{}",
                        flotilla_client::error_chain(e.as_ref()),
                        unknown_text(
                            endpoint,
                            &u.map,
                            u.id,
                            "the connection failed before the answer"
                        )
                    )),
                    _ => Err(e.into()),
                };
            }
        };
        let settling = matches!(response, Response::Error(RequestError::Settling));
        if settling && started.elapsed() < SETTLE_WAIT {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        return Ok(response);
    }
}

fn unknown_text(endpoint: &Endpoint, map: &str, id: UpdateId, why: &str) -> String {
    format!(
        "outcome unknown: {why}; update {id} may or may not have been applied.\n\
         Check with `monitor map history {map}` (look for id {id}), or send it again with \
         `--id {id}`: it is applied at most once (server {endpoint})."
    )
}

/// Text from the fleet for a table cell that may hold several lines (see
/// [`crate::report::safe_lines`]).
fn shown_lines(text: &str) -> String {
    crate::report::safe_lines(text).into_owned()
}

/// The names of the hosts reachable from the server, for a refusal.
async fn reachable(endpoint: &Endpoint, members: &[gc_core::Pid]) -> String {
    let names: BTreeMap<u32, String> = match crate::single(endpoint, Request::Members).await {
        Ok(ServerMessage::Members(reply)) => reply
            .members
            .into_iter()
            .map(|m| (m.node, m.host))
            .collect(),
        _ => BTreeMap::new(),
    };
    let mut shown: Vec<String> = members
        .iter()
        .map(|p| {
            names
                .get(&p.node)
                .map_or_else(|| p.to_string(), |n| crate::safe(n))
        })
        .collect();
    shown.sort();
    if shown.is_empty() {
        "no host yet (it has not formed a view with the others)".to_owned()
    } else {
        shown.join(", ")
    }
}

/// The text of a refusal, with host names for the reachable members.
async fn refusal_text(endpoint: &Endpoint, error: &RequestError) -> String {
    match error {
        RequestError::NotPrimary { what, members } => format!(
            "refused: the server at {endpoint} is not in the primary component, so it cannot \
             {what}; it can reach {} — a minority of the fleet's hosts. Run the command on a \
             host of the majority side, or wait until the partition heals.",
            reachable(endpoint, members).await
        ),
        other => format!("refused: {other}"),
    }
}

fn print_json(value: &serde_json::Value) -> Result<(), Failure> {
    println_checked(&serde_json::to_string_pretty(value).context("cannot encode JSON")?)?;
    Ok(())
}

fn op_text(op: &Op) -> String {
    match op {
        Op::CreateMap => "create".into(),
        Op::DropMap => "drop".into(),
        Op::Set { key, .. } => format!("set {key}"),
        Op::Del { key } => format!("del {key}"),
        Op::CompareAndSet { key, .. } => format!("set {key} (compare-and-set)"),
        Op::Batch(ops) => format!("batch of {} operations", ops.len()),
    }
}

async fn update(
    endpoint: &Endpoint,
    out: &Output,
    map: &str,
    op: Op,
    id: IdArg,
) -> Result<u8, Failure> {
    let id = match id.id {
        Some(id) => id,
        None => new_id()?,
    };
    let what = op_text(&op);
    let request = MapRequest::Update(Update {
        id,
        map: map.to_owned(),
        op,
    });
    let response = ask(endpoint, &request).await?;
    let code = update_code(&response);
    if out.json {
        print_json(&json!({ "map": map, "id": id.to_string(), "response": response }))?;
        return Ok(code);
    }
    match &response {
        Response::Outcome {
            outcome, duplicate, ..
        } => {
            let again = if *duplicate {
                " (a retry: this update had been applied before; this is its first outcome)"
            } else {
                ""
            };
            match outcome {
                Outcome::Applied { .. } => {
                    println_checked(&format!("{map}: {what}: {outcome}{again}"))?
                }
                Outcome::Rejected { .. } => {
                    return refused(format!("{map}: {what}: {outcome}{again}"))
                }
            }
        }
        Response::Unknown { id } => {
            return refused(unknown_text(
                endpoint,
                map,
                *id,
                "a membership change happened while the update was on its way",
            ))
        }
        Response::Error(e) => return refused(refusal_text(endpoint, e).await),
        other => return Err(anyhow!("unexpected answer to an update: {other:?}").into()),
    }
    Ok(code)
}

fn update_code(response: &Response) -> u8 {
    match response {
        Response::Outcome { outcome, .. } if outcome.is_applied() => 0,
        _ => 1,
    }
}

fn freshness_note(f: &Freshness) -> Option<&'static str> {
    if !f.in_primary {
        Some("may be stale: this server is not in the primary component")
    } else if f.stale {
        Some("may be stale: this server is still catching up with the primary component")
    } else {
        None
    }
}

async fn get(
    endpoint: &Endpoint,
    out: &Output,
    map: String,
    key: String,
    consistent: bool,
) -> Result<u8, Failure> {
    let request = MapRequest::Get {
        map: map.clone(),
        key: key.clone(),
        consistent,
    };
    let response = ask(endpoint, &request).await?;
    let code = match &response {
        Response::Value { entry: Some(_), .. } => 0,
        _ => 1,
    };
    if out.json {
        print_json(&json!({ "map": map, "key": key, "response": response }))?;
        return Ok(code);
    }
    match response {
        Response::Value {
            entry,
            version,
            freshness,
            ..
        } => {
            let note = freshness_note(&freshness);
            match entry {
                Some(e) => {
                    // Exact bytes for a script; escaped for a person.
                    if std::io::stdout().is_terminal() {
                        println_checked(&crate::safe(&e.value))?;
                    } else {
                        println_checked(&e.value)?;
                    }
                    crate::eprint_line(&format!(
                        "{}/{}: written at map version {}; map version {version}{}",
                        crate::safe(&map),
                        crate::safe(&key),
                        e.version,
                        note.map(|n| format!("; {n}")).unwrap_or_default()
                    ));
                }
                None => {
                    return refused(format!(
                        "{map}: key {key:?} not found (map version {version}){}",
                        note.map(|n| format!("; {n}")).unwrap_or_default()
                    ))
                }
            }
        }
        Response::Error(e) => return refused(refusal_text(endpoint, &e).await),
        other => return Err(anyhow!("unexpected answer to a get: {other:?}").into()),
    }
    Ok(code)
}

async fn list(
    endpoint: &Endpoint,
    out: &Output,
    map: String,
    after: Option<String>,
    limit: u32,
    consistent: bool,
) -> Result<u8, Failure> {
    let request = MapRequest::List {
        map: map.clone(),
        after,
        limit: limit.min(MAX_LIST),
        consistent,
    };
    let response = ask(endpoint, &request).await?;
    if out.json {
        let code = u8::from(!matches!(response, Response::Listing { .. }));
        print_json(&json!({ "map": map, "response": response }))?;
        return Ok(code);
    }
    match response {
        Response::Listing {
            version,
            entries,
            more,
            freshness,
            ..
        } => {
            let mut table = Table::new();
            table.load_preset(presets::UTF8_FULL_CONDENSED);
            table.set_header(["KEY", "VALUE", "VERSION"]);
            let last = entries.last().map(|(k, _)| k.clone());
            for (key, entry) in entries {
                table.add_row([
                    crate::safe(&key),
                    shown_lines(&entry.value),
                    entry.version.to_string(),
                ]);
            }
            println_checked(&table.to_string())?;
            let mut line = format!("map {map} at version {version}");
            if let Some(n) = freshness_note(&freshness) {
                line.push_str(&format!("; {n}"));
            }
            if more {
                if let Some(last) = last {
                    line.push_str(&format!("; more entries follow: --after {last:?}"));
                }
            }
            println_checked(&line)?;
            Ok(0)
        }
        Response::Error(e) => refused(refusal_text(endpoint, &e).await),
        other => Err(anyhow!("unexpected answer to a list: {other:?}").into()),
    }
}

async fn maps_list(endpoint: &Endpoint, out: &Output) -> Result<u8, Failure> {
    let response = ask(endpoint, &MapRequest::Maps).await?;
    if out.json {
        print_json(&json!({ "response": response }))?;
        return Ok(0);
    }
    match response {
        Response::Maps { maps, freshness } => {
            let mut table = Table::new();
            table.load_preset(presets::UTF8_FULL_CONDENSED);
            table.set_header(["MAP", "VERSION", "ENTRIES", "STATE"]);
            for m in maps {
                table.add_row([
                    crate::safe(&m.name),
                    m.version.to_string(),
                    m.entries.to_string(),
                    if m.live { "live" } else { "dropped" }.to_owned(),
                ]);
            }
            println_checked(&table.to_string())?;
            if let Some(n) = freshness_note(&freshness) {
                println_checked(n)?;
            }
            Ok(0)
        }
        Response::Error(e) => refused(refusal_text(endpoint, &e).await),
        other => Err(anyhow!("unexpected answer to a list: {other:?}").into()),
    }
}

async fn history(
    endpoint: &Endpoint,
    out: &Output,
    map: String,
    from: u64,
    limit: u32,
) -> Result<u8, Failure> {
    let request = MapRequest::History {
        map: map.clone(),
        from,
        limit: limit.min(MAX_LIST),
    };
    let response = ask(endpoint, &request).await?;
    if out.json {
        let code = u8::from(!matches!(response, Response::History { .. }));
        print_json(&json!({ "map": map, "response": response }))?;
        return Ok(code);
    }
    match response {
        Response::History {
            first_kept,
            entries,
            ..
        } => {
            let mut table = Table::new();
            table.load_preset(presets::UTF8_FULL_CONDENSED);
            table.set_header(["VERSION", "ID", "OPERATION", "OUTCOME"]);
            for e in entries {
                let outcome = match &e.outcome {
                    Outcome::Applied { .. } => "applied".to_owned(),
                    Outcome::Rejected { reason, .. } => format!("rejected: {reason}"),
                };
                table.add_row([
                    e.version.to_string(),
                    e.id.to_string(),
                    shown_lines(&op_text(&e.op)),
                    crate::safe(&outcome),
                ]);
            }
            println_checked(&table.to_string())?;
            if first_kept > from {
                println_checked(&format!(
                    "versions before {first_kept} were compacted on this server"
                ))?;
            }
            Ok(0)
        }
        Response::Error(e) => refused(refusal_text(endpoint, &e).await),
        other => Err(anyhow!("unexpected answer to a history: {other:?}").into()),
    }
}

/// The `key: value` pairs of a YAML file, in file order, each value the
/// scalar's text exactly as written (no YAML typing: `1.50`, `0x10`, `yes`
/// and `~` stay those characters; `key:` with nothing after it is the empty
/// text). Duplicate keys and nested mappings or lists are refused, naming
/// the key and its line.
fn read_entries(file: &PathBuf) -> Result<Vec<(String, String)>, Failure> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    parse_entries(&text).map_err(|e| Failure {
        code: 2,
        error: anyhow!("{}: {e}", file.display()),
    })
}

fn parse_entries(text: &str) -> Result<Vec<(String, String)>, String> {
    use serde::de::Deserialize;
    match Entries::deserialize(serde_yaml::Deserializer::from_str(text)) {
        Ok(e) => Ok(e.0),
        Err(e) => Err(match e.to_string().strip_prefix(DUPLICATE) {
            // The YAML deserializer marks a mapping's own errors at the
            // mapping's start, not at the key: find the key's lines here.
            Some(key) => duplicate_text(text, key),
            None => format!("expected one mapping of keys to values (`key: value` lines): {e}"),
        }),
    }
}

/// What the mapping visitor says about a duplicate key, before the key.
const DUPLICATE: &str = "duplicate key ";

/// `key` (as `{:?}` shows it) appears twice: the message, with the lines of
/// the top-level `key:` lines when they can be found.
fn duplicate_text(text: &str, shown: &str) -> String {
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| {
            let Some((k, _)) = line.split_once(':') else {
                return false;
            };
            let k = k.trim_end();
            let k = k
                .strip_prefix('"')
                .and_then(|k| k.strip_suffix('"'))
                .or_else(|| k.strip_prefix('\'').and_then(|k| k.strip_suffix('\'')))
                .unwrap_or(k);
            !line.starts_with([' ', '\t', '#']) && format!("{k:?}") == shown
        })
        .map(|(n, _)| n + 1)
        .collect();
    let at = match lines.as_slice() {
        [first, second, ..] => format!(" (lines {first} and {second})"),
        _ => String::new(),
    };
    format!("duplicate key {shown}{at}: each key may appear once; remove or rename one of them")
}

/// A YAML mapping read with every key and value asked for as a string: the
/// YAML deserializer then hands over a plain scalar's source text instead of
/// resolving it to a number or boolean (which would print back differently).
struct Entries(Vec<(String, String)>);

/// A scalar's text; refuses (through `expecting`) a mapping or a list.
struct Scalar(String);

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a text value (a map holds text: a nested mapping or list cannot be stored)",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("one mapping of keys to values (`key: value` lines)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Entries, A::Error> {
                let mut seen = std::collections::HashSet::new();
                let mut out = Vec::new();
                while let Some(Scalar(key)) = m.next_key::<Scalar>()? {
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(format!("{DUPLICATE}{key:?}")));
                    }
                    let Scalar(value) = m.next_value::<Scalar>()?;
                    out.push((key, value));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Splits the load into updates: the first creates (or replaces) the map
/// when needed; each stays under `max_ops` and the frame's bytes.
fn batches(first: Vec<Op>, entries: &[(String, String)], max_ops: usize) -> Vec<Vec<Op>> {
    let mut out = Vec::new();
    let mut bytes: usize = first.iter().map(Op::counted_bytes).sum();
    let mut cur = first;
    for (key, value) in entries {
        let n = key.len() + value.len() + OP_OVERHEAD;
        if !cur.is_empty() && (cur.len() >= max_ops || bytes + n > MAX_LOAD_BYTES) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += n;
        cur.push(Op::Set {
            key: key.clone(),
            value: value.clone(),
        });
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Why the load does not fit one atomic update (the limit exceeded, with
/// the figures), or None when it fits.
fn over_one_update(first: &[Op], entries: &[(String, String)]) -> Option<String> {
    let ops = first.len() + entries.len();
    let bytes: usize = first.iter().map(Op::counted_bytes).sum::<usize>()
        + entries
            .iter()
            .map(|(k, v)| k.len() + v.len() + OP_OVERHEAD)
            .sum::<usize>();
    let count = (ops > MAX_BATCH_OPS).then(|| {
        format!(
            "{} entries, more than the {MAX_BATCH_OPS} operations one atomic update carries{}",
            entries.len(),
            match first.len() {
                0 => "",
                1 => " (plus the one that creates the map)",
                _ => " (plus the two that replace the map)",
            }
        )
    });
    let size = (bytes > MAX_LOAD_BYTES).then(|| {
        format!(
            "{} KiB of keys and values, more than the {} KiB one atomic update carries",
            bytes.div_ceil(1024),
            MAX_LOAD_BYTES / 1024
        )
    });
    match (count, size) {
        (None, None) => None,
        (Some(c), None) => Some(format!("holds {c}")),
        (None, Some(s)) => Some(format!("holds {} entries in {s}", entries.len())),
        (Some(c), Some(s)) => Some(format!("holds {c}, and {s}")),
    }
}

async fn load(
    endpoint: &Endpoint,
    out: &Output,
    map: String,
    file: PathBuf,
    replace: bool,
    chunk: Option<usize>,
) -> Result<u8, Failure> {
    let entries = read_entries(&file)?;
    for (key, value) in &entries {
        if let Err(e) = (Op::Set {
            key: key.clone(),
            value: value.clone(),
        })
        .validate()
        {
            return usage(format!("{}: key {key:?}: {e}", file.display()));
        }
    }
    // The map's version now, if it is live: what an empty load reports.
    let current = match ask(endpoint, &MapRequest::Maps).await? {
        Response::Maps { maps, .. } => maps
            .iter()
            .find(|m| m.name == map && m.live)
            .map(|m| m.version),
        Response::Error(e) => return refused(refusal_text(endpoint, &e).await),
        other => return Err(anyhow!("unexpected answer to a list: {other:?}").into()),
    };
    let first = match (current.is_some(), replace) {
        (true, true) => vec![Op::DropMap, Op::CreateMap],
        (true, false) => Vec::new(),
        (false, _) => vec![Op::CreateMap],
    };
    if chunk.is_none() {
        if let Some(why) = over_one_update(&first, &entries) {
            return usage(format!(
                "{} {why}; load it in batches with --chunk N (each batch atomic on its own)",
                file.display()
            ));
        }
    }
    let max_ops = chunk.unwrap_or(MAX_BATCH_OPS).clamp(1, MAX_BATCH_OPS);
    let batches = batches(first, &entries, max_ops);
    if batches.is_empty() {
        // An empty file on an existing map without --replace: nothing to
        // send, and no version of our own to report.
        let version = current.unwrap_or_default();
        if out.json {
            print_json(&json!({
                "map": map,
                "entries": 0,
                "batches": 0,
                "atomic": true,
                "version": version,
            }))?;
        } else {
            println_checked(&format!(
                "{map}: {} holds no entries: nothing was changed, map version {version}",
                file.display()
            ))?;
        }
        return Ok(0);
    }
    let bar = (std::io::stderr().is_terminal() && !out.json && batches.len() > 1).then(|| {
        let bar = ProgressBar::new(entries.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed}] {bar:30} {pos}/{len} entries  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    });
    let total = batches.len();
    let mut last_version = 0;
    let mut loaded = 0usize;
    for (i, ops) in batches.into_iter().enumerate() {
        let sets = ops.iter().filter(|op| matches!(op, Op::Set { .. })).count();
        let id = new_id()?;
        let request = MapRequest::Update(Update {
            id,
            map: map.clone(),
            op: Op::Batch(ops),
        });
        let mut tries = 0;
        let response = loop {
            let response = ask(endpoint, &request).await?;
            match response {
                // Safe to send again: the id makes a second application
                // impossible, and the answer is the first outcome.
                Response::Unknown { .. } | Response::Error(RequestError::Interrupted)
                    if tries < LOAD_RETRIES =>
                {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                other => break other,
            }
        };
        let failed = |why: String| {
            let done = if i == 0 {
                "nothing was loaded".to_owned()
            } else {
                format!("batches 1 to {i} of {total} ({loaded} entries) were loaded")
            };
            format!("{map}: batch {} of {total}: {why}; {done}", i + 1)
        };
        match response {
            Response::Outcome { outcome, .. } => match outcome {
                Outcome::Applied { version } => last_version = version,
                Outcome::Rejected { .. } => {
                    if let Some(bar) = &bar {
                        bar.abandon();
                    }
                    return refused(failed(outcome.to_string()));
                }
            },
            Response::Unknown { id } => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                return refused(failed(unknown_text(
                    endpoint,
                    &map,
                    id,
                    "membership changes kept interrupting the batch",
                )));
            }
            Response::Error(e) => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                return refused(failed(refusal_text(endpoint, &e).await));
            }
            other => return Err(anyhow!("unexpected answer to an update: {other:?}").into()),
        }
        loaded += sets;
        if let Some(bar) = &bar {
            bar.set_position(loaded as u64);
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if out.json {
        print_json(&json!({
            "map": map,
            "entries": loaded,
            "batches": total,
            "atomic": total == 1,
            "version": last_version,
        }))?;
    } else {
        println_checked(&format!(
            "{map}: loaded {loaded} entries in {total} {} ({}), map version {last_version}",
            if total == 1 { "update" } else { "updates" },
            if total == 1 {
                "atomic"
            } else {
                "each batch atomic"
            },
        ))?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_count_and_bytes() {
        let entries: Vec<(String, String)> =
            (0..25).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        let b = batches(vec![Op::CreateMap], &entries, 10);
        assert_eq!(b.len(), 3);
        assert_eq!(b[0][0], Op::CreateMap);
        assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 26);
        let big: Vec<(String, String)> = (0..40)
            .map(|i| (format!("k{i}"), "x".repeat(60_000)))
            .collect();
        let b = batches(Vec::new(), &big, MAX_BATCH_OPS);
        assert!(b.len() >= 3);
        assert!(parse_id(&"0".repeat(31)).is_err());
        assert_eq!(parse_id(&format!("{:032x}", 7)).unwrap(), UpdateId(7));
    }

    #[test]
    fn load_keeps_values_as_written() {
        let e = parse_entries(
            "ver: 1.50\nhex: 0x10\nsci: 1e3\nyes: yes\nt: true\nnull: ~\nn2: null\nempty:\n\
             q: '007'\nip: 10.0.0.1\n1.0: one\n",
        )
        .unwrap();
        let want = [
            ("ver", "1.50"),
            ("hex", "0x10"),
            ("sci", "1e3"),
            ("yes", "yes"),
            ("t", "true"),
            ("null", "~"),
            ("n2", "null"),
            ("empty", ""),
            ("q", "007"),
            ("ip", "10.0.0.1"),
            ("1.0", "one"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(e, want);
        assert!(parse_entries("").unwrap().is_empty());
    }

    #[test]
    fn load_refuses_duplicates_and_nesting() {
        let e = parse_entries("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(
            e,
            "duplicate key \"a\" (lines 1 and 3): each key may appear once; remove or rename one of them"
        );
        let e = parse_entries("'a b': 1\nc: [x]\n\"a b\": 3\n").unwrap_err();
        assert!(e.starts_with("expected one mapping"), "nesting first: {e}");
        let e = parse_entries("{x: 1, x: 2}").unwrap_err();
        assert!(e.starts_with("duplicate key \"x\": "), "{e}");
        let e = parse_entries("a: 1\nb:\n  c: 2\n").unwrap_err();
        assert!(e.contains("b") && e.contains("nested mapping"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        let e = parse_entries("a: [1, 2]\n").unwrap_err();
        assert!(e.contains("nested mapping or list"), "{e}");
        let e = parse_entries("- a\n- b\n").unwrap_err();
        assert!(e.contains("one mapping of keys to values"), "{e}");
    }

    #[test]
    fn load_limit_names_the_limit_exceeded() {
        let entries = |n: usize, len: usize| -> Vec<(String, String)> {
            (0..n)
                .map(|i| (format!("k{i:05}"), "v".repeat(len)))
                .collect()
        };
        // 50 000 entries of 32 counted bytes: the size is over, not the count.
        let e = over_one_update(&[], &entries(50_000, 10)).unwrap();
        assert_eq!(
            e,
            "holds 50000 entries in 1563 KiB of keys and values, more than the 900 KiB one \
             atomic update carries"
        );
        let e = over_one_update(&[Op::CreateMap], &entries(MAX_BATCH_OPS, 0)).unwrap();
        assert!(
            e.starts_with(
                "holds 100000 entries, more than the 100000 operations one atomic update \
                 carries (plus the one that creates the map), and 2149 KiB"
            ),
            "{e}"
        );
        assert_eq!(
            over_one_update(&[], &entries(MAX_BATCH_OPS, 0)).map(|_| ()),
            Some(())
        );
        // Whatever fits by this check is one batch, and the reverse.
        for (first, n, len) in [
            (0, 20_000, 10),
            (1, 25_000, 10),
            (0, 1_000, 900),
            (2, 14, 65_536),
        ] {
            let first = vec![Op::CreateMap; first];
            let e = entries(n, len);
            let one = batches(first.clone(), &e, MAX_BATCH_OPS).len() == 1;
            assert_eq!(over_one_update(&first, &e).is_none(), one, "{n} x {len}");
        }
    }

    #[test]
    fn json_shows_any_update_id_as_the_id_to_resend() {
        // A random id does not fit a JSON number: `--json map set` and
        // `--json map history` used to panic with "number out of range".
        let id = UpdateId(u128::MAX - 1);
        let response = Response::Outcome {
            id,
            map: "kv".into(),
            outcome: Outcome::Applied { version: 3 },
            duplicate: false,
        };
        let shown = json!({ "response": response });
        let text = shown["response"]["Outcome"]["id"].as_str().unwrap();
        assert_eq!(text, id.to_string());
        assert_eq!(parse_id(text).unwrap(), id);
        let back: Response = serde_json::from_value(shown["response"].clone()).unwrap();
        assert_eq!(back, response);
    }
}
