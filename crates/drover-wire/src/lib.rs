//! The agent protocol: what the CLI sends and what the agent answers, as JSON lines.
//! One request line; then zero or more `Event` (or `Log`, or `Item`) lines; then one final
//! `Reply` line. A reply that is a long list comes as one `Item` line per element, so no
//! line grows with the list (see `Line::Item`).
//! The same bytes travel over the local unix socket and (later) over an ssh channel.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

#[doc(hidden)]
pub mod fuzzing;
pub mod time;

/// The largest line either side accepts.
pub const MAX_LINE: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Ping,
    /// Sent by a replacing agent: the running one passes its listening sockets over
    /// (SCM_RIGHTS, with one `Handover` line), stops accepting, drains and exits.
    Handover,
    /// Deploy a stored release as the app's next generation; with `canary`, send only that
    /// percentage of clients to it until `Promote` or `Abort`.
    Deploy {
        release: String,
        who: String,
        #[serde(default)]
        canary: Option<u8>,
        /// The environment whose config layer applies (local deploys).
        #[serde(default)]
        environment: Option<String>,
        /// That environment's `[environments.NAME.env]`.
        #[serde(default)]
        env_layer: BTreeMap<String, String>,
        /// The role whose layer applies above the environment's, and that layer.
        #[serde(default)]
        role: Option<String>,
        #[serde(default)]
        role_layer: BTreeMap<String, String>,
        /// The secrets file, as it is: encrypted. The agent decrypts it only in memory.
        #[serde(default)]
        secrets: Option<String>,
        /// Fleet deploys: once live, the agent sends `Event { event: AWAITING_CONFIRM }` and
        /// waits this many seconds for a `Confirm` line on the same connection. Without one
        /// (the deployer died or lost the network) it returns to the previous generation.
        #[serde(default)]
        confirm_within: Option<u64>,
        /// Run only these of the release's processes on this host (a fleet role's share);
        /// `None` runs them all.
        #[serde(default)]
        processes: Option<Vec<String>>,
        /// Fleet deploys: the release hook ran once for the whole fleet (`ReleaseHook`):
        /// this host's deploy does not run it again.
        #[serde(default, skip_serializing_if = "is_false")]
        skip_release_hook: bool,
    },
    /// Run the release's `[hooks] release` in the environment a `Deploy` with the same
    /// fields would give it, its output as log lines; nothing else changes (a fleet deploy
    /// runs it once, on one host, before any host switches).
    ReleaseHook {
        release: String,
        who: String,
        #[serde(default)]
        environment: Option<String>,
        #[serde(default)]
        env_layer: BTreeMap<String, String>,
        #[serde(default)]
        role: Option<String>,
        #[serde(default)]
        role_layer: BTreeMap<String, String>,
        #[serde(default)]
        secrets: Option<String>,
    },
    /// Change host-side config values: a new generation with the same release.
    ConfigSet {
        app: String,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
        who: String,
    },
    /// The merged config of the live generation and where each value comes from.
    ConfigList {
        app: String,
    },
    Promote {
        app: String,
        who: String,
    },
    Abort {
        app: String,
        who: String,
    },
    /// Hold new requests in the proxy (up to a limit) until `Resume`.
    Pause {
        app: String,
    },
    Resume {
        app: String,
    },
    /// Switch back to an earlier generation (default: the one before the current).
    Rollback {
        app: String,
        to: Option<u64>,
        who: String,
    },
    Status {
        app: Option<String>,
    },
    /// The app's generations, oldest first: one `Line::Item` each, then an empty list.
    History {
        app: String,
    },
    Stop {
        app: String,
        who: String,
    },
    Start {
        app: String,
        who: String,
    },
    /// The last `lines` lines of the app's current instances (with `since`, of every log
    /// of the app, from that time: ms since the epoch), only those containing `grep`;
    /// `follow` keeps streaming what any of the app's processes writes next.
    Logs {
        app: String,
        lines: usize,
        follow: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grep: Option<String>,
    },
    /// Where and how to run a one-off task in the current generation's environment.
    RunSpec {
        app: String,
    },
}

