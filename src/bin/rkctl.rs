//! `rkctl`: the command-line client, modelled on kubectl. Object verbs (get, create, apply,
//! delete, run, scale, edit, expose, logs, rollout, cordon, drain, describe) go through the
//! `rkube.v1` API with [`rkube::client`]; `member` and `cluster status` speak to the store.
//! Everything decided without I/O (manifests, tables, status, formats) is in
//! [`rkube::rkctl`]; this file is the driver.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::{Args, Parser, Subcommand};
use rkube::api::defaults::Defaults;
use rkube::api::v1::*;
use rkube::api::validation::{invalid_message, Validate};
use rkube::api::{find_kind, KindInfo, Object, KINDS};
use rkube::client::{Api, Client, ClientError, DeleteParams, ListParams, Remote, WatchEvent};
use rkube::pb::etcdserverpb as epb;
use rkube::pb::etcdserverpb::cluster_client::ClusterClient;
use rkube::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use rkube::rkctl::describe::{describe, Describe};
use rkube::rkctl::output::{self, Format};
use rkube::rkctl::{apply, config, parse_manifests, printers, rollout, type_name, Manifest, Printable, Table};
use rkube::with_kind;
use serde_json::{json, Value};
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(name = "rkctl", version, about = "Command-line client for rkube, modelled on kubectl")]
struct Cli {
    /// Masters to talk to, comma-separated; the next one is tried when one fails. Default:
    /// the config file written by `rkube dev`, else 127.0.0.1:6443.
    #[arg(long, global = true, env = "RKUBE_SERVER")]
    server: Option<String>,
    /// The namespace of this request.
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Across all namespaces (get, describe).
    #[arg(short = 'A', long, global = true)]
    all_namespaces: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Display one or many resources.
    Get(GetArgs),
    /// Show details of a resource or group of resources, with their events.
    Describe {
        kind: String,
        names: Vec<String>,
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// Create resources from files or stdin (`-f -`).
    Create(FileArgs),
    /// Create or update resources from files or stdin, recording what was applied.
    Apply(FileArgs),
    /// Delete resources by kind and names, by file, or by label selector.
    Delete(DeleteArgs),
    /// Create a Deployment (or with --restart=Never a Pod) running one image.
    Run(RunArgs),
    /// Set a new size for a Deployment or ReplicaSet.
    Scale {
        args: Vec<String>,
        #[arg(long)]
        replicas: i32,
    },
    /// Edit a resource in $EDITOR (KUBE_EDITOR and RKUBE_EDITOR are honoured first).
    Edit { args: Vec<String> },
    /// Expose a deployment, replica set, pod or service as a new Service.
    Expose(ExposeArgs),
    /// Print the logs of a container in a pod.
    Logs {
        pod: String,
        #[arg(short = 'c', long)]
        container: Option<String>,
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(long, default_value_t = -1)]
        tail: i64,
        #[arg(short = 'p', long)]
        previous: bool,
    },
    /// Run a command in a container of a pod (no terminal; stdin is not forwarded).
    Exec {
        pod: String,
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Manage the rollout of a Deployment.
    Rollout {
        #[command(subcommand)]
        verb: RolloutVerb,
    },
    /// Mark a node unschedulable.
    Cordon { node: String },
    /// Mark a node schedulable.
    Uncordon { node: String },
    /// Cordon a node and delete the pods on it.
    Drain(DrainArgs),
    /// The store's members.
    Member {
        #[command(subcommand)]
        verb: MemberVerb,
    },
    /// The store's health: members, leader, raft index, database size.
    Cluster {
        #[command(subcommand)]
        verb: ClusterVerb,
    },
}

#[derive(Args)]
struct GetArgs {
    /// KIND [NAME...], KIND/NAME..., or KIND,KIND (`all` for pods, services, deployments, replica sets).
    args: Vec<String>,
    /// Output format: wide, json, yaml or name.
    #[arg(short = 'o', long, default_value = "")]
    output: String,
    /// Label selector (`app=web,tier!=db`).
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Field selector (`status.phase=Running`).
    #[arg(long)]
    field_selector: Option<String>,
    /// After listing, watch for changes.
    #[arg(short = 'w', long)]
    watch: bool,
    #[arg(long)]
    show_labels: bool,
    #[arg(long)]
    no_headers: bool,
}

#[derive(Args)]
struct FileArgs {
    /// Files (YAML or JSON, several documents each), directories, or `-` for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
}

#[derive(Args)]
struct DeleteArgs {
    args: Vec<String>,
    #[arg(short = 'f', long = "filename")]
    files: Vec<String>,
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Delete every object of the kind in the namespace.
    #[arg(long)]
    all: bool,
    /// Seconds given to the object to terminate; -1 uses the object's own.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    grace_period: i64,
    /// background, foreground or orphan (true means background, false orphan).
    #[arg(long, default_value = "background")]
    cascade: String,
    /// Wait until the objects are gone.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    wait: bool,
    /// How long to wait (0s: as long as it takes).
    #[arg(long, default_value = "0s")]
    timeout: humantime::Duration,
    /// Delete at once (grace period 0 unless one is given).
    #[arg(long)]
    force: bool,
    /// Grace period 1.
    #[arg(long)]
    now: bool,
    #[arg(long)]
    ignore_not_found: bool,
}

#[derive(Args)]
struct RunArgs {
    name: String,
    #[arg(long)]
    image: String,
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    replicas: i32,
    /// The container port to expose.
    #[arg(long)]
    port: Option<i32>,
    /// Environment variables, NAME=VALUE; repeatable.
    #[arg(long)]
    env: Vec<String>,
    /// Labels (`a=b,c=d`); default run=NAME.
    #[arg(short = 'l', long)]
    labels: Option<String>,
    /// Always (a Deployment) or Never / OnFailure (a Pod).
    #[arg(long, default_value = "Always")]
    restart: String,
    /// The arguments after `--` are the command, not the image's arguments.
    #[arg(long)]
    command: bool,
    #[arg(last = true)]
    cmd: Vec<String>,
}

#[derive(Args)]
struct ExposeArgs {
    args: Vec<String>,
    #[arg(long)]
    port: Option<i32>,
    #[arg(long)]
    target_port: Option<String>,
    /// ClusterIP (default) or NodePort.
    #[arg(long = "type")]
    svc_type: Option<String>,
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value = "TCP")]
    protocol: String,
}

