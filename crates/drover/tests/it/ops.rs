//! Everyday operations: gc that keeps rollback targets and says what it does.

use crate::common::TestContext;

fn versions(cx: &TestContext) -> Vec<String> {
    let list = cx.drover(&["releases", "hello", "--json"]).success().json();
    let mut v: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn gc_keeps_the_releases_of_the_newest_generations_and_a_rollback_past_them_says_why() {
    let cx = TestContext::new();
    let _agent = cx.start_agent_with(&["--gc-keep", "0"]);
    for v in ["1", "2", "3"] {
        let dir = cx.hello_app("app", v, "");
        cx.drover(&["deploy", dir.to_str().unwrap()]).success();
    }
    // --dry-run names what would go and removes nothing.
    let run = cx.drover(&["gc", "--keep", "1", "--dry-run"]).success();
    assert!(
        run.stdout.contains("would remove hello@1 ")
            && run.stdout.contains("would remove hello@2 "),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("hello@3"), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("2 releases would go (--keep 1); nothing was removed"),
        "{}",
        run.stderr
    );
    assert_eq!(versions(&cx), ["1", "2", "3"]);
    let gone = cx
        .drover(&["gc", "--keep", "1", "--dry-run", "--json"])
        .success()
        .json();
    assert_eq!(gone.as_array().unwrap().len(), 2, "{gone}");

    // --keep 2: the two newest generations' releases stay; rolling back past them says
    // that gc removed the release, and how to bring it back.
    cx.drover(&["gc", "--keep", "2"]).success();
    assert_eq!(versions(&cx), ["2", "3"]);
    let run = cx.drover(&["rollback", "hello", "--to", "1"]).failure();
    assert!(
        run.stderr.contains("generation 1 of `hello` ran 1")
            && run.stderr.contains("gc has removed"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("hint: bring it back: `drover unpack`"),
        "{}",
        run.stderr
    );
    cx.drover(&["rollback", "hello"]).success();
    assert_eq!(cx.app_status("hello")["version"], "2");
}

#[test]
fn the_agent_collects_after_a_deploy_what_its_gc_keep_does_not_need() {
    let cx = TestContext::new();
    let _agent = cx.start_agent_with(&["--gc-keep", "2"]);
    for v in ["1", "2", "3", "4"] {
        let dir = cx.hello_app("app", v, "");
        cx.drover(&["deploy", dir.to_str().unwrap()]).success();
    }
    crate::common::wait_for(
        "the agent's gc after the deploy",
        std::time::Duration::from_secs(20),
        || versions(&cx) == ["3", "4"],
    );
    // What it kept still deploys, rolls back and verifies.
    cx.drover(&["rollback", "hello"]).success();
    assert_eq!(cx.app_status("hello")["version"], "3");
    cx.drover(&["verify"]).success();
}
