//! `drover diff APP GEN_A GEN_B`: the files and config keys that changed between generations.

use std::collections::BTreeMap;
use std::path::Path;

use clap::Args;
use drover_store::Entry;
use serde::Serialize;

use crate::cli::JsonFlag;
use crate::output;

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// `[APP] GEN_A GEN_B` (APP may be left out when the host runs one app).
    #[arg(num_args = 2..=3, required = true, value_name = "[APP] GEN")]
    pub args: Vec<String>,
    #[command(flatten)]
    pub json: JsonFlag,
}

#[derive(Debug, Serialize, Default)]
struct Diff {
    files_added: Vec<String>,
    files_removed: Vec<String>,
    files_changed: Vec<String>,
    env_added: Vec<String>,
    env_removed: Vec<String>,
    env_changed: Vec<String>,
    /// Secrets by name only: a changed ciphertext counts as a change; values never show.
    secrets_added: Vec<String>,
    secrets_removed: Vec<String>,
    secrets_changed: Vec<String>,
    /// Dependencies (`[depends]`) by name.
    depends_added: Vec<String>,
    depends_removed: Vec<String>,
    /// `name: app@version (id) -> app@version (id)`.
    depends_changed: Vec<String>,
}

fn changes(
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let added = b.keys().filter(|k| !a.contains_key(*k)).cloned().collect();
    let removed = a.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
    let changed = b
        .iter()
        .filter(|(k, v)| a.get(*k).is_some_and(|old| old != *v))
        .map(|(k, _)| k.clone())
        .collect();
    (added, removed, changed)
}

struct Resolved {
    app: String,
    from: u64,
    to: u64,
    json: bool,
}

fn resolve(root: &Path, args: DiffArgs) -> anyhow::Result<Resolved> {
    let (app, gens) = match args.args.as_slice() {
        [a, b] => (super::deploy::only_app(root)?, [a, b]),
        [app, a, b] => (app.clone(), [a, b]),
        _ => unreachable!("clap checks the count"),
    };
    let num = |s: &String| {
        s.parse::<u64>().map_err(|_| {
            output::hinted(
                format!("`{s}` is not a generation number"),
                format!("`drover history {app}` lists them"),
            )
        })
    };
    Ok(Resolved {
        from: num(gens[0])?,
        to: num(gens[1])?,
        app,
        json: args.json.json,
    })
}

pub fn run(root: &Path, args: DiffArgs) -> anyhow::Result<()> {
    let args = resolve(root, args)?;
    let dir = drover_agent::AppDir::new(root, &args.app);
    if !dir.exists() {
        return Err(output::hinted(
            format!("no app named `{}` on this host", args.app),
            "`drover status` lists the apps",
        ));
    }
    let store = super::open_store(root)?;
    type Loaded = (
        BTreeMap<String, Entry>,
        BTreeMap<String, String>,
        BTreeMap<String, String>,
        BTreeMap<String, String>,
    );
    let load = |n: u64| -> anyhow::Result<Loaded> {
        let g = dir.generation(n).ok_or_else(|| {
            output::hinted(
                format!("app `{}` has no generation {n}", args.app),
                format!("`drover history {}` lists them", args.app),
            )
        })?;
        let id: drover_store::Hash = g.release.parse().map_err(anyhow::Error::msg)?;
        let m = store.manifest(&id)?;
        let secrets = g
            .secrets
            .as_deref()
            .map(|t| drover_config::secrets::SecretsFile::parse(t, "secrets"))
            .transpose()?
            .map(|f| f.secrets)
            .unwrap_or_default();
        let depends = m
            .depends
            .iter()
            .map(|(n, id)| (n.clone(), super::describe_release(&store, id)))
            .collect();
        Ok((
            m.entries
                .into_iter()
                .map(|e| (e.path().to_string(), e))
                .collect(),
            g.env,
            secrets,
            depends,
        ))
    };
    let (fa, ea, sa, da) = load(args.from)?;
    let (fb, eb, sb, db) = load(args.to)?;
    let mut d = Diff::default();
    for (p, e) in &fb {
        match fa.get(p) {
            None => d.files_added.push(p.clone()),
            Some(old) if old != e => d.files_changed.push(p.clone()),
            _ => {}
        }
    }
    d.files_removed = fa
        .keys()
        .filter(|p| !fb.contains_key(*p))
        .cloned()
        .collect();
    (d.env_added, d.env_removed, d.env_changed) = changes(&ea, &eb);
    (d.secrets_added, d.secrets_removed, d.secrets_changed) = changes(&sa, &sb);
    let changed;
    (d.depends_added, d.depends_removed, changed) = changes(&da, &db);
    d.depends_changed = changed
        .into_iter()
        .map(|n| format!("{n}: {} -> {}", da[&n], db[&n]))
        .collect();
    if args.json {
        return output::json(&d);
    }
    for (mark, list) in [
        ("+", &d.files_added),
        ("-", &d.files_removed),
        ("~", &d.files_changed),
    ] {
        for p in list {
            println!("{mark} {p}");
        }
    }
    for (mark, list) in [
        ("+", &d.env_added),
        ("-", &d.env_removed),
        ("~", &d.env_changed),
    ] {
        for k in list {
            println!("{mark} env {k}");
        }
    }
    for (mark, list) in [
        ("+", &d.secrets_added),
        ("-", &d.secrets_removed),
        ("~", &d.secrets_changed),
    ] {
        for k in list {
            println!("{mark} secret {k} (value redacted)");
        }
    }
    for n in &d.depends_added {
        println!("+ depends {n} = {}", db[n]);
    }
    for n in &d.depends_removed {
        println!("- depends {n} = {}", da[n]);
    }
    for c in &d.depends_changed {
        println!("~ depends {c}");
    }
    Ok(())
}