/// The agent's answer to `Request::Ping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    pub pid: u32,
    pub version: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The event an agent sends when a deploy with `confirm_within` is live and unconfirmed.
pub const AWAITING_CONFIRM: &str = "awaiting confirmation";

/// The line a deployer sends to keep an unconfirmed deploy (see `Request::Deploy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirm {
    pub confirm: bool,
}

/// A progress line sent before the final reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub event: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    Ok(serde_json::Value),
    Error(WireError),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireError {
    pub message: String,
    pub hint: Option<String>,
    /// Extra lines (the health check's last answer, the process's last log lines).
    #[serde(default)]
    pub details: Vec<String>,
}

/// One line from the agent: a progress event, a log line, or the final reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Line {
    Event(Event),
    Log {
        log: String,
    },
    /// One element of a list reply, sent ahead of the final reply, whose value (a list)
    /// holds the rest: the list is the items followed by that value's elements
    /// (`Answer::Item`, gathered by the reader). Each item is its own line, so a long history never makes a
    /// line longer than `MAX_LINE`.
    Item {
        item: serde_json::Value,
    },
    Reply(Reply),
}

/// One line of an answer read as what the caller asked for: the reply as `T` and each list
/// item as `I`, with no `serde_json::Value` in between (`Line` is the agent's side).
#[derive(Debug)]
pub enum Answer<T, I = serde::de::IgnoredAny> {
    Event(Event),
    Log(String),
    Item(I),
    Ok(T),
    Error(WireError),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AnswerLine<T, I> {
    Event(Event),
    Log { log: String },
    Item { item: I },
    Reply(TypedReply<T>),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum TypedReply<T> {
    Ok(T),
    Error(WireError),
}

/// Reads one line of an answer whose reply is a `T` and whose list items are `I`s. `Err`
/// says what is wrong: a reply (or item) that is not of the type asked for, or a line that
/// is no part of an answer at all.
pub fn read_answer<T, I>(line: &str) -> Result<Answer<T, I>, String>
where
    T: serde::de::DeserializeOwned,
    I: serde::de::DeserializeOwned,
{
    match serde_json::from_str::<AnswerLine<T, I>>(line) {
        Ok(AnswerLine::Event(e)) => Ok(Answer::Event(e)),
        Ok(AnswerLine::Log { log }) => Ok(Answer::Log(log)),
        Ok(AnswerLine::Item { item }) => Ok(Answer::Item(item)),
        Ok(AnswerLine::Reply(TypedReply::Ok(v))) => Ok(Answer::Ok(v)),
        Ok(AnswerLine::Reply(TypedReply::Error(e))) => Ok(Answer::Error(e)),
        Err(_) => {
            // Which part did not fit: the reply's value (or an item's), or the whole line.
            use serde::de::IgnoredAny;
            match serde_json::from_str::<AnswerLine<IgnoredAny, IgnoredAny>>(line) {
                Ok(AnswerLine::Reply(_)) => Err(format!(
                    "unexpected answer: {}",
                    serde_json::from_str::<TypedReply<T>>(line)
                        .err()
                        .map_or_else(String::new, |e| e.to_string())
                )),
                Ok(AnswerLine::Item { .. }) => Err(format!(
                    "unexpected list item: {}",
                    serde_json::from_str::<AnswerLine<IgnoredAny, I>>(line)
                        .err()
                        .map_or_else(String::new, |e| e.to_string())
                )),
                Ok(_) => Err("unexpected line".into()),
                Err(e) => Err(format!("not a line of an answer: {e}")),
            }
        }
    }
}

/// Whether `line` is an answer's last (its reply), without reading its value.
pub fn is_reply(line: &str) -> bool {
    use serde::de::IgnoredAny;
    matches!(
        serde_json::from_str::<AnswerLine<IgnoredAny, IgnoredAny>>(line),
        Ok(AnswerLine::Reply(_))
    )
}

/// Writes the reply `Ok(value)` as one line, as `Reply::Ok` would be written.
pub fn write_ok<W: Write>(w: &mut W, value: &impl Serialize) -> std::io::Result<()> {
    write_line(w, &TypedReply::Ok(value))
}

/// Reads a reply line (no events before it) whose value is a `T`: `Ok(Err(..))` is the
/// error the other side answered with.
pub fn read_reply<T: serde::de::DeserializeOwned>(
    line: &str,
) -> Result<Result<T, WireError>, String> {
    match read_answer::<T, serde::de::IgnoredAny>(line)? {
        Answer::Ok(v) => Ok(Ok(v)),
        Answer::Error(e) => Ok(Err(e)),
        _ => Err("not a reply".into()),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub app: String,
    pub generation: Option<u64>,
    /// The generation live before this one (a deploy's or rollback's starting point).
    #[serde(default)]
    pub from: Option<u64>,
    pub version: Option<String>,
    pub release: Option<String>,
    pub state: String,
    pub instances: Vec<InstanceStatus>,
    #[serde(default)]
    pub proxy: Option<ProxyStatus>,
    #[serde(default)]
    pub canary: Option<CanaryStatus>,
    /// The releases the live release runs with (`[depends]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends: Vec<DependencyStatus>,
}

/// One dependency of a live release: the name its config gives it, and the release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DependencyStatus {
    pub name: String,
    pub app: String,
    pub version: String,
    pub release: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyStatus {
    pub port: u16,
    pub paused: bool,
    pub releases: Vec<ReleaseTraffic>,
    /// The host names it claims of a shared port (none: the port is its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// With TLS: where its certificates come from and how they stand (an ACME order's
    /// failure and when it is tried again, too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
}

/// The proxy's counters for one release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseTraffic {
    pub release: String,
    pub requests: u64,
    pub responses_2xx: u64,
    pub responses_3xx: u64,
    pub responses_4xx: u64,
    pub responses_5xx: u64,
    pub open: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryStatus {
    pub generation: u64,
    pub version: String,
    pub weight: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub process: String,
    pub index: u32,
    pub generation: u64,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub healthy: bool,
    pub restarts: u32,
    pub state: String,
    /// Receiving traffic from the proxy.
    #[serde(default)]
    pub serving: bool,
    /// When it started (Unix seconds).
    #[serde(default)]
    pub started: Option<u64>,
    /// What keeps the process from changing releases, and the user it runs as:
    /// "read-only store, user drover-app", or "mode bits, user NAME".
    #[serde(default)]
    pub protection: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationInfo {
    pub generation: u64,
    pub release: String,
    pub version: String,
    pub who: String,
    /// Unix seconds.
    pub created: u64,
    pub from: Option<u64>,
    pub kind: String,
    /// pending, live, failed, superseded, stopped.
    pub outcome: String,
    pub reason: Option<String>,
    pub env: BTreeMap<String, String>,
    /// Names of the secrets (values are never shown).
    #[serde(default)]
    pub secrets: Vec<String>,
}

/// One line of a host's audit log (`ROOT/audit.jsonl`): who changed what, from which
/// generation to which, and how it ended. `drover history -e ENV` merges the hosts' logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at: u64,
    pub who: String,
    pub environment: Option<String>,
    pub app: String,
    /// deploy, rollback, revert (the deployer returned it), auto-revert (never confirmed).
    pub action: String,
    pub version: Option<String>,
    pub from: Option<u64>,
    pub to: Option<u64>,
    /// ok, failed, reverted.
    pub outcome: String,
    pub reason: Option<String>,
    /// Filled in by the reader: the host the line came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl AuditEntry {
    /// An entry of `action` on `app` by `who` at `at` (Unix seconds): every audit entry is
    /// begun here, then told what moved (`moved`) and how it ended (`ended`).
    pub fn new(at: u64, who: &str, environment: Option<&str>, app: &str, action: &str) -> Self {
        AuditEntry {
            at,
            who: who.to_string(),
            environment: environment.map(str::to_string),
            app: app.to_string(),
            action: action.to_string(),
            version: None,
            from: None,
            to: None,
            outcome: String::new(),
            reason: None,
            host: None,
        }
    }

    /// The version deployed and the generations left and reached.
    pub fn moved(mut self, version: Option<String>, from: Option<u64>, to: Option<u64>) -> Self {
        self.version = version;
        self.from = from;
        self.to = to;
        self
    }

    /// How it ended (`ok`, `failed`, `reverted`, ...) and why, when not `ok`.
    pub fn ended(mut self, outcome: &str, reason: Option<String>) -> Self {
        self.outcome = outcome.to_string();
        self.reason = reason;
        self
    }
}

/// One config key of an app: its value (none for a secret) and the layer it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigEntry {
    pub key: String,
    pub value: Option<String>,
    pub source: String,
    pub secret: bool,
}

/// The listening sockets passed from an agent to its replacement, in fd order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handover {
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub dir: String,
    pub env: BTreeMap<String, String>,
    pub generation: u64,
    /// How the command is confined, as the app's processes are.
    #[serde(default)]
    pub confine: Confine,
    /// A temporary directory made for this run (its `$TMPDIR`), removed after it.
    #[serde(default)]
    pub tmp: Option<String>,
}

/// How an app process is confined. The default confines nothing (an unprivileged agent:
/// the process runs as the agent's user, and the trees' mode bits protect them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Confine {
    /// Mounted read-only in the process's own mount namespace (the store).
    #[serde(default)]
    pub read_only: Option<String>,
    /// The user the process runs as (None: the spawner's).
    #[serde(default)]
    pub user: Option<AppUser>,
    /// The directories the process may write, reachable in its view whatever the modes
    /// of the directories above them.
    #[serde(default)]
    pub writable: Vec<String>,
    /// Other trees the process reads (its dependencies'), reachable read-only in its view.
    #[serde(default)]
    pub visible: Vec<String>,
}

