//! `ctrace report` on fixture recordings and `ctrace doctor` on fixture node
//! trees: exact exit codes and messages. No root needed.
use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

fn ctrace() -> Command {
    Command::cargo_bin("ctrace").unwrap()
}

const REC: &str = "tests/fixtures/recordings";
const NODE: &str = "tests/fixtures/node";

fn rec(name: &str) -> String {
    format!("{REC}/{name}")
}

fn json_of(args: &[&str], code: i32) -> Value {
    let out = ctrace().args(args).assert().code(code);
    serde_json::from_slice(&out.get_output().stdout).expect("stdout is one JSON document")
}

#[test]
fn clean_recording_exits_0_and_states_kernel_hooks_and_counters() {
    ctrace()
        .args(["report", &rec("clean.jsonl")])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("kernel 6.1.0-27-cloud-amd64"))
        .stdout(predicate::str::contains(
            "kprobe/kretprobe nf_nat_setup_info",
        ))
        .stdout(predicate::str::contains(
            "insert_failed  kernel      0  insert_failed        0  agree",
        ))
        .stdout(predicate::str::contains("No findings."))
        .stderr(predicate::str::is_empty());
}

#[test]
fn insert_failures_exit_1_with_a_snat_race_that_agrees_with_the_kernel() {
    ctrace()
        .args(["report", &rec("insert-failed.jsonl")])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("(snat_race, traced)"))
        .stdout(predicate::str::contains(
            "the kernel's insert_failed counter agrees: 3",
        ))
        .stdout(predicate::str::contains(
            "21.4% of 14 new NATed connections",
        ));
    let v = json_of(&["report", "--json", &rec("insert-failed.jsonl")], 1);
    assert_eq!(v["format"], 1);
    assert_eq!(v["command"], "report");
    assert_eq!(v["exit"], 1);
    assert_eq!(v["recording"]["header"]["kernel"], "6.1.0-27-cloud-amd64");
    assert_eq!(v["kernel_counters"]["insert_failed"], 3);
    assert_eq!(v["agreement"][0]["counter"], "insert_failed");
    assert_eq!(v["agreement"][0]["agree"], true);
    assert_eq!(v["agreement"][0]["per_cpu"], serde_json::json!([[1, 3, 3]]));
    let f = &v["findings"][0];
    assert_eq!(f["kind"], "snat_race");
    assert_eq!(f["severity"], "critical");
    assert_eq!(f["what"]["count"], 3);
    assert_eq!(f["what"]["kernel_count"], 3);
    assert_eq!(f["evidence"]["examples"].as_array().unwrap().len(), 3);
    assert_eq!(f["evidence"]["examples"][0]["port"], 40000);
    assert_eq!(f["evidence"]["destinations"][0]["key"], "192.0.2.1:80");
}

#[test]
fn truncated_last_line_warns_names_the_line_and_reports_what_came_before() {
    ctrace()
        .args(["report", &rec("truncated.jsonl")])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "ctrace: warning: tests/fixtures/recordings/truncated.jsonl:4: last line is truncated",
        ))
        .stderr(predicate::str::contains(
            "the 2 complete events before it are kept",
        ))
        .stdout(predicate::str::contains(
            "Events: insert_failed 2 (lost unknown: no trailer)",
        ))
        .stdout(predicate::str::contains("Kernel counters: not available"));
    let v = json_of(&["report", "--json", &rec("truncated.jsonl")], 1);
    // no trailer: how many were lost is not known, and never shown as 0
    assert!(v["lost"].is_null(), "{}", v["lost"]);
    assert!(v["warnings"][0]
        .as_str()
        .unwrap()
        .contains("truncated.jsonl:4"));
    assert!(v["findings"][0]["what"].get("rate_per_s").is_none());
}

#[test]
fn a_line_that_is_not_json_is_exit_2_naming_file_and_line() {
    ctrace()
        .args(["report", &rec("not-json.jsonl")])
        .assert()
        .code(2)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::starts_with(
            "ctrace: tests/fixtures/recordings/not-json.jsonl:3: not JSON",
        ));
}

#[test]
fn a_newer_format_is_exit_2() {
    ctrace()
        .args(["report", "--json", &rec("format9.jsonl")])
        .assert()
        .code(2)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains(
            "format9.jsonl:1: recording format 9 is newer than this ctrace reads (1): upgrade ctrace",
        ));
}

#[test]
fn a_missing_file_is_exit_2() {
    ctrace()
        .args(["report", &rec("no-such.jsonl")])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "no-such.jsonl: cannot open: No such file",
        ));
}

