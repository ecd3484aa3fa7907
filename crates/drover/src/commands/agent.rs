//! `drover agent`: run the host agent in the foreground.

use std::net::SocketAddr;
use std::path::Path;

use clap::Args;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Serve Prometheus metrics of every app's proxy at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Take over from the agent running for this root (an upgrade): it hands its listening
    /// sockets over, finishes its in-flight requests and exits; the apps keep running.
    #[arg(long)]
    pub replace: bool,
}

pub fn run(root: &Path, args: AgentArgs) -> anyhow::Result<()> {
    drover_agent::Agent::run(
        root,
        drover_agent::Options {
            metrics: args.metrics,
            replace: args.replace,
        },
    )?;
    Ok(())
}
