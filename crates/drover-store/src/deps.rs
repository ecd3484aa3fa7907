//! Releases that run with others (`[depends]`): resolving a build's dependencies against the
//! store, a release's closure (what travels, is kept and is checked with it), and the
//! environment a release's processes get from its dependencies (`[provides]`).

use std::collections::{BTreeMap, HashSet};

use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::store::Store;

/// How long a dependency's tree, once checked, is taken as checked (`dependency_tree`).
const DEP_RECHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// The `PATH` every app process ends with, after its dependencies' entries.
pub const SYSTEM_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

impl Store {
    /// Resolves a build's `[depends]` (`name = "app@version"` or a release id) to release
    /// ids, refusing, before anything is stored: a dependency the store lacks (saying what
    /// it has of that name), one not signed by a trusted key (it, or a release under it),
    /// and one that leads back to `app` (a cycle). `file` names the config in errors.
    pub fn resolve_depends(
        &self,
        app: &str,
        specs: &BTreeMap<String, String>,
        file: &str,
    ) -> Result<BTreeMap<String, Hash>> {
        let mut out = BTreeMap::new();
        for (name, spec) in specs {
            let what = format!("{file}: key `depends.{name}`");
            let id = self.resolve_dependency(&what, spec).map_err(|e| match e {
                Error::NotFound(_) | Error::Ambiguous { .. } => {
                    self.unknown_dependency(&what, spec, e)
                }
                other => other,
            })?;
            // Every release under it: trusted, here, and not `app` again.
            let mut chain = vec![app.to_string()];
            self.check_below(&what, &id, &mut chain, &mut HashSet::new())?;
            out.insert(name.clone(), id);
        }
        Ok(out)
    }

    /// `app@version`, or a release id (whole or a prefix): never a bare app name, so a
    /// build pins what its config says, not whatever is newest.
    fn resolve_dependency(&self, what: &str, spec: &str) -> Result<Hash> {
        let spec = spec.trim();
        let is_id = spec.len() >= 4 && spec.bytes().all(|b| b.is_ascii_hexdigit());
        if !spec.contains('@') && !is_id {
            return Err(Error::invalid_hinted(
                what,
                format!("`{spec}` names no version"),
                format!("write `{spec}@VERSION` (`drover releases` lists the versions)"),
            ));
        }
        self.resolve(spec)
    }

