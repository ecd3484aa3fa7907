//! The commented `drover.toml` that `drover init` writes.

/// A commented `drover.toml` for an app called `name`.
pub fn init_template(name: &str) -> String {
    TEMPLATE.replace("\"hello\"", &format!("\"{name}\""))
}

const TEMPLATE: &str = r#"# drover.toml — how drover builds and runs this app.
# Every key is documented below; delete what you do not need.

[app]
name = "hello"            # letters, digits, - and _
# version = "1.0.0"       # optional; else `git describe`, else derived from the content
# user = "www-data"       # who its processes run as (default drover-app); never able to
#                         # write the release: it writes to $DROVER_DATA and $TMPDIR

[build]
# command = "make dist"   # runs with `sh -c` in a scratch copy of this directory, never here
# output = "dist"         # what becomes the release (default: the whole directory)
# exclude = ["tmp"]       # top-level names left out (.git is always left out)

# One table per process type (Procfile style). cwd is the release directory.
[process.web]
command = "./server"      # run with `sh -c`; config comes from the environment
http = true               # gets a free port in $PORT and is health-checked through it
instances = 1
# stop_timeout = "10s"    # SIGTERM, then SIGKILL after this long
# user = "root"           # this process's user, instead of [app] user

[health]
path = "/up"              # GET through $PORT must answer 2xx (or: command = "./check")
timeout = "30s"           # how long a new instance may take to pass it (probed fast)
# interval = "10s"        # then how often each live instance is probed again; three
#                         # failures in a row take it out of traffic

# [proxy]
# port = 8080             # the app's public port on each host

[env]
GREETING = "hello, world"

# [hooks]
# release = "./migrate"   # runs once per deploy, before any traffic moves

# Releases this one runs with (e.g. a runtime made by `drover import`), pinned at build
# time. Each one's [provides] path comes first on PATH; its tree is in $DROVER_DEP_NODE.
# [depends]
# node = "node@24.11.0"   # NAME@VERSION or a release id, from this machine's store

# What releases that depend on this one get.
# [provides]
# path = ["bin"]                          # directories of this release, first on their PATH
# env = { NODE_HOME = "{tree}" }          # {tree}: this release's tree on the host

# Config for `drover deploy -e production`. With hosts, that deploys to them over ssh
# (set each up once with `drover host setup -e production`).
# [environments.production]
# hosts = ["web1.example.com", "deploy@web2.example.com:2222"]
# strategy = { kind = "rolling", batch = 1 }   # or "25%"; or { kind = "all-at-once" },
#                                              # { kind = "canary", hosts = 1, pause = "5m" }
# env = { LOG_LEVEL = "info" }
#
# [environments.production.roles.jobs]
# hosts = ["web1.example.com"]
# processes = ["web"]      # which processes run on this role's hosts
# env = { QUEUE = "default" }
#
# [ssh]                    # the system ssh does the work: your ssh config and agent apply
# config = "deploy/ssh_config"
# timeout = "10s"
"#;
