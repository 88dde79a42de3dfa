//! `rkctl`: the command-line client, modelled on kubectl. For now it speaks to the store:
//! `rkctl member list|add|remove|promote` and `rkctl cluster status`. The object verbs (get,
//! create, run, …) come with the object API.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rkube::pb::etcdserverpb as epb;
use rkube::pb::etcdserverpb::cluster_client::ClusterClient;
use rkube::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(name = "rkctl", version, about = "Command-line client for rkube")]
struct Cli {
    /// Masters to talk to, comma-separated; the next one is tried when one fails.
    #[arg(long, global = true, env = "RKUBE_SERVER", default_value = "127.0.0.1:6443")]
    server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("Unable to connect to the server: {0}")]
    Connect(String),
    #[error("Error from server ({code:?}): {message}")]
    Server { code: tonic::Code, message: String },
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        CliError::Server { code: s.code(), message: s.message().to_string() }
    }
}

fn servers(list: &str) -> Vec<String> {
    list.split(',').map(|s| s.trim().trim_start_matches("http://").to_string()).filter(|s| !s.is_empty()).collect()
}

/// A channel to the first server that answers.
async fn connect(list: &str) -> Result<Channel, CliError> {
    let mut last = String::from("no --server given");
    for addr in servers(list) {
        let ep = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| CliError::Connect(e.to_string()))?;
        match ep.connect_timeout(Duration::from_secs(2)).timeout(Duration::from_secs(10)).connect().await {
            Ok(ch) => return Ok(ch),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(CliError::Connect(last))
}

fn print_members(members: &[epb::Member]) {
    let rows: Vec<[String; 5]> = members
        .iter()
        .map(|m| {
            [
                m.id.to_string(),
                if m.name.is_empty() { "<unstarted>".into() } else { m.name.clone() },
                m.peer_ur_ls.join(","),
                m.client_ur_ls.join(","),
                if m.is_learner { "learner".into() } else { "voter".into() },
            ]
        })
        .collect();
    print_table(&["ID", "NAME", "PEER ADDRS", "CLIENT ADDRS", "ROLE"], &rows);
}

/// Prints a table the way kubectl does: upper-case headers, columns padded by three spaces.
fn print_table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) {
    let mut widths = headers.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Member { verb } => {
            let mut c = ClusterClient::new(connect(&cli.server).await?);
            match verb {
                MemberVerb::List => {
                    let r = c.member_list(epb::MemberListRequest::default()).await?.into_inner();
                    print_members(&r.members);
                }
                MemberVerb::Add { peer, learner } => {
                    let req = epb::MemberAddRequest { peer_ur_ls: vec![format!("http://{peer}")], is_learner: learner };
                    let r = c.member_add(req).await?.into_inner();
                    let m = r.member.unwrap_or_default();
                    println!("member {} added{}; start it with:", m.id, if learner { " as a learner" } else { "" });
                    let cluster: Vec<String> = r
                        .members
                        .iter()
                        .filter_map(|m| {
                            m.peer_ur_ls.first().map(|u| format!("{}={}", m.id, u.trim_start_matches("http://")))
                        })
                        .collect();
                    println!(
                        "  rkube server --id {} --listen-peer {} --initial-cluster {} --initial-cluster-state existing",
                        m.id,
                        peer,
                        cluster.join(",")
                    );
                }
                MemberVerb::Remove { id } => {
                    c.member_remove(epb::MemberRemoveRequest { id }).await?;
                    println!("member {id} removed");
                }
                MemberVerb::Promote { id } => {
                    c.member_promote(epb::MemberPromoteRequest { id }).await?;
                    println!("member {id} promoted");
                }
            }
        }
        Command::Cluster { verb: ClusterVerb::Status } => {
            let mut c = ClusterClient::new(connect(&cli.server).await?);
            let members = c.member_list(epb::MemberListRequest::default()).await?.into_inner().members;
            let mut rows = Vec::new();
            for m in &members {
                let addr = m.client_ur_ls.first().map(|u| u.trim_start_matches("http://").to_string());
                let status = match &addr {
                    Some(a) => match connect(a).await {
                        Ok(ch) => {
                            MaintenanceClient::new(ch).status(epb::StatusRequest {}).await.ok().map(|r| r.into_inner())
                        }
                        Err(_) => None,
                    },
                    None => None,
                };
                let name = if m.name.is_empty() { "<unstarted>".to_string() } else { m.name.clone() };
                rows.push(match status {
                    Some(s) => [
                        m.id.to_string(),
                        name,
                        addr.unwrap_or_default(),
                        if s.leader == m.id { "true".into() } else { "false".into() },
                        s.raft_term.to_string(),
                        s.raft_index.to_string(),
                        s.raft_applied_index.to_string(),
                        format!("{} kB", s.db_size / 1000),
                    ],
                    None => [
                        m.id.to_string(),
                        name,
                        addr.unwrap_or_default(),
                        "unreachable".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                    ],
                });
            }
            print_table(&["ID", "NAME", "ENDPOINT", "LEADER", "TERM", "RAFT INDEX", "APPLIED", "DB SIZE"], &rows);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("building the tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}
