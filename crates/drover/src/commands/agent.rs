//! `drover agent`: run the host agent in the foreground.

use std::net::SocketAddr;
use std::path::Path;

use clap::Args;

use crate::output::hinted;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Serve Prometheus metrics of every app's proxy at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Take over from the agent running for this root (an upgrade): it hands its listening
    /// sockets over, finishes its in-flight requests and exits; the apps keep running.
    #[arg(long)]
    pub replace: bool,
    /// After each deploy, remove the releases no app's N newest generations need (their
    /// dependencies stay too) and merge transfers' small packs; 0 turns it off.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub gc_keep: usize,
}

pub fn run(root: &Path, args: AgentArgs) -> anyhow::Result<()> {
    // Apps' output goes through this very binary as their log writer (its running file,
    // even once an upgrade has replaced it on disk).
    drover_agent::logs::set_writer("/proc/self/exe".into());
    drover_agent::Agent::run(
        root,
        drover_agent::Options {
            metrics: args.metrics,
            replace: args.replace,
            gc_keep: args.gc_keep,
        },
    )
    .map_err(|e| {
        let message = format!("cannot run the drover agent for {}: {e}", root.display());
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            hinted(
                message,
                "run the agent as the user who owns the root (e.g. with sudo), or give it a root of your own with `--root DIR`",
            )
        } else {
            anyhow::anyhow!(message)
        }
    })
}
