//! `drover completions SHELL` and `drover man`: what a shell and `man` need to know of
//! drover's commands, generated from the same definitions that parse them.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write drover.1 and drover-COMMAND.1 (one per command) into DIR instead of printing
    /// drover.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn run_completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = crate::cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "drover", &mut out);
    print!("{}", String::from_utf8_lossy(&out));
    Ok(())
}

pub fn run_man(args: ManArgs) -> anyhow::Result<()> {
    let cmd = crate::cli::command();
    match args.dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            print!("{}", String::from_utf8_lossy(&out));
            Ok(())
        }
        Some(dir) => {
            use anyhow::Context;
            std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
            let mut pages: Vec<String> = std::fs::read_dir(&dir)?
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("drover") && n.ends_with(".1"))
                .collect();
            pages.sort();
            eprintln!("wrote {} man pages into {}", pages.len(), dir.display());
            Ok(())
        }
    }
}