#[derive(Subcommand)]
enum RolloutVerb {
    /// Watch a rollout until it completes.
    Status {
        args: Vec<String>,
        /// Keep watching until done (false: print the status once).
        #[arg(short = 'w', long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
        watch: bool,
        /// Give up after this long (0s: never).
        #[arg(long, default_value = "0s")]
        timeout: humantime::Duration,
    },
    /// The revisions of a Deployment.
    History { args: Vec<String> },
    /// Roll back to the previous revision (or --to-revision).
    Undo {
        args: Vec<String>,
        #[arg(long, default_value_t = 0)]
        to_revision: i64,
    },
}

#[derive(Args)]
struct DrainArgs {
    node: String,
    /// Also delete pods that no controller manages (they will not come back).
    #[arg(long)]
    force: bool,
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    grace_period: i64,
    /// How long to wait for the pods to go (0s: as long as it takes).
    #[arg(long, default_value = "0s")]
    timeout: humantime::Duration,
    /// Accepted for kubectl compatibility (rkube has no DaemonSets).
    #[arg(long)]
    ignore_daemonsets: bool,
    /// Accepted for kubectl compatibility.
    #[arg(long)]
    delete_emptydir_data: bool,
}

#[derive(Subcommand)]
enum MemberVerb {
    /// List members.
    List,
    /// Add a member by its peer address (host:port); start it with the printed id.
    Add {
        peer: String,
        /// Add it as a learner (promote it once it has caught up).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member by id.
    Remove { id: u64 },
    /// Promote a learner to a voting member.
    Promote { id: u64 },
}

#[derive(Subcommand)]
enum ClusterVerb {
    /// Every member's view: leader, term, raft index, database size.
    Status,
}

/// Why rkctl failed, printed as kubectl prints it; the exit code is 1.
#[derive(Debug, thiserror::Error)]
enum Fail {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("error: {0}")]
    Msg(String),
    /// Already reported on stderr (some of several objects failed).
    #[error("")]
    Reported,
    /// An exec'd command failed: kubectl's message, and its exit code as rkctl's.
    #[error("command terminated with exit code {0}")]
    Exit(u8),
}

impl From<tonic::Status> for Fail {
    fn from(s: tonic::Status) -> Self {
        Fail::Client(ClientError::from(s))
    }
}

fn msg(s: impl Into<String>) -> Fail {
    Fail::Msg(s.into())
}

/// What every verb needs: the client and where it works.
struct Ctx {
    client: Client,
    servers: String,
    namespace: String,
    explicit_namespace: bool,
    all_namespaces: bool,
}

impl Ctx {
    fn api<K: Remote>(&self) -> Api<K> {
        Api::namespaced(&self.client, &self.namespace)
    }

    fn list_api<K: Remote>(&self) -> Api<K> {
        if self.all_namespaces {
            Api::all(&self.client)
        } else {
            self.api()
        }
    }
}

fn kind_info(name: &str) -> Result<&'static KindInfo, Fail> {
    find_kind(name).ok_or_else(|| msg(format!("the server doesn't have a resource type {name:?}")))
}

/// `KIND NAME...` or `KIND/NAME...` as (kind, name) pairs; a lone KIND gives no names.
/// The kinds named, and the (kind, name) pairs named.
type Targets = (Vec<&'static KindInfo>, Vec<(&'static KindInfo, String)>);

fn targets(args: &[String]) -> Result<Targets, Fail> {
    let Some(first) = args.first() else {
        return Err(msg(
            "You must specify the type of resource to get. Use \"rkctl api-resources\" for a complete list of supported resources.",
        ));
    };
    if first.contains('/') {
        let mut out = Vec::new();
        for a in args {
            let (k, n) = a.split_once('/').ok_or_else(|| {
                msg(format!("there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (e.g. 'rkctl get resource/<resource_name>' instead of 'rkctl get resource resource/<resource_name>'): {a}"))
            })?;
            out.push((kind_info(k)?, n.to_string()));
        }
        let mut kinds: Vec<&KindInfo> = Vec::new();
        for (k, _) in &out {
            if !kinds.contains(k) {
                kinds.push(k);
            }
        }
        return Ok((kinds, out));
    }
    let mut kinds = Vec::new();
    for k in first.split(',') {
        if k == "all" {
            for r in ["pods", "services", "deployments", "replicasets"] {
                kinds.push(kind_info(r)?);
            }
        } else {
            kinds.push(kind_info(k)?);
        }
    }
    if args.len() > 1 && kinds.len() > 1 {
        return Err(msg("names cannot be given with several resource types; use TYPE/NAME"));
    }
    let names = args[1..].iter().map(|n| (kinds[0], n.clone())).collect();
    Ok((kinds, names))
}

/// One target of a verb that takes a single object: `KIND NAME` or `KIND/NAME`.
fn one_target(args: &[String]) -> Result<(&'static KindInfo, String), Fail> {
    let (_, names) = targets(args)?;
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(msg("a resource name is required")),
        _ => Err(msg("only one resource may be given")),
    }
}

// ---- get ----

/// One object ready to print in any format.
struct Item {
    name: String,
    namespace: String,
    labels: BTreeMap<String, String>,
    cells: Vec<String>,
    value: Value,
}

fn item<K: Printable>(o: &K, wide: bool, now: SystemTime) -> Item {
    let mut with_type = o.clone();
    with_type.set_type_meta();
    Item {
        name: o.meta().name.clone(),
        namespace: o.meta().namespace.clone(),
        labels: o.meta().labels.clone(),
        cells: o.cells(wide, now),
        value: output::printable(&with_type),
    }
}

struct Section {
    info: &'static KindInfo,
    headers: Vec<&'static str>,
    items: Vec<Item>,
}

fn list_params(selector: &Option<String>, fields: &Option<String>) -> ListParams {
    ListParams::default().labels(selector.as_deref().unwrap_or("")).fields(fields.as_deref().unwrap_or(""))
}