/// A user of the host as a process takes it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default)]
    pub groups: Vec<u32>,
}

/// One request to `drover remote serve` (a fleet action's session on a host), a JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ServeOp {
    /// Answered with a `Reply` holding a `Hello`. With `lock`, also takes that environment's
    /// lock, when this drover's build is `expect_build`.
    Hello {
        expect_build: Option<String>,
        lock: Option<LockRequest>,
    },
    /// The transfer protocol follows on the same streams (`drover_store::transfer`). A
    /// failed transfer ends the session.
    Receive,
    /// `request` goes to the host's agent, whose lines (events, logs, the `Reply`) come back.
    /// Until the deployer sends an `EndOp`, its lines (a `Confirm`) go to the agent too;
    /// when stdin ends instead, the agent sees the deployer is gone.
    Agent { request: Request },
    /// Appends the audit entry, then gives back the lock held with `token`; answered with a
    /// `Reply`.
    Finish {
        env: String,
        token: String,
        audit: Option<AuditEntry>,
    },
}

/// The line that ends an `Agent` op, sent by the deployer once it has the reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndOp {
    pub end: bool,
}

/// The environment lock a `ServeOp::Hello` asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockRequest {
    pub env: String,
    pub holder: String,
    pub token: String,
    /// Why it is held, for whoever finds it taken (`drover lock acquire -m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What the deployer sends while it has nothing else to say (an empty line, skipped between
