//! `drover agent`: run the host agent in the foreground.

use std::path::Path;

use clap::Args;

#[derive(Debug, Args)]
pub struct AgentArgs {}

pub fn run(root: &Path, _args: AgentArgs) -> anyhow::Result<()> {
    drover_agent::Agent::run(root)?;
    Ok(())
}
