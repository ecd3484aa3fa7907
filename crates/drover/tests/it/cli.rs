//! The command line as a shell and `man` see it.

use crate::common::{TestContext, drover_bin};

/// What bash offers after `drover WORDS… CUR<TAB>`, from `drover completions bash`.
fn bash_completes(words: &[&str]) -> Vec<String> {
    let script = std::process::Command::new(drover_bin())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(script.status.success(), "{script:?}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("drover.bash");
    std::fs::write(&file, &script.stdout).unwrap();
    let all: Vec<&str> = std::iter::once("drover")
        .chain(words.iter().copied())
        .collect();
    let cur = all.last().unwrap();
    let prev = all[all.len() - 2];
    let quoted: Vec<String> = all.iter().map(|w| format!("'{w}'")).collect();
    let line = format!(
        "source {}; COMP_WORDS=({}); COMP_CWORD={}; _drover drover '{cur}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display(),
        quoted.join(" "),
        all.len() - 1
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &line])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn shells_complete_commands_and_flags_and_man_pages_render() {
    assert_eq!(bash_completes(&["dep"]), ["deploy"]);
    assert_eq!(bash_completes(&["deploy", "--keep"]), ["--keep-partial"]);
    assert!(bash_completes(&["lock", ""]).contains(&"release".to_string()));
    assert_eq!(bash_completes(&["ro"]), ["rollback"]);
    let cx = TestContext::new();
    for (shell, marker) in [("zsh", "#compdef drover"), ("fish", "complete -c drover")] {
        let run = cx.drover(&["completions", shell]).success();
        assert!(run.stdout.contains(marker), "{shell}: {}", run.stdout);
    }
    let bad = cx.drover(&["completions", "tcsh"]).failure();
    assert_eq!(bad.status.code(), Some(2));
    assert!(bad.stderr.contains("tcsh"), "{}", bad.stderr);

    // One page per command, which man renders.
    let dir = cx.path("man");
    let run = cx
        .drover(&["man", "--dir", dir.to_str().unwrap()])
        .success();
    assert!(run.stderr.contains("man pages into"), "{}", run.stderr);
    for page in ["drover.1", "drover-deploy.1", "drover-lock-release.1"] {
        assert!(dir.join(page).is_file(), "no {page}");
    }
    assert!(!dir.join("drover-remote.1").exists());
    let out = std::process::Command::new("man")
        .arg("-l")
        .arg(dir.join("drover-deploy.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("--keep-partial"), "{text}");
    let page = cx.drover(&["man"]).success();
    assert!(page.stdout.starts_with(".ie") || page.stdout.contains(".TH drover 1"));
}

#[test]
fn a_path_that_is_not_there_is_named_as_a_path_and_up_says_when_its_url_will_move() {
    let cx = TestContext::new();
    cx.drover(&["keys"]).success();
    let missing = cx.path("nonexist");
    let run = cx.drover(&["deploy", missing.to_str().unwrap()]).failure();
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("{}: no such directory", missing.display())),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("hint: give an app directory"),
        "{}",
        run.stderr
    );
    // A release name that is no path keeps its own message.
    let run = cx.drover(&["deploy", "nosuchapp"]).failure();
    assert!(run.stderr.contains("no release matches"), "{}", run.stderr);

    let _agent = cx.start_agent();
    let bare = cx.hello_app("bare", "1", "");
    let run = cx.drover(&["up", bare.to_str().unwrap()]).success();
    assert!(run.stdout.contains("http://127.0.0.1:"), "{}", run.stdout);
    assert!(
        run.stderr.contains("changes with every deploy"),
        "{}",
        run.stderr
    );
    let port = crate::common::free_port();
    let fixed = cx.hello_app("fixed", "1", &format!("[proxy]\nport = {port}\n"));
    let toml = std::fs::read_to_string(fixed.join("drover.toml")).unwrap();
    std::fs::write(
        fixed.join("drover.toml"),
        toml.replace("name = \"hello\"", "name = \"fixed\""),
    )
    .unwrap();
    let run = cx.drover(&["up", fixed.to_str().unwrap()]).success();
    assert!(
        run.stdout.contains(&format!("http://127.0.0.1:{port}/")),
        "{}",
        run.stdout
    );
    assert!(
        !run.stderr.contains("changes with every deploy"),
        "{}",
        run.stderr
    );
}
