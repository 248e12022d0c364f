//! `ctrace report FILE...` across nodes: recordings grouped by the header's
//! hostname, with per-node and overall totals, in text and `--json`. Pure:
//! fixture recordings, no root.
use assert_cmd::Command;
use serde_json::Value;

const REC: &str = "tests/fixtures/recordings";

fn rec(name: &str) -> String {
    format!("{}/{REC}/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// insert-failed.jsonl as if recorded on another node.
fn on_node_b() -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("ctrace-nodes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let s = std::fs::read_to_string(rec("insert-failed.jsonl")).unwrap();
    let s = s.replacen("\"hostname\": \"node-a\"", "\"hostname\": \"node-b\"", 1);
    assert!(s.contains("node-b"));
    let f = dir.join("node-b.jsonl");
    std::fs::write(&f, s).unwrap();
    (dir, f.display().to_string())
}

#[test]
fn several_recordings_are_grouped_by_node_with_totals() {
    let (dir, b) = on_node_b();
    let files = [rec("clean.jsonl"), rec("insert-failed.jsonl"), b.clone()];
    let out = Command::cargo_bin("ctrace")
        .unwrap()
        .arg("report")
        .args(&files)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("=== node node-a (2 recording(s)) ==="),
        "{text}"
    );
    assert!(
        text.contains("=== node node-b (1 recording(s)) ==="),
        "{text}"
    );
    assert!(text.contains("=== all 2 nodes ==="), "{text}");
    // each recording keeps its own report inside its node
    assert_eq!(
        text.matches("the kernel's insert_failed counter agrees: 3")
            .count(),
        2,
        "{text}"
    );
    let total = text
        .lines()
        .find(|l| l.trim_start().starts_with("total "))
        .unwrap();
    assert!(
        total.contains("3 recording(s)") && total.contains("kernel: insert_failed 6"),
        "{total}"
    );

    let out = Command::cargo_bin("ctrace")
        .unwrap()
        .args(["report", "--json"])
        .args(&files)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], 1);
    assert_eq!(v["command"], "report");
    assert_eq!(v["exit"], 1);
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0]["hostname"], "node-a");
    assert_eq!(nodes[0]["recordings"].as_array().unwrap().len(), 2);
    assert_eq!(nodes[1]["hostname"], "node-b");
    assert_eq!(nodes[1]["totals"]["kernel_counters"]["insert_failed"], 3);
    assert_eq!(v["totals"]["recordings"], 3);
    assert_eq!(v["totals"]["kernel_counters"]["insert_failed"], 6);
    let per_node: u64 = nodes
        .iter()
        .map(|n| n["totals"]["events"]["insert_failed"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        v["totals"]["events"]["insert_failed"].as_u64().unwrap(),
        per_node
    );
    assert_eq!(v["totals"]["lost"], 0);
    std::fs::remove_dir_all(dir).ok();
}

/// A recording without a trailer makes the total's `lost` unknown, never 0.
#[test]
fn an_unknown_loss_stays_unknown_in_the_totals() {
    let out = Command::cargo_bin("ctrace")
        .unwrap()
        .args([
            "report",
            "--json",
            &rec("clean.jsonl"),
            &rec("truncated.jsonl"),
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["totals"]["lost"], Value::Null, "{v}");
}
