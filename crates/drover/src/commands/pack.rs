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
    /// Refuse a release whose files add up to more than SIZE (bytes, or with a suffix:
    /// 512M, 2G, 1T; powers of 1024).
    #[arg(long, value_name = "SIZE", default_value = "16G", value_parser = parse_size)]
    pub max_size: u64,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// A size: bytes, or a number with a K, M, G or T suffix (powers of 1024; `KiB`, `MB` and
/// the like are read the same way).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (examples: 1048576, 512M, 2G)"))?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "`{text}`: unknown size suffix `{suffix}` (use K, M, G or T)"
            ));
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
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
    let with = match stats.dependencies.len() {
        0 => String::new(),
        1 => " with 1 dependency".to_string(),
        n => format!(" with {n} dependencies"),
    };
    eprintln!(
        "packed release {}{with} ({} chunks, {})",
        stats.release.short(),
        stats.chunks,
        output::bytes(stats.chunk_bytes)
    );
    Ok(())
}

/// Unpacks the archive at `file` (`-`: stdin) into `store` (also `verify --repair`'s).
pub fn unpack_file(
    store: &drover_store::Store,
    file: &Path,
    opts: UnpackOptions,
) -> anyhow::Result<pack::Unpacked> {
    let name = file.display().to_string();
    if name == "-" {
        let stdin = BufReader::new(std::io::stdin().lock());
        return Ok(pack::unpack(store, stdin, "<stdin>", opts)?);
    }
    let f = File::open(file).with_context(|| format!("cannot open {name}"))?;
    if f.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(output::hinted(
            format!("{name} is a directory, not a drover archive"),
            "give the file `drover pack RELEASE -o FILE` wrote",
        ));
    }
    Ok(pack::unpack(store, BufReader::new(f), &name, opts)?)
}

pub fn run_unpack(root: &Path, args: UnpackArgs) -> anyhow::Result<()> {
    let store = super::open_store(root)?;
    let opts = UnpackOptions {
        allow_untrusted: args.allow_untrusted,
        max_size: args.max_size,
    };
    let unpacked = unpack_file(&store, &args.file, opts)?;
    if args.json.json {
        output::json(&unpacked)?;
    } else {
        let what = if unpacked.added {
            "imported"
        } else {
            "already had"
        };
        for d in &unpacked.dependencies {
            let what = if d.added { "imported" } else { "already had" };
            eprintln!(
                "{what} dependency {}@{} ({} new chunks)",
                d.app, d.version, d.new_chunks
            );
        }
        let repaired = match unpacked.repaired {
            0 => String::new(),
            n => format!(", {n} damaged objects replaced"),
        };
        eprintln!(
            "{what} {}@{} ({} new chunks{repaired})",
            unpacked.app, unpacked.version, unpacked.new_chunks
        );
        println!("{}", unpacked.release);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("16GiB"), Ok(16 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("2X").unwrap_err().contains("suffix"));
        assert!(
            parse_size("99999999999T")
                .unwrap_err()
                .contains("too large")
        );
    }
}