/// The named objects (errors for missing ones go to `errors`), or all that match.
async fn fetch<K: Remote>(
    ctx: &Ctx,
    names: &[String],
    params: &ListParams,
    errors: &mut Vec<ClientError>,
) -> Result<Vec<K>, Fail> {
    if names.is_empty() {
        return Ok(ctx.list_api::<K>().list(params).await?.0);
    }
    let mut out = Vec::new();
    for n in names {
        match ctx.api::<K>().get(n).await {
            Ok(o) => out.push(o),
            Err(e) if e.is_not_found() => errors.push(e),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

async fn get(ctx: &Ctx, a: GetArgs) -> Result<(), Fail> {
    let format = Format::parse(&a.output).map_err(msg)?;
    let (kinds, named) = targets(&a.args)?;
    let params = list_params(&a.selector, &a.field_selector);
    if a.watch {
        if kinds.len() != 1 || named.len() > 1 {
            return Err(msg("you may only watch one resource type and at most one name"));
        }
        let names: Vec<String> = named.iter().map(|(_, n)| n.clone()).collect();
        return with_kind!(kinds[0].kind, K => watch::<K>(ctx, kinds[0], &names, params, &a, format).await,
            _ => Err(msg("unknown kind")));
    }
    let wide = format == Format::Wide;
    let now = SystemTime::now();
    let mut errors = Vec::new();
    let mut sections = Vec::new();
    for info in &kinds {
        let names: Vec<String> = named.iter().filter(|(k, _)| k == info).map(|(_, n)| n.clone()).collect();
        if !named.is_empty() && names.is_empty() {
            continue;
        }
        let section = with_kind!(info.kind, K => {
            let objs = fetch::<K>(ctx, &names, &params, &mut errors).await?;
            Section { info, headers: K::columns(wide), items: objs.iter().map(|o| item(o, wide, now)).collect() }
        }, _ => continue);
        sections.push(section);
    }
    let total: usize = sections.iter().map(|s| s.items.len()).sum();
    let mut out = String::new();
    match format {
        Format::Json | Format::Yaml => {
            let mut values: Vec<Value> = sections.into_iter().flat_map(|s| s.items).map(|i| i.value).collect();
            let single = named.len() == 1 && values.len() == 1;
            if values.is_empty() && !named.is_empty() {
                // Only errors: print nothing but them.
            } else {
                let v = if single { values.remove(0) } else { output::list_of(values) };
                out = if format == Format::Json { output::to_json(&v) } else { output::to_yaml(&v) };
            }
        }
        Format::Name => {
            for s in &sections {
                for i in &s.items {
                    out.push_str(&output::name_of(&type_name(s.info), &i.name));
                    out.push('\n');
                }
            }
        }
        Format::Table | Format::Wide => {
            let multi = sections.iter().filter(|s| !s.items.is_empty()).count() > 1 || kinds.len() > 1;
            let mut tables = Vec::new();
            for s in sections.iter().filter(|s| !s.items.is_empty()) {
                tables.push(section_table(s, ctx, multi, a.show_labels).render(!a.no_headers));
            }
            out = tables.join("\n");
        }
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
    if total == 0 && named.is_empty() && !matches!(format, Format::Json | Format::Yaml) {
        let namespaced = kinds.iter().any(|k| k.namespaced);
        eprintln!("{}", rkube::rkctl::no_resources(namespaced, &ctx.namespace, ctx.all_namespaces));
    }
    report(errors)
}

/// Prints each error on stderr; fails if there were any.
fn report(errors: Vec<ClientError>) -> Result<(), Fail> {
    for e in &errors {
        eprintln!("{e}");
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Fail::Reported)
    }
}

fn section_table(s: &Section, ctx: &Ctx, multi: bool, show_labels: bool) -> Table {
    let mut t = Table::new(&s.headers);
    let has_name = s.headers.first() == Some(&"NAME");
    for i in &s.items {
        let mut row = i.cells.clone();
        if multi && has_name {
            row[0] = output::name_of(&type_name(s.info), &i.name);
        }
        t.push(row);
    }
    if ctx.all_namespaces && s.info.namespaced {
        t.prepend("NAMESPACE", s.items.iter().map(|i| i.namespace.clone()).collect());
    }
    if show_labels {
        t.append("LABELS", s.items.iter().map(|i| printers::labels_text(&i.labels)).collect());
    }
    t
}

async fn watch<K: Remote + Printable>(
    ctx: &Ctx,
    info: &'static KindInfo,
    names: &[String],
    mut params: ListParams,
    a: &GetArgs,
    format: Format,
) -> Result<(), Fail> {
    if let Some(n) = names.first() {
        let f = format!("metadata.name={n}");
        params.field_selector =
            if params.field_selector.is_empty() { f } else { format!("{},{f}", params.field_selector) };
    }
    let api = ctx.list_api::<K>();
    let (objs, meta) = api.list(&params).await?;
    let wide = format == Format::Wide;
    let section = Section {
        info,
        headers: K::columns(wide),
        items: objs.iter().map(|o| item(o, wide, SystemTime::now())).collect(),
    };
    let table = section_table(&section, ctx, false, a.show_labels);
    let widths = table.widths();
    let print_item = |i: Item| {
        let s = match format {
            Format::Json => output::to_json(&i.value),
            Format::Yaml => format!("---\n{}", output::to_yaml(&i.value)),
            Format::Name => format!("{}\n", output::name_of(&type_name(info), &i.name)),
            Format::Table | Format::Wide => {
                let s = Section { info, headers: section.headers.clone(), items: vec![i] };
                let t = section_table(&s, ctx, false, a.show_labels);
                t.rows.first().map(|r| rkube::rkctl::table::render_row(r, &widths)).unwrap_or_default()
            }
        };
        print!("{s}");
        let _ = std::io::stdout().flush();
    };
    if matches!(format, Format::Table | Format::Wide) {
        if objs.is_empty() {
            eprintln!("{}", rkube::rkctl::no_resources(info.namespaced, &ctx.namespace, ctx.all_namespaces));
        } else {
            print!("{}", table.render(!a.no_headers));
        }
    } else {
        for o in &objs {
            print_item(item(o, wide, SystemTime::now()));
        }
    }
    let _ = std::io::stdout().flush();
    let mut stream = api.watch(&params, &meta.resource_version).await?;
    while let Some(ev) = stream.next().await {
        match ev? {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                print_item(item(&o, wide, SystemTime::now()))
            }
            WatchEvent::Bookmark(_) => {}
        }
    }
    Ok(())
}

// ---- describe ----

async fn describe_cmd(ctx: &Ctx, kind: &str, names: Vec<String>, selector: Option<String>) -> Result<(), Fail> {
    let (kinds, named) = if names.is_empty() {
        targets(&[kind.to_string()])?
    } else {
        targets(&std::iter::once(kind.to_string()).chain(names).collect::<Vec<_>>())?
    };
    let params = list_params(&selector, &None);
    let mut errors = Vec::new();
    let mut texts = Vec::new();
    for info in kinds {
        let names: Vec<String> = named.iter().filter(|(k, _)| *k == info).map(|(_, n)| n.clone()).collect();
        with_kind!(info.kind, K => {
            for o in fetch::<K>(ctx, &names, &params, &mut errors).await? {
                texts.push(describe_one(ctx, info, &o).await?);
            }
        }, _ => {});
    }
    print!("{}", texts.join("\n\n"));
    if texts.is_empty() && named.is_empty() {
        eprintln!("{}", rkube::rkctl::no_resources(true, &ctx.namespace, ctx.all_namespaces));
    }
    report(errors)
}

async fn describe_one<K: Describe>(ctx: &Ctx, info: &KindInfo, o: &K) -> Result<String, Fail> {
    let fields = format!("involvedObject.name={},involvedObject.kind={}", o.meta().name, info.kind);
    let events_api: Api<Event> =
        if info.namespaced { Api::namespaced(&ctx.client, &o.meta().namespace) } else { Api::all(&ctx.client) };
    let (events, _) = events_api.list(&ListParams::default().fields(&fields)).await?;
    Ok(describe(o, &events, SystemTime::now()))
}

// ---- create, apply ----

/// Reads every file (`-` is stdin; a directory gives its .yaml, .yml and .json files) and
/// checks every document, before anything is sent.
fn read_manifests(ctx: &Ctx, files: &[String], verb: &str) -> Result<Vec<Manifest>, Fail> {
    let mut all = Vec::new();
    for f in files {
        let mut paths = Vec::new();
        let meta = if f == "-" {
            None
        } else {
            Some(std::fs::metadata(f).map_err(|e| msg(format!("the path {f:?} does not exist: {e}")))?)
        };
        if meta.as_ref().is_some_and(|m| m.is_dir()) {
            let mut entries: Vec<String> = std::fs::read_dir(f)
                .map_err(|e| msg(format!("reading {f:?}: {e}")))?
                .filter_map(|e| e.ok())
                .map(|e| e.path().display().to_string())
                .filter(|p| p.ends_with(".yaml") || p.ends_with(".yml") || p.ends_with(".json"))
                .collect();
            entries.sort();
            paths.extend(entries);
        } else {
            paths.push(f.clone());
        }
        for p in paths {
            let text = if p == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s).map_err(|e| msg(format!("reading stdin: {e}")))?;
                s
            } else {
                std::fs::read_to_string(&p).map_err(|e| msg(format!("reading {p:?}: {e}")))?
            };
            all.extend(parse_manifests(&p, &text, &ctx.namespace).map_err(|e| msg(e.to_string()))?);
        }
    }
    if all.is_empty() {
        return Err(msg(format!("no objects passed to {verb}")));
    }
    for m in &all {
        if ctx.explicit_namespace && m.kind.namespaced && m.namespace != ctx.namespace {
            return Err(msg(format!(
                "the namespace from the provided object {:?} does not match the namespace {:?}. You must pass '--namespace={}' to perform this operation.",
                m.namespace, ctx.namespace, m.namespace
            )));
        }
    }
    Ok(all)
}

