//! The bodies of the config fuzz targets (`fuzz/`): a `drover.toml` and a secrets file, fed
//! arbitrary bytes. Shared by the libFuzzer targets and the corpus replay test; an `Err` is
//! fine, a panic is the bug.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::Config;
use crate::secrets::{Identity, SecretsFile};

/// The age identity the secrets seeds are encrypted to (a test key: public).
pub const AGE_IDENTITY: &str =
    "AGE-SECRET-KEY-1V3EX7AN9WGSXVAT60GSXZEM9YP5KGETWW35HG7FVYPC82CNVD93SD97EF4";

/// `Config::parse` (parse and validate); what it accepts yields a runtime, and every
/// environment's rollout takes each of its hosts once, in order.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text, Path::new("drover.toml")) else {
        return;
    };
    let _ = config.runtime();
    for e in config.environments.values() {
        let n = e.hosts.len();
        let batches = e.strategy.batches(n);
        assert_eq!(
            batches.concat(),
            (0..n).collect::<Vec<_>>(),
            "a rollout takes every host once, in order"
        );
        let _ = (e.strategy.pause(), e.strategy.max_unavailable(n));
    }
}

/// `SecretsFile::parse`, then what parses decrypted with `AGE_IDENTITY`.
pub fn secrets(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = SecretsFile::parse(text, "drover.secrets.toml") {
        let _ = file.decrypt_all(identity(), "drover.secrets.toml");
    }
}

/// `AGE_IDENTITY`, read as drover reads a host's identity file.
pub fn identity() -> &'static Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(|| {
        let path: PathBuf =
            std::env::temp_dir().join(format!("drover-fuzz-age-{}", std::process::id()));
        std::fs::write(&path, format!("{AGE_IDENTITY}\n")).expect("identity file");
        let id = Identity::load_or_create(&path).expect("the fuzzing identity reads");
        let _ = std::fs::remove_file(&path);
        id
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(sub: &str, target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz")
            .join(sub)
            .join(target)
    }

    fn replay(target: &str, f: fn(&[u8])) {
        let mut n = 0;
        for d in [dir("corpus", target), dir("regressions", target)] {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let data = std::fs::read(e.path()).unwrap();
                let r = std::panic::catch_unwind(|| f(&data));
                assert!(r.is_ok(), "{} panics", e.path().display());
                n += 1;
            }
        }
        assert!(n > 0, "no corpus in {}", dir("corpus", target).display());
    }

    #[test]
    fn the_config_corpus_replays() {
        replay("config", config);
    }

    #[test]
    fn the_secrets_corpus_replays() {
        replay("secrets", secrets);
    }

    const FLEET: &str = r#"[app]
name = "shop"
version = "2.1.0"

[build]
command = "make dist"
output = "dist"
exclude = ["node_modules"]

[process.web]
command = "./server --port $PORT"
http = true
instances = 3
stop_timeout = "20s"

[process.worker]
command = "./worker"

[health]
path = "/healthz"
timeout = "5s"

[proxy]
port = 8080
strategy = "blue-green"
keep_warm = "2m"
drain_timeout = "30s"
request_timeout = "60s"
max_body = 1048576
header_timeout = "10s"

[env]
LOG_LEVEL = "info"

[config]
required = ["DATABASE_URL"]

[hooks]
release = "./migrate"

[ssh]
user = "deploy"
port = 22
options = ["StrictHostKeyChecking=accept-new"]
timeout = "10s"
parallel = 8
persist = "0s"
relay = false

[environments.staging]
hosts = ["staging1"]
strategy = { kind = "all-at-once" }
env = { LOG_LEVEL = "debug" }

[environments.prod]
hosts = ["ops@web1:2222", "web2", "web3", "jobs1"]
strategy = { kind = "rolling", batch = "50%", max_unavailable = 1, pause = "30s" }

[environments.prod.roles.web]
hosts = ["ops@web1:2222", "web2", "web3"]
processes = ["web"]

[environments.prod.roles.jobs]
hosts = ["jobs1"]
processes = ["worker"]
env = { QUEUE = "default" }

[environments.canary]
hosts = ["c1", "c2", "c3"]
strategy = { kind = "canary", hosts = 1, pause = "1m", batch = 2 }
"#;

    /// Real files: the example app's, the `drover init` template, a fleet app's; secrets
    /// files written by `SecretsFile::set`.
    fn seeds() -> Vec<(&'static str, &'static str, String)> {
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/drover.toml"),
        )
        .unwrap();
        let mut ours = SecretsFile::default();
        ours.add_recipients(&[identity().public()], "s").unwrap();
        ours.set("DATABASE_URL", b"postgres://db/shop", "s")
            .unwrap();
        ours.set("API_TOKEN", b"t0k3n", "s").unwrap();
        let other = age::x25519::Identity::generate().to_public().to_string();
        let mut theirs = SecretsFile::default();
        theirs.add_recipients(&[other], "s").unwrap();
        theirs.set("TOKEN", b"not for us", "s").unwrap();
        vec![
            ("config", "example-hello.toml", example),
            (
                "config",
                "init-template.toml",
                crate::init_template("hello"),
            ),
            ("config", "fleet.toml", FLEET.to_string()),
            ("secrets", "ours.toml", ours.to_text()),
            ("secrets", "another-recipient.toml", theirs.to_text()),
        ]
    }

    /// Each committed seed is accepted (and the secrets decrypted by `AGE_IDENTITY` when it
    /// is a recipient). `DROVER_FUZZ_WRITE_SEEDS=1` writes them anew.
    #[test]
    fn the_seeds_are_accepted() {
        for (target, name, text) in seeds() {
            let path = dir("corpus", target).join(name);
            if std::env::var_os("DROVER_FUZZ_WRITE_SEEDS").is_some() {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &text).unwrap();
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}\nhint: write the seeds with `DROVER_FUZZ_WRITE_SEEDS=1 cargo test -p drover-config fuzzing`",
                    path.display()
                )
            });
            let what = path.display().to_string();
            match target {
                "config" => {
                    Config::parse(&committed, &path).unwrap();
                }
                _ => {
                    let f = SecretsFile::parse(&committed, &what).unwrap();
                    let ours = f.recipients.contains(&identity().public());
                    assert_eq!(f.decrypt_all(identity(), &what).is_ok(), ours, "{what}");
                }
            }
        }
    }
}
