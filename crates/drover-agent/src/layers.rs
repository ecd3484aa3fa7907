//! Config layering: a generation's environment merged from the release, its environment,
//! its role and the host's own values, checked against the bounds, its secrets and the
//! required keys before anything starts.

use std::collections::BTreeMap;

use drover_store::Manifest;

use crate::{Agent, Failure, Out, Result, bounds_failure, secrets_failure, state};

impl Agent {
    /// Merges a generation's config layers (release < environment < role < host) and checks
    /// them against the schema and its secrets, which must all decrypt here. Returns the
    /// merged environment and every key with its source. Nothing is written.
    pub(crate) fn check_config(
        &self,
        manifest: &Manifest,
        g: &state::Generation,
    ) -> Result<(BTreeMap<String, String>, Vec<drover_wire::ConfigEntry>)> {
        let mut env = BTreeMap::new();
        let mut entries: BTreeMap<String, drover_wire::ConfigEntry> = BTreeMap::new();
        let named = |kind: &str, name: &Option<String>| match name {
            Some(n) => format!("{kind} {n}"),
            None => kind.to_string(),
        };
        for (layer, source) in [
            (&manifest.runtime.env, "drover.toml [env]".to_string()),
            (&g.env_layer, named("environment", &g.environment)),
            (&g.role_layer, named("role", &g.role)),
            (&g.host_config, "host (drover config set)".to_string()),
        ] {
            drover_config::check_env_values(layer, |k| format!("`{k}` ({source})"))
                .map_err(bounds_failure)?;
            for (k, v) in layer {
                env.insert(k.clone(), v.clone());
                entries.insert(
                    k.clone(),
                    drover_wire::ConfigEntry {
                        key: k.clone(),
                        value: Some(v.clone()),
                        source: source.clone(),
                        secret: false,
                    },
                );
            }
        }
        drover_config::check_env_total(&env).map_err(bounds_failure)?;
        if let Some(text) = g.secrets.as_deref() {
            let what = format!(
                "{} of `{}` (as deployed)",
                drover_config::secrets::SecretsFile::file_name(g.environment.as_deref()),
                manifest.app
            );
            let file =
                drover_config::secrets::SecretsFile::parse(text, &what).map_err(secrets_failure)?;
            // Decrypting now proves this host can start the app; the values are dropped
            // (and zeroed) at once.
            drop(
                file.decrypt_all(&self.identity, &what)
                    .map_err(secrets_failure)?,
            );
            for key in file.secrets.keys() {
                if env.contains_key(key) {
                    return Err(Failure::new(format!(
                        "`{key}` is both a config value and a secret"
                    ))
                    .hint(format!(
                        "remove one of them: `drover secrets rm {key}` or the [env] entry"
                    )));
                }
                entries.insert(
                    key.clone(),
                    drover_wire::ConfigEntry {
                        key: key.clone(),
                        value: None,
                        source: "secret".into(),
                        secret: true,
                    },
                );
            }
        }
        for key in &manifest.runtime.config.required {
            if !entries.contains_key(key) {
                return Err(Failure::new(format!(
                    "required config key `{key}` is not set (drover.toml [config] required)"
                ))
                .hint(format!(
                    "set it in [env], in the environment's env, with `drover config set {} {key}=...`, or as a secret",
                    manifest.app
                )));
            }
        }
        Ok((env, entries.into_values().collect()))
    }

    pub(crate) fn config_set(
        &self,
        app: &str,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
        who: &str,
        out: &mut Out,
    ) -> Result<()> {
        let (dir, live, manifest) = self.live_generation(app)?;
        let _guard = self.claim(app, who)?;
        let mut host_config = live.host_config.clone();
        for key in &unset {
            if host_config.remove(key).is_none() {
                return Err(
                    Failure::new(format!("`{key}` is not a host config value of `{app}`")).hint(
                        format!("`drover config list {app}` shows each value's source"),
                    ),
                );
            }
        }
        for (k, v) in set {
            if !drover_config::valid_env_key(&k) {
                return Err(Failure::new(format!(
                    "`{k}` is not a valid environment variable name"
                )));
            }
            host_config.insert(k, v);
        }
        // Same release, layers and secrets as the live generation; new host values.
        let mut g = state::Generation {
            generation: dir.next_number(),
            who: who.to_string(),
            created: state::now(),
            from: Some(live.generation),
            kind: "config".into(),
            instances_of: None,
            host_config,
            ..live
        };
        g.env = self.check_config(&manifest, &g)?.0;
        dir.write_generation(&g)?;
        out.event(format!(
            "config changed: generation {} restarts {}@{}",
            g.generation, app, g.version
        ));
        self.switch(&dir, &g, &manifest, false, None, out)
    }

    pub(crate) fn config_list(&self, app: &str) -> Result<Vec<drover_wire::ConfigEntry>> {
        let (_, live, manifest) = self.live_generation(app)?;
        Ok(self.check_config(&manifest, &live)?.1)
    }
}

/// What a deploy brings besides the release: the environment layer and the secrets.
pub(crate) struct Layers {
    pub(crate) environment: Option<String>,
    pub(crate) env_layer: BTreeMap<String, String>,
    pub(crate) role: Option<String>,
    pub(crate) role_layer: BTreeMap<String, String>,
    pub(crate) secrets: Option<String>,
    pub(crate) processes: Option<Vec<String>>,
}