#[test]
fn kernel_version_decides_the_invalid_verdict_wording() {
    ctrace()
        .args(["report", &rec("invalid-5.10.jsonl")])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("(tcp_invalid_reset, traced)"))
        .stdout(predicate::str::contains(
            "On this kernel (5.10, ≤ 6.0) every out-of-window segment is INVALID",
        ))
        .stdout(predicate::str::contains(
            "invalid        kernel      2  tcp_invalid          1  differ",
        ));
    // the same segment on 6.1 is IGNORED: information, exit 0
    ctrace()
        .args(["report", &rec("ignored-6.1.jsonl")])
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "[INFO] Out-of-window segments IGNORED",
        ))
        .stdout(predicate::str::contains("tcp_invalid_reset").not());
}

#[test]
fn report_help_documents_exit_codes() {
    ctrace()
        .args(["report", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Exit codes:"));
    ctrace()
        .args(["check", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("2  could not run"));
}

#[test]
fn doctor_on_a_trapped_node() {
    ctrace()
        .args(["doctor", "--root", &format!("{NODE}/trap")])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "(be_liberal_boot_order, node configuration)",
        ))
        .stdout(predicate::str::contains(
            "the boot-order trap has already bitten",
        ))
        .stdout(predicate::str::contains(
            "/etc/sysctl.d/90-conntrack.conf:2",
        ))
        .stdout(predicate::str::contains(
            "echo nf_conntrack > /etc/modules-load.d/nf_conntrack.conf",
        ))
        .stdout(predicate::str::contains("-j MASQUERADE --random-fully"))
        .stdout(predicate::str::contains(
            "(invalid_drop_wrong_chain, node configuration)",
        ));
    let v = json_of(&["doctor", "--json", "--root", &format!("{NODE}/trap")], 1);
    assert_eq!(v["format"], 1);
    assert_eq!(v["command"], "doctor");
    let kinds: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "be_liberal_boot_order",
            "nat_without_random_fully",
            "invalid_drop_wrong_chain"
        ]
    );
    assert_eq!(v["node"]["kernel"], "6.1.0-27-cloud-amd64");
    assert_eq!(v["facts"]["nat_rules_random_fully"], 0);
}

#[test]
fn doctor_on_a_mitigated_node_exits_0() {
    ctrace()
        .args(["doctor", "--root", &format!("{NODE}/mitigated")])
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "1 source-NAT rules, 1 with --random-fully",
        ))
        .stdout(predicate::str::contains("No findings."));
}

#[test]
fn doctor_with_nothing_readable_exits_2() {
    ctrace()
        .args(["doctor", "--root", "/nonexistent-ctrace-root"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "nothing of the node's configuration could be read",
        ));
}

#[test]
fn check_refuses_an_unknown_fail_on_kind_before_tracing() {
    ctrace()
        .args(["check", "--fail-on", "snat_race,bogus"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown finding kind 'bogus'"));
}

#[test]
fn doctor_on_a_docker_host_gives_the_fix_that_survives_a_restart() {
    ctrace()
        .args(["doctor", "--root", &format!("{NODE}/docker")])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("(no --random-fully, Docker's) [48213 packets]"))
        .stdout(predicate::str::contains("Docker re-creates it"))
        .stdout(predicate::str::contains(
            "ExecStart=iptables -t nat -I POSTROUTING 1 -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE --random-fully",
        ))
        .stdout(predicate::str::contains("masquerade fully-random"))
        .stdout(predicate::str::contains("-t nat -A ").not());
}

#[test]
fn doctor_reports_a_shadowed_random_fully_rule() {
    ctrace()
        .args(["doctor", "--root", &format!("{NODE}/shadowed")])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "2 source-NAT rules, 1 with --random-fully (1 of them shadowed)",
        ))
        .stdout(predicate::str::contains(
            "rule 2 has --random-fully but is shadowed",
        ))
        .stdout(predicate::str::contains("iptables -t nat -D POSTROUTING 2"));
    let v = json_of(
        &["doctor", "--json", "--root", &format!("{NODE}/shadowed")],
        1,
    );
    assert_eq!(v["facts"]["nat_rules_shadowed"], 1);
    assert_eq!(v["findings"][0]["what"]["count"], 2);
    assert_eq!(v["node"]["rules"]["nat"][1]["packets"], 0);
}

#[test]
fn doctor_without_the_rules_says_what_it_could_not_read_and_exits_2() {
    ctrace()
        .args(["doctor", "--root", &format!("{NODE}/unreadable")])
        .assert()
        .code(2)
        .stdout(predicate::str::contains(
            "Not read: the NAT and filter rules",
        ))
        .stdout(predicate::str::contains(
            "No findings in what could be read.",
        ))
        .stdout(predicate::str::contains("No findings.\n").not())
        .stderr(predicate::str::contains(
            "doctor could not read everything it judges (exit 2)",
        ))
        .stderr(predicate::str::contains("rules/iptables-save"));
    let v = json_of(
        &["doctor", "--json", "--root", &format!("{NODE}/unreadable")],
        2,
    );
    assert_eq!(v["exit"], 2);
    assert!(v["not_read"][0]
        .as_str()
        .unwrap()
        .contains("NAT and filter rules"));
}
