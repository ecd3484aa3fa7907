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

[health]
path = "/up"              # GET through $PORT must answer 2xx (or: command = "./check")
timeout = "30s"

# [proxy]
# port = 8080             # the app's public port on each host

[env]
GREETING = "hello, world"

# [hooks]
# release = "./migrate"   # runs once per deploy, before any traffic moves

# [environments.production]
# hosts = ["web1.example.com", "deploy@web2.example.com:2222"]
"#;
