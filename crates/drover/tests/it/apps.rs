//! Apps nobody here wrote, as users ship them: a Flask app on gunicorn with its packages
//! vendored by pip.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::{TestContext, http_get};

/// Flask and gunicorn, installed once per target dir with `pip install --target`.
fn vendored_flask() -> PathBuf {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("flask-gunicorn");
    let vendor = cache.join("vendor");
    if !vendor.join("gunicorn").is_dir() {
        let part = cache.join(format!("part-{}", std::process::id()));
        let _ = fs::remove_dir_all(&part);
        let out = std::process::Command::new("python3")
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .arg("--target")
            .arg(&part)
            .args(["flask", "gunicorn"])
            .output()
            .expect("run pip");
        assert!(out.status.success(), "pip install: {out:?}");
        // Whole or not at all, whichever test got there first.
        if fs::rename(&part, &vendor).is_err() {
            let _ = fs::remove_dir_all(&part);
        }
    }
    vendor
}

/// An app directory: `app.py` (Flask) and `vendor/` (a copy with the files' times kept, as
/// pip left them), run by gunicorn on `$PORT`.
fn flask_app(cx: &TestContext, version: &str) -> PathBuf {
    let dir = cx.app(
        "flask",
        &format!(
            "[app]\nname = \"flask\"\nversion = \"{version}\"\n\n\
             [process.web]\ncommand = \"exec python3 -m gunicorn -w 2 --bind 127.0.0.1:$PORT app:app\"\nhttp = true\n\n\
             [health]\npath = \"/\"\ntimeout = \"20s\"\n\n\
             [env]\nPYTHONPATH = \"vendor\"\n"
        ),
        &[(
            "app.py",
            &format!(
                "from flask import Flask\n\napp = Flask(__name__)\n\n\n@app.get('/')\ndef index():\n    return 'hello from flask {version}\\n'\n"
            ),
        )],
    );
    if !dir.join("vendor").exists() {
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(vendored_flask())
            .arg(dir.join("vendor"))
            .status()
            .unwrap();
        assert!(status.success());
    }
    dir
}

#[test]
fn a_vendored_flask_app_on_gunicorn_runs_from_its_tree_and_writes_nothing_there() {
    let cx = TestContext::new();
    let _agent = cx.start_agent();
    for version in ["1", "2"] {
        let dir = flask_app(&cx, version);
        cx.drover(&["deploy", dir.to_str().unwrap()]).success();
        for port in cx.live_ports("flask") {
            let (code, body) = http_get(port, "/").unwrap();
            assert_eq!(code, 200);
            assert_eq!(body, format!("hello from flask {version}\n"));
        }
    }
    cx.drover(&["rollback", "flask"]).success();
    let port = cx.live_ports("flask")[0];
    assert_eq!(http_get(port, "/").unwrap().1, "hello from flask 1\n");
    // It ran cleanly: no traceback, no warning in its log.
    let logs = cx.drover(&["logs", "flask", "-n", "200"]).success().stdout;
    assert!(logs.contains("Booting worker"), "{logs}");
    for bad in ["Traceback", "Error", "Warning", "WARNING"] {
        assert!(!logs.contains(bad), "{bad} in the app's log:\n{logs}");
    }
    // Nothing was written into its tree (no bytecode compiled there), whoever it ran as.
    let run = cx.drover(&["verify"]);
    assert!(run.status.success(), "{}\n{}", run.stdout, run.stderr);
}