/// and within ops), so that `remote serve --timeout` can tell a silent deployer from a gone one.
pub const KEEPALIVE: &[u8] = b"\n";

/// What `drover remote hello` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub version: String,
    /// The BLAKE3 of the running drover binary: two builds of one version differ here.
    pub build: String,
    pub root: String,
    pub agent: bool,
    /// With `--lock`: whether it was taken, and who holds it.
    #[serde(default)]
    pub lock: Option<LockOutcome>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockOutcome {
    pub acquired: bool,
    /// The holder: us when acquired, else whoever has it (`None`: not attempted, the build
    /// differs).
    pub holder: Option<LockHolder>,
}

/// An environment's lock, as held on a host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockHolder {
    pub holder: String,
    pub since: u64,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Reads one line (at most `MAX_LINE` bytes); `None` at end of stream.
pub fn read_line<R: BufRead>(r: &mut R) -> std::io::Result<Option<String>> {
    read_line_max(r, MAX_LINE)
}

/// `read_line` with another limit (a line that wraps one of at most `MAX_LINE` needs more).
pub fn read_line_max<R: BufRead>(r: &mut R, max: usize) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = <&mut R as std::io::Read>::take(r, max as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "line longer than the protocol allows",
        ));
    }
    String::from_utf8(buf)
        .map(|s| Some(s.trim_end_matches('\n').to_string()))
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "line is not UTF-8"))
}

