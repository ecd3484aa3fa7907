//! `drover pack` / `drover unpack`: move a release as one file (air-gapped sites).

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use drover_store::pack::{self, UnpackOptions};

use crate::cli::JsonFlag;
use crate::output;

#[derive(Debug, Args)]
pub struct PackArgs {
    /// The release (id, id prefix, app@version or app).
    pub release: String,
    /// The archive to write (`-` for stdout).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct UnpackArgs {
    /// An archive made by `drover pack` (`-` for stdin).
    pub file: PathBuf,
    /// Accept a release signed by a key this store does not trust (the signature must still
    /// be valid). Insecure: prefer `drover keys trust KEY`.
    #[arg(long)]
    pub allow_untrusted: bool,
    #[command(flatten)]
    pub json: JsonFlag,
}

pub fn run_pack(root: &Path, args: PackArgs) -> anyhow::Result<()> {
    let store = super::open_store(root)?;
    let id = store.resolve(&args.release)?;
    let stats = if args.output.as_os_str() == "-" {
        let stdout = std::io::stdout();
        pack::pack(&store, &id, BufWriter::new(stdout.lock()))?
    } else {
        // Write beside the target and rename, so a crash never leaves half an archive.
        let tmp = args.output.with_extension("drover-partial");
        let f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = BufWriter::new(f);
        let stats = match pack::pack(&store, &id, &mut w) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
        };
        w.flush()?;
        w.get_ref().sync_all()?;
        std::fs::rename(&tmp, &args.output)
            .with_context(|| format!("cannot write {}", args.output.display()))?;
        stats
    };
    eprintln!(
        "packed release {} ({} chunks, {})",
        stats.release.short(),
        stats.chunks,
        output::bytes(stats.chunk_bytes)
    );
    Ok(())
}

pub fn run_unpack(root: &Path, args: UnpackArgs) -> anyhow::Result<()> {
    let store = super::open_store(root)?;
    let opts = UnpackOptions {
        allow_untrusted: args.allow_untrusted,
    };
    let name = args.file.display().to_string();
    let unpacked = if name == "-" {
        pack::unpack(
            &store,
            BufReader::new(std::io::stdin().lock()),
            "<stdin>",
            opts,
        )?
    } else {
        let f = File::open(&args.file).with_context(|| format!("cannot open {name}"))?;
        pack::unpack(&store, BufReader::new(f), &name, opts)?
    };
    if args.json.json {
        output::json(&unpacked)?;
    } else {
        let what = if unpacked.added {
            "imported"
        } else {
            "already had"
        };
        eprintln!(
            "{what} {}@{} ({} new chunks)",
            unpacked.app, unpacked.version, unpacked.new_chunks
        );
        println!("{}", unpacked.release);
    }
    Ok(())
}