/// A server error about one object of a manifest, as kubectl words it.
fn when(e: ClientError, doing: &str, m: &Manifest) -> ClientError {
    match e {
        ClientError::Server { code, reason, message } => {
            ClientError::Server { code, reason, message: format!("error when {doing} {}: {message}", m.location) }
        }
        other => other,
    }
}

fn decode<K: Object>(v: &Value) -> Result<K, Fail> {
    serde_json::from_value(v.clone()).map_err(|e| msg(format!("decoding a checked manifest: {e}")))
}

async fn create(ctx: &Ctx, files: &[String]) -> Result<(), Fail> {
    let manifests = read_manifests(ctx, files, "create")?;
    let mut errors = Vec::new();
    for m in &manifests {
        let res = with_kind!(m.kind.kind, K => {
            let obj: K = decode(&m.object)?;
            Api::<K>::namespaced(&ctx.client, &m.namespace).create(&obj).await.map(|o| o.meta().name.clone())
        }, _ => continue);
        match res {
            Ok(name) => println!("{} created", output::name_of(&type_name(m.kind), &name)),
            Err(e) => errors.push(when(e, "creating", m)),
        }
    }
    report(errors)
}

async fn apply_cmd(ctx: &Ctx, files: &[String]) -> Result<(), Fail> {
    let manifests = read_manifests(ctx, files, "apply")?;
    let mut errors = Vec::new();
    for m in &manifests {
        let res = with_kind!(m.kind.kind, K => apply_one::<K>(ctx, m).await, _ => continue);
        match res {
            Ok(what) => println!("{} {what}", output::name_of(&type_name(m.kind), &m.name)),
            Err(Fail::Client(e)) => errors.push(when(e, "applying", m)),
            Err(other) => return Err(other),
        }
    }
    report(errors)
}

async fn apply_one<K: Remote>(ctx: &Ctx, m: &Manifest) -> Result<&'static str, Fail> {
    let api = Api::<K>::namespaced(&ctx.client, &m.namespace);
    let modified = apply::with_last_applied(&m.given);
    let current = if m.name.is_empty() { None } else { api.get_opt(&m.name).await? };
    let Some(current) = current else {
        let mut obj: K = decode(&m.object)?;
        let text = apply::last_applied_text(&m.given);
        obj.meta_mut().annotations.insert(apply::LAST_APPLIED.into(), text);
        api.create(&obj).await?;
        return Ok("created");
    };
    let original: Value = current
        .meta()
        .annotations
        .get(apply::LAST_APPLIED)
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null);
    let live = serde_json::to_value(&current).map_err(|e| msg(e.to_string()))?;
    let mut patch = apply::three_way_patch(&original, &modified, &live);
    if let Some(p) = patch.as_object_mut() {
        p.remove("apiVersion");
        p.remove("kind");
    }
    if patch.as_object().is_some_and(|p| p.is_empty()) {
        return Ok("unchanged");
    }
    api.patch(&m.name, &patch, false).await?;
    Ok("configured")
}

// ---- delete ----

fn delete_params(a: &DeleteArgs) -> Result<DeleteParams, Fail> {
    let propagation = match a.cascade.as_str() {
        "background" | "true" => "Background",
        "foreground" => "Foreground",
        "orphan" | "false" => "Orphan",
        other => {
            return Err(msg(format!(
                "invalid cascade value ({other}). Must be \"background\", \"foreground\", or \"orphan\""
            )))
        }
    };
    let mut grace = a.grace_period;
    if a.now {
        grace = 1;
    }
    if a.force && grace < 0 {
        grace = 0;
    }
    if a.force && grace == 0 {
        eprintln!("Warning: Immediate deletion does not wait for confirmation that the running resource has been terminated. The resource may continue to run on the cluster indefinitely.");
    }
    Ok(DeleteParams {
        grace_period_seconds: (grace >= 0).then_some(grace),
        propagation_policy: propagation.into(),
        ..Default::default()
    })
}