pub fn write_line(w: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    let mut s = serde_json::to_string(value).map_err(std::io::Error::other)?;
    s.push('\n');
    w.write_all(s.as_bytes())?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IgnoredAny;

    #[test]
    fn round_trips() {
        let r = Request::Deploy {
            release: "abc".into(),
            who: "me".into(),
            canary: Some(10),
            environment: None,
            env_layer: BTreeMap::new(),
            role: None,
            role_layer: BTreeMap::new(),
            secrets: None,
            confirm_within: None,
            processes: None,
            skip_release_hook: false,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let l: Line = serde_json::from_str(r#"{"event":"starting"}"#).unwrap();
        assert!(matches!(l, Line::Event(_)));
        let l: Line = serde_json::from_str(r#"{"ok":{"a":1}}"#).unwrap();
        assert!(matches!(l, Line::Reply(Reply::Ok(_))));
        let l: Line = serde_json::from_str(r#"{"log":"x"}"#).unwrap();
        assert!(matches!(l, Line::Log { .. }));
        let l: Line = serde_json::from_str(r#"{"item":{"generation":1}}"#).unwrap();
        assert!(matches!(l, Line::Item { .. }));
        assert!(serde_json::from_str::<Request>(r#"{"op":"nuke"}"#).is_err());
    }

    #[test]
    fn an_answer_reads_as_the_types_asked_for_and_says_what_did_not_fit() {
        let status = r#"{"ok":{"pid":7,"version":"1"}}"#;
        assert!(matches!(
            read_answer::<Pong, IgnoredAny>(status),
            Ok(Answer::Ok(Pong { pid: 7, .. }))
        ));
        assert!(matches!(
            read_answer::<Pong, IgnoredAny>(r#"{"event":"starting"}"#),
            Ok(Answer::Event(_))
        ));
        assert!(matches!(
            read_answer::<Vec<u64>, u64>(r#"{"item":3}"#),
            Ok(Answer::Item(3))
        ));
        assert!(matches!(
            read_answer::<Pong, IgnoredAny>(r#"{"error":{"message":"no","hint":null}}"#),
            Ok(Answer::Error(WireError { .. }))
        ));
        // A reply of another shape is named as such, and is still a reply.
        let wrong = r#"{"ok":{"pid":"seven"}}"#;
        let e = read_answer::<Pong, IgnoredAny>(wrong).unwrap_err();
        assert!(e.starts_with("unexpected answer: "), "{e}");
        assert!(is_reply(wrong));
        let e = read_answer::<Vec<u64>, u64>(r#"{"item":"x"}"#).unwrap_err();
        assert!(e.starts_with("unexpected list item: "), "{e}");
        assert!(!is_reply(r#"{"item":"x"}"#));
        let e = read_answer::<Pong, IgnoredAny>("[1]").unwrap_err();
        assert!(e.starts_with("not a line of an answer"), "{e}");
        // What write_ok writes reads back as the agent's own reply line.
        let mut out = Vec::new();
        write_ok(
            &mut out,
            &Pong {
                pid: 1,
                version: "v".into(),
            },
        )
        .unwrap();
        let line = String::from_utf8(out).unwrap();
        assert!(matches!(
            serde_json::from_str::<Line>(line.trim()).unwrap(),
            Line::Reply(Reply::Ok(_))
        ));
        assert!(matches!(read_reply::<()>(r#"{"ok":null}"#), Ok(Ok(()))));
    }

    #[test]
    fn long_lines_are_refused() {
        let data = vec![b'a'; MAX_LINE + 10];
        let mut r = std::io::Cursor::new(data);
        assert!(read_line(&mut r).is_err());
    }
}
