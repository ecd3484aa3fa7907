//! Generations on disk, per app under `ROOT/apps/APP/`: `gens/N.json` written once per
//! generation, `events.jsonl` appended with every outcome, and `current`, the live
//! generation, replaced atomically: the switch is one rename.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use drover_wire::GenerationInfo;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generation {
    pub generation: u64,
    pub release: String,
    pub version: String,
    pub who: String,
    pub created: u64,
    pub from: Option<u64>,
    /// deploy, rollback.
    pub kind: String,
    pub env: BTreeMap<String, String>,
    /// When this generation took over another's running (warm) instances: their generation.
    #[serde(default)]
    pub instances_of: Option<u64>,
    /// The environment whose layer applies, and that layer.
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub env_layer: BTreeMap<String, String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub role_layer: BTreeMap<String, String>,
    /// Host-side values (`drover config set`): the top layer.
    #[serde(default)]
    pub host_config: BTreeMap<String, String>,
    /// The secrets file as deployed: encrypted, never decrypted on disk.
    #[serde(default)]
    pub secrets: Option<String>,
    /// Only these processes run here (a fleet role's share); `None`: all of them.
    #[serde(default)]
    pub processes: Option<Vec<String>>,
}

impl Generation {
    /// The generation number its instances are tagged with.
    pub fn instance_gen(&self) -> u64 {
        self.instances_of.unwrap_or(self.generation)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutcomeEvent {
    pub generation: u64,
    pub outcome: String,
    pub reason: Option<String>,
    pub at: u64,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone)]
pub struct AppDir {
    pub dir: PathBuf,
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

impl AppDir {
    pub fn new(root: &Path, app: &str) -> AppDir {
        AppDir {
            dir: root.join("apps").join(app),
        }
    }

    pub fn exists(&self) -> bool {
        self.dir.join("gens").exists()
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// `$DROVER_DATA`: what the app keeps across deploys and rollbacks.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The processes' `$TMPDIR`s, one each, made anew at each start.
    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    pub fn create(&self) -> std::io::Result<()> {
        fs::create_dir_all(self.dir.join("gens"))?;
        fs::create_dir_all(self.logs_dir())
    }

    pub fn current(&self) -> Option<u64> {
        fs::read_to_string(self.dir.join("current"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The atomic switch, all in one (write, fsync, rename, fsync the directory).
    pub fn set_current(&self, generation: u64) -> std::io::Result<()> {
        write_atomic(&self.dir.join("current"), generation.to_string().as_bytes())
    }

    /// Writes (and fsyncs) the next `current` beside the live one, ahead of the switch, so
    /// the switch itself is one rename.
    pub fn stage_current(&self, generation: u64) -> std::io::Result<()> {
        let staged = self.dir.join(format!("current.{generation}"));
        let mut f = File::create(&staged)?;
        f.write_all(generation.to_string().as_bytes())?;
        f.sync_all()
    }

    /// Removes staged switches a crash left behind.
    pub fn sweep_staged(&self) {
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("current.") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    pub fn unstage_current(&self, generation: u64) {
        let _ = fs::remove_file(self.dir.join(format!("current.{generation}")));
    }

    /// The switch: renames the staged `current` into place (staging it now if needed).
    /// Durable once `sync` has run.
    pub fn switch_current(&self, generation: u64) -> std::io::Result<()> {
        let staged = self.dir.join(format!("current.{generation}"));
        if !staged.exists() {
            self.stage_current(generation)?;
        }
        fs::rename(&staged, self.dir.join("current"))
    }

    /// Makes the last switch durable (fsync of the app directory).
    pub fn sync(&self) -> std::io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    pub fn stopped(&self) -> bool {
        self.dir.join("stopped").exists()
    }

    pub fn set_stopped(&self, stopped: bool) -> std::io::Result<()> {
        let p = self.dir.join("stopped");
        if stopped {
            write_atomic(&p, b"stopped\n")
        } else {
            match fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
    }

    pub fn generations(&self) -> Vec<Generation> {
        let mut out = Vec::new();
        if let Ok(rd) = fs::read_dir(self.dir.join("gens")) {
            for e in rd.flatten() {
                if let Ok(bytes) = fs::read(e.path())
                    && let Ok(g) = serde_json::from_slice::<Generation>(&bytes)
                {
                    out.push(g);
                }
            }
        }
        out.sort_by_key(|g| g.generation);
        out
    }

    pub fn generation(&self, n: u64) -> Option<Generation> {
        let bytes = fs::read(self.dir.join("gens").join(format!("{n}.json"))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// One past the highest generation number: from the file names, without reading them.
    pub fn next_number(&self) -> u64 {
        fs::read_dir(self.dir.join("gens"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_suffix(".json")?
                            .parse::<u64>()
                            .ok()
                    })
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
            + 1
    }

    /// Records a new generation (once; never rewritten).
    pub fn write_generation(&self, g: &Generation) -> std::io::Result<()> {
        let path = self.dir.join("gens").join(format!("{}.json", g.generation));
        write_atomic(
            &path,
            &serde_json::to_vec_pretty(g).map_err(std::io::Error::other)?,
        )
    }

    pub fn record(
        &self,
        generation: u64,
        outcome: &str,
        reason: Option<String>,
    ) -> std::io::Result<()> {
        let ev = OutcomeEvent {
            generation,
            outcome: outcome.to_string(),
            reason,
            at: now(),
        };
        let mut line = serde_json::to_string(&ev).map_err(std::io::Error::other)?;
        line.push('\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("events.jsonl"))?;
        f.write_all(line.as_bytes())?;
        f.sync_all()
    }

    pub fn events(&self) -> Vec<OutcomeEvent> {
        fs::read_to_string(self.dir.join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Every generation with its latest outcome, oldest first.
    pub fn history(&self) -> Vec<GenerationInfo> {
        let events = self.events();
        self.generations()
            .into_iter()
            .map(|g| {
                let last = events.iter().rev().find(|e| e.generation == g.generation);
                GenerationInfo {
                    generation: g.generation,
                    release: g.release,
                    version: g.version,
                    who: g.who,
                    created: g.created,
                    from: g.from,
                    kind: g.kind,
                    outcome: last
                        .map(|e| e.outcome.clone())
                        .unwrap_or_else(|| "pending".into()),
                    reason: last.and_then(|e| e.reason.clone()),
                    secrets: g
                        .secrets
                        .as_deref()
                        .and_then(|t| drover_config::secrets::SecretsFile::parse(t, "secrets").ok())
                        .map(|f| f.secrets.into_keys().collect())
                        .unwrap_or_default(),
                    env: g.env,
                }
            })
            .collect()
    }
}

/// Every app that has state under the root.
pub fn apps(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(root.join("apps"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The host's audit log: one JSON line per fleet action, appended and synced.
pub fn audit_path(root: &Path) -> PathBuf {
    root.join("audit.jsonl")
}

pub fn append_audit(root: &Path, entry: &drover_wire::AuditEntry) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(audit_path(root))?;
    f.write_all(&line)?;
    f.sync_data()
}

/// The audit log's entries, oldest first (unreadable lines are skipped).
pub fn read_audit(root: &Path) -> Vec<drover_wire::AuditEntry> {
    std::fs::read_to_string(audit_path(root))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