async fn delete(ctx: &Ctx, a: DeleteArgs) -> Result<(), Fail> {
    let params = delete_params(&a)?;
    let mut work: Vec<(&'static KindInfo, String, String)> = Vec::new();
    if !a.files.is_empty() {
        for m in read_manifests(ctx, &a.files, "delete")? {
            work.push((m.kind, m.namespace.clone(), m.name.clone()));
        }
    } else {
        let (kinds, named) = targets(&a.args)?;
        if named.is_empty() {
            if a.selector.is_none() && !a.all {
                return Err(msg("resource(s) were provided, but no name was specified"));
            }
            let lp = list_params(&a.selector, &None);
            for info in kinds {
                with_kind!(info.kind, K => {
                    for o in ctx.list_api::<K>().list(&lp).await?.0 {
                        work.push((info, o.meta().namespace.clone(), o.meta().name.clone()));
                    }
                }, _ => {});
            }
            if work.is_empty() {
                eprintln!("{}", rkube::rkctl::no_resources(true, &ctx.namespace, ctx.all_namespaces));
            }
        } else {
            for (k, n) in named {
                work.push((k, ctx.namespace.clone(), n));
            }
        }
    }
    let mut errors = Vec::new();
    let mut pending = Vec::new();
    for (info, ns, name) in work {
        let ns = if ns.is_empty() { ctx.namespace.clone() } else { ns };
        let res = with_kind!(info.kind, K => {
            Api::<K>::namespaced(&ctx.client, &ns).delete(&name, &params).await.map(|o| o.meta().uid.clone())
        }, _ => continue);
        match res {
            Ok(uid) => {
                println!("{} {name:?} deleted", type_name(info));
                pending.push((info, ns, name, uid));
            }
            Err(e) if e.is_not_found() && a.ignore_not_found => {}
            Err(e) => errors.push(e),
        }
    }
    let _ = std::io::stdout().flush();
    if a.wait {
        let deadline = (!a.timeout.is_zero()).then(|| Instant::now() + *a.timeout);
        for (info, ns, name, uid) in pending {
            with_kind!(info.kind, K => wait_gone::<K>(ctx, &ns, &name, &uid, deadline).await?, _ => {});
        }
    }
    report(errors)
}

/// Waits until the object `name` with `uid` no longer exists.
async fn wait_gone<K: Remote>(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    uid: &str,
    deadline: Option<Instant>,
) -> Result<(), Fail> {
    let api = Api::<K>::namespaced(&ctx.client, ns);
    loop {
        match api.get_opt(name).await? {
            None => return Ok(()),
            Some(o) if o.meta().uid != uid => return Ok(()),
            Some(_) => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(msg(format!("timed out waiting for the condition on {}/{name}", K::RESOURCE)));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---- run, scale, expose ----

fn parse_pairs(s: &str, what: &str) -> Result<BTreeMap<String, String>, Fail> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| msg(format!("invalid {what} {part:?}: expected key=value")))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Checks an object that rkctl built with the server's rules, so that errors read the same.
fn check<K: Defaults + Validate>(obj: &K) -> Result<(), Fail> {
    let mut o = obj.clone();
    o.apply_defaults();
    let errs = o.validate();
    if errs.is_empty() {
        Ok(())
    } else {
        Err(msg(format!("The {}", invalid_message(K::KIND, K::API_VERSION, &obj.meta().name, &errs))))
    }
}

async fn run_cmd(ctx: &Ctx, a: RunArgs) -> Result<(), Fail> {
    let labels = match &a.labels {
        Some(l) => parse_pairs(l, "label")?,
        None => [("run".to_string(), a.name.clone())].into(),
    };
    let mut env = Vec::new();
    for e in &a.env {
        let (k, v) = e.split_once('=').ok_or_else(|| msg(format!("invalid env: {e}")))?;
        env.push(EnvVar { name: k.into(), value: v.into() });
    }
    let (command, args) = if a.command { (a.cmd.clone(), vec![]) } else { (vec![], a.cmd.clone()) };
    let container = Container {
        name: a.name.clone(),
        image: a.image.clone(),
        command,
        args,
        env,
        ports: a.port.map(|p| vec![ContainerPort { container_port: p, ..Default::default() }]).unwrap_or_default(),
        ..Default::default()
    };
    let meta = ObjectMeta {
        name: a.name.clone(),
        namespace: ctx.namespace.clone(),
        labels: labels.clone(),
        ..Default::default()
    };
    match a.restart.as_str() {
        "Always" => {
            let d = Deployment {
                metadata: Some(meta.clone()),
                spec: Some(DeploymentSpec {
                    replicas: Some(a.replicas),
                    selector: Some(LabelSelector { match_labels: labels.clone(), ..Default::default() }),
                    template: Some(PodTemplateSpec {
                        metadata: Some(ObjectMeta { labels, ..Default::default() }),
                        spec: Some(PodSpec { containers: vec![container], ..Default::default() }),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            check(&d)?;
            let d = ctx.api::<Deployment>().create(&d).await?;
            println!("deployment.apps/{} created", d.meta().name);
        }
        "Never" | "OnFailure" => {
            let p = Pod {
                metadata: Some(meta),
                spec: Some(PodSpec {
                    containers: vec![container],
                    restart_policy: a.restart.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            check(&p)?;
            let p = ctx.api::<Pod>().create(&p).await?;
            println!("pod/{} created", p.meta().name);
        }
        other => return Err(msg(format!("invalid restart policy: {other}"))),
    }
    Ok(())
}

async fn scale(ctx: &Ctx, args: &[String], replicas: i32) -> Result<(), Fail> {
    let (_, named) = targets(args)?;
    if named.is_empty() {
        return Err(msg("a resource name is required"));
    }
    let mut errors = Vec::new();
    for (info, name) in named {
        let res = match info.kind {
            "Deployment" => ctx.api::<Deployment>().scale(&name, replicas).await.map(|_| ()),
            "ReplicaSet" => {
                if replicas < 0 {
                    return Err(msg(
                        "The --replicas=COUNT flag is required, and COUNT must be greater than or equal to 0",
                    ));
                }
                ctx.api::<ReplicaSet>().patch(&name, &json!({"spec": {"replicas": replicas}}), false).await.map(|_| ())
            }
            other => return Err(msg(format!("cannot scale a {other}: only deployments and replica sets scale"))),
        };
        match res {
            Ok(()) => println!("{}/{name} scaled", type_name(info)),
            Err(e) => errors.push(e),
        }
    }
    report(errors)
}

async fn expose(ctx: &Ctx, a: ExposeArgs) -> Result<(), Fail> {
    let (info, name) = one_target(&a.args)?;
    let (selector, labels, port) = match info.kind {
        "Deployment" => {
            let d = ctx.api::<Deployment>().get(&name).await?;
            let spec = d.spec.clone().unwrap_or_default();
            (selector_of(spec.selector.as_ref(), info)?, d.meta().labels.clone(), first_port(spec.template.as_ref()))
        }
        "ReplicaSet" => {
            let r = ctx.api::<ReplicaSet>().get(&name).await?;
            let spec = r.spec.clone().unwrap_or_default();
            (selector_of(spec.selector.as_ref(), info)?, r.meta().labels.clone(), first_port(spec.template.as_ref()))
        }
        "Pod" => {
            let p = ctx.api::<Pod>().get(&name).await?;
            let port = first_port(Some(&PodTemplateSpec { metadata: None, spec: p.spec.clone() }));
            (p.meta().labels.clone(), p.meta().labels.clone(), port)
        }
        "Service" => {
            let s = ctx.api::<Service>().get(&name).await?;
            let spec = s.spec.clone().unwrap_or_default();
            (spec.selector.clone(), s.meta().labels.clone(), spec.ports.first().map(|p| p.port))
        }
        other => return Err(msg(format!("cannot expose a {other}"))),
    };
    if selector.is_empty() {
        return Err(msg(format!(
            "couldn't retrieve selectors via --selector flag or introspection: the {} has no labels",
            info.kind
        )));
    }
    let port = a.port.or(port).ok_or_else(|| msg("couldn't find port via --port flag or introspection"))?;
    let svc = Service {
        metadata: Some(ObjectMeta {
            name: a.name.clone().unwrap_or(name),
            namespace: ctx.namespace.clone(),
            labels,
            ..Default::default()
        }),
        spec: Some(ServiceSpec {
            selector,
            r#type: a.svc_type.clone().unwrap_or_default(),
            ports: vec![ServicePort {
                port,
                protocol: a.protocol.clone(),
                target_port: a.target_port.clone().unwrap_or_else(|| port.to_string()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    check(&svc)?;
    let s = ctx.api::<Service>().create(&svc).await?;
    println!("service/{} exposed", s.meta().name);
    Ok(())
}

fn selector_of(s: Option<&LabelSelector>, info: &KindInfo) -> Result<BTreeMap<String, String>, Fail> {
    let s = s.cloned().unwrap_or_default();
    if !s.match_expressions.is_empty() {
        return Err(msg(format!(
            "couldn't convert expressions - \"{}\" to map-based selector format: the {} uses matchExpressions",
            s.match_expressions.first().map(|e| e.key.clone()).unwrap_or_default(),
            info.kind
        )));
    }
    Ok(s.match_labels)
}

fn first_port(t: Option<&PodTemplateSpec>) -> Option<i32> {
    t?.spec.as_ref()?.containers.iter().flat_map(|c| &c.ports).map(|p| p.container_port).next()
}

// ---- edit ----

const EDIT_HEADER: &str = "# Please edit the object below. Lines beginning with a '#' will be ignored,\n# and an empty file will abort the edit. If an error occurs while saving, the edit is\n# cancelled and a copy of your changes is kept.\n#\n";

async fn edit(ctx: &Ctx, args: &[String]) -> Result<(), Fail> {
    let (info, name) = one_target(args)?;
    with_kind!(info.kind, K => edit_one::<K>(ctx, info, &name).await, _ => Err(msg("unknown kind")))
}

fn editor() -> String {
    ["RKUBE_EDITOR", "KUBE_EDITOR", "EDITOR"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "vi".into())
}

async fn edit_one<K: Remote>(ctx: &Ctx, info: &'static KindInfo, name: &str) -> Result<(), Fail> {
    let api = ctx.api::<K>();
    let mut obj = api.get(name).await?;
    obj.set_type_meta();
    let original = output::to_yaml(&output::printable(&obj));
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let path = std::env::temp_dir().join(format!("rkctl-edit-{}-{nanos}.yaml", std::process::id()));
    std::fs::write(&path, format!("{EDIT_HEADER}{original}"))
        .map_err(|e| msg(format!("writing {}: {e}", path.display())))?;
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{} \"$1\"", editor()))
        .arg("sh")
        .arg(&path)
        .status()
        .map_err(|e| msg(format!("starting the editor: {e}")))?;
    let keep = |e: Fail| -> Fail {
        eprintln!("A copy of your changes has been stored to {:?}", path.display().to_string());
        e
    };
    if !status.success() {
        return Err(keep(msg(format!("the editor exited with {status}"))));
    }
    let edited = std::fs::read_to_string(&path).map_err(|e| msg(format!("reading {}: {e}", path.display())))?;
    let body: String = edited.lines().filter(|l| !l.trim_start().starts_with('#')).map(|l| format!("{l}\n")).collect();
    if body.trim().is_empty() || body == original {
        let _ = std::fs::remove_file(&path);
        println!("Edit cancelled, no changes made.");
        return Ok(());
    }
    let manifests = match parse_manifests(&path.display().to_string(), &body, &ctx.namespace) {
        Ok(m) => m,
        Err(e) => return Err(keep(msg(e.to_string()))),
    };
    let [m] = manifests.as_slice() else {
        return Err(keep(msg("the edited file must hold exactly one object")));
    };
    if m.kind != info || m.name != name {
        return Err(keep(msg("the kind and name of the edited object must not change")));
    }
    let new: K = decode(&m.object)?;
    match api.update(&new).await {
        Ok(_) => {
            let _ = std::fs::remove_file(&path);
            println!("{}/{name} edited", type_name(info));
            Ok(())
        }
        Err(e) => {
            let text = match &e {
                ClientError::Server { message, .. } => format!("error: {message}"),
                other => other.to_string(),
            };
            eprintln!("{text}");
            Err(keep(msg("Edit cancelled, no valid changes were saved.")))
        }
    }
}

// ---- logs ----

/// `NAME` or `pod/NAME` (logs and exec work on pods only).
fn pod_name(pod: &str) -> Result<String, Fail> {
    match pod.split_once('/') {
        Some((k, n)) if kind_info(k)?.kind == "Pod" => Ok(n.to_string()),
        Some((k, _)) => Err(msg(format!("logs and exec work on pods, not {k}"))),
        None => Ok(pod.to_string()),
    }
}

async fn logs(
    ctx: &Ctx,
    pod: &str,
    container: Option<String>,
    follow: bool,
    tail: i64,
    previous: bool,
) -> Result<(), Fail> {
    let name = pod_name(pod)?;
    let req = LogsRequest {
        namespace: ctx.namespace.clone(),
        name,
        container: container.unwrap_or_default(),
        follow,
        tail_lines: (tail >= 0).then_some(tail),
        previous,
    };
    let mut stream = ctx.api::<Pod>().logs(req).await?;
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.message().await? {
        let _ = out.write_all(&chunk.data);
        let _ = out.flush();
    }
    Ok(())
}

async fn exec(ctx: &Ctx, pod: &str, container: Option<String>, command: Vec<String>) -> Result<(), Fail> {
    let name = pod_name(pod)?;
    let req = ExecRequest { namespace: ctx.namespace.clone(), name, container: container.unwrap_or_default(), command };
    let mut stream = ctx.api::<Pod>().exec(req).await?;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    while let Some(m) = stream.message().await? {
        if !m.stdout.is_empty() {
            let _ = out.write_all(&m.stdout);
            let _ = out.flush();
        }
        if !m.stderr.is_empty() {
            let _ = err.write_all(&m.stderr);
        }
        if let Some(code) = m.exit_code {
            return match code {
                0 => Ok(()),
                c => Err(Fail::Exit(u8::try_from(c).unwrap_or(u8::MAX))),
            };
        }
    }
    Err(msg("the exec stream ended without an exit code (the node or the API server went away)"))
}

// ---- rollout ----

fn deployment_target(args: &[String]) -> Result<String, Fail> {
    let (info, name) = one_target(args)?;
    if info.kind != "Deployment" {
        return Err(msg(format!("rollout works on deployments, not {}", info.resource)));
    }
    Ok(name)
}

async fn rollout_cmd(ctx: &Ctx, verb: RolloutVerb) -> Result<(), Fail> {
    match verb {
        RolloutVerb::Status { args, watch, timeout } => {
            let name = deployment_target(&args)?;
            let deadline = (!timeout.is_zero()).then(|| Instant::now() + *timeout);
            let mut last = String::new();
            loop {
                let d = ctx.api::<Deployment>().get(&name).await?;
                let (line, done) = rollout::status(&d).map_err(msg)?;
                if line != last {
                    println!("{line}");
                    let _ = std::io::stdout().flush();
                    last = line;
                }
                if done || !watch {
                    return Ok(());
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(msg("timed out waiting for the condition"));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        RolloutVerb::History { args } => {
            let name = deployment_target(&args)?;
            let d = ctx.api::<Deployment>().get(&name).await?;
            let (sets, _) = ctx.api::<ReplicaSet>().list(&ListParams::default()).await?;
            println!("deployment.apps/{name}");
            print!("{}", rollout::history(&d, &sets).render(true));
            Ok(())
        }
        RolloutVerb::Undo { args, to_revision } => {
            let name = deployment_target(&args)?;
            let api = ctx.api::<Deployment>();
            let mut d = api.get(&name).await?;
            let (sets, _) = ctx.api::<ReplicaSet>().list(&ListParams::default()).await?;
            match rollout::undo(&d, &sets, to_revision).map_err(msg)? {
                rollout::Undo::Skip(rev) => {
                    println!(
                        "deployment.apps/{name} skipped rollback (current template already matches revision {rev})"
                    )
                }
                rollout::Undo::RollBack(t) => {
                    d.spec.get_or_insert_with(Default::default).template = Some(*t);
                    api.update(&d).await?;
                    println!("deployment.apps/{name} rolled back");
                }
            }
            Ok(())
        }
    }
}

// ---- nodes ----

async fn set_unschedulable(ctx: &Ctx, node: &str, on: bool) -> Result<(), Fail> {
    let api = Api::<Node>::all(&ctx.client);
    let n = api.get(node).await?;
    let already = n.spec.as_ref().is_some_and(|s| s.unschedulable) == on;
    let word = if on { "cordoned" } else { "uncordoned" };
    if already {
        println!("node/{node} already {word}");
        return Ok(());
    }
    api.patch(node, &json!({"spec": {"unschedulable": on}}), false).await?;
    println!("node/{node} {word}");
    Ok(())
}

async fn drain(ctx: &Ctx, a: DrainArgs) -> Result<(), Fail> {
    set_unschedulable(ctx, &a.node, true).await?;
    let pods_api = Api::<Pod>::all(&ctx.client);
    let (pods, _) = pods_api.list(&ListParams::default().fields(&format!("spec.nodeName={}", a.node))).await?;
    let unmanaged: Vec<String> = pods
        .iter()
        .filter(|p| rkube::api::controller_of(p.meta()).is_none())
        .map(|p| rkube::api::full_name(p.meta()))
        .collect();
    if !unmanaged.is_empty() && !a.force {
        return Err(msg(format!(
            "unable to drain node {:?} due to error: cannot delete Pods that declare no controller (use --force to override): {}",
            a.node,
            unmanaged.join(", ")
        )));
    }
    if !unmanaged.is_empty() {
        eprintln!("Warning: deleting Pods that declare no controller: {}", unmanaged.join(", "));
    }
    let params =
        DeleteParams { grace_period_seconds: (a.grace_period >= 0).then_some(a.grace_period), ..Default::default() };
    let deadline = (!a.timeout.is_zero()).then(|| Instant::now() + *a.timeout);
    let mut pending = Vec::new();
    for p in &pods {
        let m = p.meta();
        println!("evicting pod {}", rkube::api::full_name(m));
        match Api::<Pod>::namespaced(&ctx.client, &m.namespace).delete(&m.name, &params).await {
            Ok(_) => pending.push(p),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    for p in pending {
        let m = p.meta();
        wait_gone::<Pod>(ctx, &m.namespace, &m.name, &m.uid, deadline).await?;
        println!("pod/{} evicted", m.name);
    }
    println!("node/{} drained", a.node);
    Ok(())
}

// ---- the store: members and cluster status ----

/// A channel to the first server that answers.
async fn connect(list: &str) -> Result<Channel, Fail> {
    let mut last = String::from("no --server given");
    for addr in rkube::client::parse_servers(list) {
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Fail::Client(ClientError::Connect(e.to_string())))?;
        match ep.connect_timeout(Duration::from_secs(2)).timeout(Duration::from_secs(10)).connect().await {
            Ok(ch) => return Ok(ch),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(Fail::Client(ClientError::Connect(last)))
}

fn store_error(s: tonic::Status) -> Fail {
    Fail::Client(ClientError::Server { code: s.code(), reason: format!("{:?}", s.code()), message: s.message().into() })
}

fn print_members(members: &[epb::Member]) {
    let mut t = Table::new(&["ID", "NAME", "PEER ADDRS", "CLIENT ADDRS", "ROLE"]);
    for m in members {
        t.push(vec![
            m.id.to_string(),
            if m.name.is_empty() { "<unstarted>".into() } else { m.name.clone() },
            m.peer_ur_ls.join(","),
            m.client_ur_ls.join(","),
            if m.is_learner { "learner".into() } else { "voter".into() },
        ]);
    }
    print!("{}", t.render(true));
}

async fn member(servers: &str, verb: MemberVerb) -> Result<(), Fail> {
    let mut c = ClusterClient::new(connect(servers).await?);
    match verb {
        MemberVerb::List => {
            let r = c.member_list(epb::MemberListRequest::default()).await.map_err(store_error)?.into_inner();
            print_members(&r.members);
        }
        MemberVerb::Add { peer, learner } => {
            let req = epb::MemberAddRequest { peer_ur_ls: vec![format!("http://{peer}")], is_learner: learner };
            let r = c.member_add(req).await.map_err(store_error)?.into_inner();
            let m = r.member.unwrap_or_default();
            println!("member {} added{}; start it with:", m.id, if learner { " as a learner" } else { "" });
            let cluster: Vec<String> = r
                .members
                .iter()
                .filter_map(|m| m.peer_ur_ls.first().map(|u| format!("{}={}", m.id, u.trim_start_matches("http://"))))
                .collect();
            println!(
                "  rkube server --id {} --listen-peer {} --initial-cluster {} --initial-cluster-state existing",
                m.id,
                peer,
                cluster.join(",")
            );
        }
        MemberVerb::Remove { id } => {
            c.member_remove(epb::MemberRemoveRequest { id }).await.map_err(store_error)?;
            println!("member {id} removed");
        }
        MemberVerb::Promote { id } => {
            c.member_promote(epb::MemberPromoteRequest { id }).await.map_err(store_error)?;
            println!("member {id} promoted");
        }
    }
    Ok(())
}

async fn cluster_status(servers: &str) -> Result<(), Fail> {
    let mut c = ClusterClient::new(connect(servers).await?);
    let members = c.member_list(epb::MemberListRequest::default()).await.map_err(store_error)?.into_inner().members;
    let mut t = Table::new(&["ID", "NAME", "ENDPOINT", "LEADER", "TERM", "RAFT INDEX", "APPLIED", "DB SIZE"]);
    for m in &members {
        let addr = m.client_ur_ls.first().map(|u| u.trim_start_matches("http://").to_string());
        let status = match &addr {
            Some(a) => match connect(a).await {
                Ok(ch) => MaintenanceClient::new(ch).status(epb::StatusRequest {}).await.ok().map(|r| r.into_inner()),
                Err(_) => None,
            },
            None => None,
        };
        let name = if m.name.is_empty() { "<unstarted>".to_string() } else { m.name.clone() };
        t.push(match status {
            Some(s) => vec![
                m.id.to_string(),
                name,
                addr.unwrap_or_default(),
                (s.leader == m.id).to_string(),
                s.raft_term.to_string(),
                s.raft_index.to_string(),
                s.raft_applied_index.to_string(),
                format!("{} kB", s.db_size / 1000),
            ],
            None => {
                let mut row = vec![m.id.to_string(), name, addr.unwrap_or_default(), "unreachable".into()];
                row.extend(std::iter::repeat_n("-".to_string(), 4));
                row
            }
        });
    }
    print!("{}", t.render(true));
    Ok(())
}

// ---- main ----

/// The masters: `--server`/RKUBE_SERVER (clap has merged them), else the config file, else
/// the default.
fn servers(flag: Option<&str>) -> Result<String, Fail> {
    let cfg = match config::default_path() {
        Some(p) if flag.is_none_or(|f| f.trim().is_empty()) => config::load(&p).map_err(|e| msg(e.to_string()))?,
        _ => None,
    };
    Ok(config::resolve(flag, None, cfg.as_ref()))
}

async fn run(cli: Cli) -> Result<(), Fail> {
    let servers = servers(cli.server.as_deref())?;
    let ctx = Ctx {
        client: Client::from_list(&servers)?,
        servers,
        namespace: cli.namespace.clone().unwrap_or_else(|| "default".into()),
        explicit_namespace: cli.namespace.is_some(),
        all_namespaces: cli.all_namespaces,
    };
    match cli.command {
        Command::Get(a) => get(&ctx, a).await,
        Command::Describe { kind, names, selector } => describe_cmd(&ctx, &kind, names, selector).await,
        Command::Create(f) => create(&ctx, &f.files).await,
        Command::Apply(f) => apply_cmd(&ctx, &f.files).await,
        Command::Delete(a) => delete(&ctx, a).await,
        Command::Run(a) => run_cmd(&ctx, a).await,
        Command::Scale { args, replicas } => scale(&ctx, &args, replicas).await,
        Command::Edit { args } => edit(&ctx, &args).await,
        Command::Expose(a) => expose(&ctx, a).await,
        Command::Exec { pod, container, command } => exec(&ctx, &pod, container, command).await,
        Command::Logs { pod, container, follow, tail, previous } => {
            logs(&ctx, &pod, container, follow, tail, previous).await
        }
        Command::Rollout { verb } => rollout_cmd(&ctx, verb).await,
        Command::Cordon { node } => set_unschedulable(&ctx, &node, true).await,
        Command::Uncordon { node } => set_unschedulable(&ctx, &node, false).await,
        Command::Drain(a) => drain(&ctx, a).await,
        Command::Member { verb } => member(&ctx.servers, verb).await,
        Command::Cluster { verb: ClusterVerb::Status } => cluster_status(&ctx.servers).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Every kind the API serves has a table; this keeps KINDS and the printers in step.
    debug_assert!(KINDS.iter().all(|k| find_kind(k.resource).is_some()));
    let rt = tokio::runtime::Runtime::new().expect("building the tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail::Reported) => ExitCode::from(1),
        Err(Fail::Exit(code)) => {
            eprintln!("{}", Fail::Exit(code));
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}