    fn unknown_dependency(&self, what: &str, spec: &str, e: Error) -> Error {
        let name = spec.split('@').next().unwrap_or(spec);
        let mut have: Vec<String> = self
            .releases()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.app == name)
            .map(|r| format!("{}@{} ({})", r.app, r.version, r.release.short()))
            .collect();
        have.dedup();
        let hint = if have.is_empty() {
            format!(
                "the store has no release of `{name}`: build it, `drover import` it, or `drover unpack` it first"
            )
        } else {
            format!("the store has {}", have.join(", "))
        };
        let message = match e {
            Error::Ambiguous { matches, .. } => {
                format!("`{spec}` matches several releases: {}", matches.join(", "))
            }
            _ => format!("no release matches `{spec}`"),
        };
        Error::invalid_hinted(what, message, hint)
    }

    /// Checks `id` and every release below it: each in the store, signed by a trusted key,
    /// and none an app already on `chain` (the path from the release being built).
    fn check_below(
        &self,
        what: &str,
        id: &Hash,
        chain: &mut Vec<String>,
        done: &mut HashSet<Hash>,
    ) -> Result<()> {
        let manifest = self.trusted_manifest(id).map_err(|e| match e {
            Error::Untrusted { what: w, key } => Error::Untrusted {
                what: format!("{what}: dependency {w}"),
                key,
            },
            Error::NotFound(_) => Error::invalid_hinted(
                what,
                format!("release {} is not in the store", id.short()),
                "unpack or transfer the dependency first",
            ),
            other => other,
        })?;
        if chain.contains(&manifest.app) {
            chain.push(manifest.app.clone());
            return Err(Error::invalid_hinted(
                what,
                format!("dependency cycle: {}", chain.join(" -> ")),
                "a release cannot run with another release of an app on its own path",
            ));
        }
        if !done.insert(*id) {
            return Ok(());
        }
        chain.push(manifest.app.clone());
        for dep in manifest.depends.values() {
            self.check_below(what, dep, chain, done)?;
        }
        chain.pop();
        Ok(())
    }

    /// Every release `id` depends on, directly or not, each once, a dependency before the
    /// releases that depend on it (`id` itself not included).
    pub fn closure(&self, id: &Hash) -> Result<Vec<Hash>> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut path = Vec::new();
        self.visit(id, &mut seen, &mut path, &mut out)?;
        out.pop();
        Ok(out)
    }

    fn visit(
        &self,
        id: &Hash,
        seen: &mut HashSet<Hash>,
        path: &mut Vec<Hash>,
        out: &mut Vec<Hash>,
    ) -> Result<()> {
        if path.contains(id) {
            return Err(Error::Corrupt {
                kind: "release",
                id: id.to_hex(),
                reason: "its dependencies lead back to it".into(),
            });
        }
        if !seen.insert(*id) {
            return Ok(());
        }
        let manifest = self.manifest(id).map_err(|e| match e {
            Error::NotFound(_) if !path.is_empty() => Error::Missing {
                kind: "dependency",
                id: format!(
                    "{} (of release {})",
                    id.to_hex(),
                    path.last().expect("not empty").short()
                ),
            },
            other => other,
        })?;
        path.push(*id);
        for dep in manifest.depends.values() {
            self.visit(dep, seen, path, out)?;
        }
        path.pop();
        out.push(*id);
        Ok(())
    }

    /// A dependency's tree, materialised: checked in place (and rebuilt when damaged) at
    /// most once per `DEP_RECHECK` by this process. A runtime shared by many deploys is not
    /// walked again at each of them; `verify` checks it whenever it runs.
    fn dependency_tree(&self, id: &Hash, manifest: &crate::Manifest) -> Result<std::path::PathBuf> {
        let fresh = |checked: &std::collections::HashMap<Hash, std::time::Instant>| {
            checked.get(id).is_some_and(|at| at.elapsed() < DEP_RECHECK)
        };
        let tree = self.tree_path(id);
        let known = fresh(&self.deps_checked.lock().unwrap_or_else(|e| e.into_inner()));
        if known && std::fs::symlink_metadata(&tree).is_ok_and(|m| m.is_dir()) {
            return Ok(tree);
        }
        let tree = self.materialise_manifest(id, manifest)?.path;
        self.deps_checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(*id, std::time::Instant::now());
        Ok(tree)
    }

    /// What a release's processes get from its dependencies, each materialised (checked)
    /// and its signature checked against the trusted keys: `PATH` (the `[provides] path`
    /// entries of the direct dependencies in name order, then of theirs, then
    /// `SYSTEM_PATH`), `DROVER_DEP_NAME` per dependency, and each one's `[provides] env`
    /// with `{tree}` replaced by its tree (a nearer dependency's value wins).
    pub fn dependency_env(
        &self,
        depends: &BTreeMap<String, Hash>,
    ) -> Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        let mut path: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        let mut level: Vec<(String, Hash)> =
            depends.iter().map(|(n, id)| (n.clone(), *id)).collect();
        while !level.is_empty() {
            let mut next = Vec::new();
            for (name, id) in level {
                if !seen.insert(id) {
                    continue;
                }
                let manifest = self.trusted_manifest(&id)?;
                let tree = self.dependency_tree(&id, &manifest)?;
                let tree = tree.display().to_string();
                env.entry(drover_config::dep_variable(&name))
                    .or_insert_with(|| tree.clone());
                for p in &manifest.runtime.provides.path {
                    path.push(format!("{tree}/{}", p.trim_end_matches('/')));
                }
                for (k, v) in &manifest.runtime.provides.env {
                    env.entry(k.clone())
                        .or_insert_with(|| v.replace(drover_config::TREE_PLACEHOLDER, &tree));
                }
                next.extend(manifest.depends.iter().map(|(n, id)| (n.clone(), *id)));
            }
            level = next;
        }
        path.push(SYSTEM_PATH.to_string());
        env.insert("PATH".into(), path.join(":"));
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{BuildInput, build};

    /// Builds `app@1` of one file, providing `bin` and `HOME_OF_APP={tree}/x`.
    fn release(store: &Store, dir: &std::path::Path, app: &str, deps: &[(&str, Hash)]) -> Hash {
        let src = dir.join(app);
        std::fs::create_dir_all(src.join("bin")).unwrap();
        std::fs::write(src.join("bin/f"), app).unwrap();
        let mut runtime = drover_config::Runtime::default();
        runtime.provides.path = vec!["bin".into()];
        runtime.provides.env = BTreeMap::from([
            (format!("HOME_OF_{}", app.to_uppercase()), "{tree}/x".into()),
            ("SHARED".into(), app.into()),
        ]);
        build(
            store,
            BuildInput {
                dir: &src,
                app,
                version: Some("1"),
                runtime,
                depends: deps.iter().map(|(n, id)| (n.to_string(), *id)).collect(),
                exclude: &[],
                remember: false,
            },
        )
        .unwrap()
        .release
    }

    #[test]
    fn the_closure_comes_dependencies_first_and_the_nearest_one_leads_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("root")).unwrap();
        let rt = release(&store, tmp.path(), "rt", &[]);
        let lib = release(&store, tmp.path(), "lib", &[("rt", rt)]);
        let app = release(&store, tmp.path(), "app", &[("lib", lib), ("rt", rt)]);
        assert_eq!(store.closure(&app).unwrap(), [rt, lib]);
        assert!(store.closure(&rt).unwrap().is_empty());

        let depends = store.manifest(&app).unwrap().depends;
        let env = store.dependency_env(&depends).unwrap();
        let tree = |id: &Hash| store.tree_path(id).display().to_string();
        assert_eq!(
            env["PATH"],
            format!("{}/bin:{}/bin:{SYSTEM_PATH}", tree(&lib), tree(&rt))
        );
        assert_eq!(env["DROVER_DEP_LIB"], tree(&lib));
        assert_eq!(env["DROVER_DEP_RT"], tree(&rt));
        assert_eq!(env["HOME_OF_RT"], format!("{}/x", tree(&rt)));
        // Both provide SHARED: the first in name order of the direct ones wins.
        assert_eq!(env["SHARED"], "lib");

        // Pinned by name@version, a dependency leading back to the app is a cycle.
        let specs = BTreeMap::from([("lib".to_string(), "lib@1".to_string())]);
        let err = store
            .resolve_depends("rt", &specs, "drover.toml")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("key `depends.lib`: dependency cycle: rt -> lib -> rt"),
            "{err}"
        );
        let specs = BTreeMap::from([("x".to_string(), "lib".to_string())]);
        let err = store
            .resolve_depends("a", &specs, "drover.toml")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("key `depends.x`: `lib` names no version"),
            "{err}"
        );
    }
}
