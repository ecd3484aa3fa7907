//! Config layering: a generation's environment merged from the release, its environment,
//! its role and the host's own values, checked against the bounds, its secrets and the
//! required keys before anything starts.

use std::collections::BTreeMap;

use drover_store::Manifest;

use crate::deploy::write_failed;
use crate::{Agent, Error, Out, Result, state};

impl Agent {
    /// Merges a generation's config layers (release < environment < role < host) and checks
    /// them against the schema and its secrets, which must all decrypt here. Returns the
    /// merged environment and every key with its source. Nothing is written.
    pub(crate) fn check_config(
        &self,
        manifest: &Manifest,
        g: &state::Generation,
    ) -> Result<(BTreeMap<String, String>, Vec<drover_wire::ConfigEntry>)> {
        let named = |kind: &str, name: &Option<String>| match name {
            Some(n) => format!("{kind} {n}"),
            None => kind.to_string(),
        };
        let (env, entries) = merge_layers(&[
            (&manifest.runtime.env, "drover.toml [env]".to_string()),
            (&g.env_layer, named("environment", &g.environment)),
            (&g.role_layer, named("role", &g.role)),
            (&g.host_config, "host (drover config set)".to_string()),
        ])?;
        let mut secrets = Vec::new();
        if let Some(text) = g.secrets.as_deref() {
            let what = format!(
                "{} of `{}` (as deployed)",
                drover_config::secrets::SecretsFile::file_name(g.environment.as_deref()),
                manifest.app
            );
            let file = drover_config::secrets::SecretsFile::parse(text, &what)?;
            // Decrypting now proves this host can start the app; the values are dropped
            // (and zeroed) at once.
            drop(file.decrypt_all(&self.identity, &what)?);
            secrets.extend(file.secrets.keys().cloned());
        }
        let entries = check_keys(
            &env,
            entries,
            &secrets,
            &manifest.runtime.config.required,
            &manifest.app,
        )?;
        Ok((env, entries))
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
                return Err(Error::NotHostConfig {
                    app: app.to_string(),
                    key: key.clone(),
                });
            }
        }
        for (k, v) in set {
            if !drover_config::valid_env_key(&k) {
                return Err(Error::BadEnvKey { key: k });
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
        dir.write_generation(&g)
            .map_err(write_failed(app, g.generation))?;
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

/// A generation's config entries by key.
type Entries = BTreeMap<String, drover_wire::ConfigEntry>;

/// Merges config layers given lowest first, each with the source it is named by: a key takes
/// its value from the highest layer that has it. Every value, and all of them together,
/// must be within `drover_config`'s bounds. Returns the merged environment and each key's
/// entry.
fn merge_layers(
    layers: &[(&BTreeMap<String, String>, String)],
) -> Result<(BTreeMap<String, String>, Entries)> {
    let mut env = BTreeMap::new();
    let mut entries = Entries::new();
    for (layer, source) in layers {
        drover_config::check_env_values(*layer, |k| format!("`{k}` ({source})"))
            .map_err(Error::bounds)?;
        for (k, v) in *layer {
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
    drover_config::check_env_total(&env).map_err(Error::bounds)?;
    Ok((env, entries))
}

/// Adds the keys of the generation's secrets to the entries of its merged config `env`,
/// and checks the keys: none is both a config value and a secret, and every key of
/// `required` is set by one or the other. Returns every entry, by key.
fn check_keys(
    env: &BTreeMap<String, String>,
    mut entries: Entries,
    secrets: &[String],
    required: &[String],
    app: &str,
) -> Result<Vec<drover_wire::ConfigEntry>> {
    for key in secrets {
        if env.contains_key(key) {
            return Err(Error::SecretShadowsValue { key: key.clone() });
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
    for key in required {
        if !entries.contains_key(key) {
            return Err(Error::RequiredKeyUnset {
                app: app.to_string(),
                key: key.clone(),
            });
        }
    }
    Ok(entries.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn a_higher_layer_wins_and_names_itself_the_source() {
        let release = layer(&[("A", "release"), ("B", "release")]);
        let env = layer(&[("B", "staging")]);
        let host = layer(&[("C", "host")]);
        let (merged, entries) = merge_layers(&[
            (&release, "drover.toml [env]".into()),
            (&env, "environment staging".into()),
            (&host, "host (drover config set)".into()),
        ])
        .unwrap();
        assert_eq!(
            merged,
            layer(&[("A", "release"), ("B", "staging"), ("C", "host")])
        );
        assert_eq!(entries["A"].source, "drover.toml [env]");
        assert_eq!(entries["B"].source, "environment staging");
        assert_eq!(entries["B"].value.as_deref(), Some("staging"));
        assert!(!entries["C"].secret);
        assert_eq!(merge_layers(&[]).unwrap().0, BTreeMap::new());
    }

    #[test]
    fn values_beyond_the_bounds_are_refused_naming_their_layer() {
        let big = "x".repeat(drover_config::MAX_ENV_VALUE + 1);
        let role = layer(&[("BIG", &big)]);
        let e = merge_layers(&[
            (&layer(&[("A", "1")]), "release".into()),
            (&role, "role db".into()),
        ])
        .unwrap_err();
        let message = e.to_string();
        assert!(
            message.starts_with("`BIG` (role db): the value is"),
            "{message}"
        );
        assert!(e.hint().is_some());
        // Each value within its bound, all of them together beyond theirs.
        let value = "x".repeat(drover_config::MAX_ENV_VALUE);
        let many: BTreeMap<String, String> = (0..=drover_config::MAX_ENV_TOTAL
            / drover_config::MAX_ENV_VALUE)
            .map(|i| (format!("K{i}"), value.clone()))
            .collect();
        let e = merge_layers(&[(&many, "release".into())]).unwrap_err();
        let message = e.to_string();
        assert!(
            message.starts_with("the config values add up to"),
            "{message}"
        );
    }

    #[test]
    fn secrets_join_the_entries_and_may_not_shadow_a_value() {
        let (env, entries) = merge_layers(&[(&layer(&[("A", "1")]), "release".into())]).unwrap();
        let all = check_keys(&env, entries.clone(), &keys(&["TOKEN"]), &[], "web").unwrap();
        let listed: Vec<_> = all.iter().map(|e| (e.key.as_str(), e.secret)).collect();
        assert_eq!(listed, [("A", false), ("TOKEN", true)]);
        assert_eq!(all[1].value, None);
        assert_eq!(all[1].source, "secret");
        let e = check_keys(&env, entries, &keys(&["A"]), &[], "web").unwrap_err();
        assert_eq!(e.to_string(), "`A` is both a config value and a secret");
    }

    #[test]
    fn required_keys_may_be_set_by_a_value_or_a_secret() {
        let (env, entries) = merge_layers(&[(&layer(&[("A", "1")]), "release".into())]).unwrap();
        check_keys(
            &env,
            entries.clone(),
            &keys(&["B"]),
            &keys(&["A", "B"]),
            "web",
        )
        .unwrap();
        let e = check_keys(&env, entries, &[], &keys(&["A", "B"]), "web").unwrap_err();
        assert_eq!(
            e.to_string(),
            "required config key `B` is not set (drover.toml [config] required)"
        );
        assert!(e.hint().unwrap().contains("drover config set web B=..."));
    }
}
