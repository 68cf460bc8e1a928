//! JUnit XML for CI systems (GitLab, Jenkins, GitHub test reporters): one
//! test suite per run, one test case per check. A failed check's message
//! says how many times it failed; its text carries each kept failure's
//! story and the command that reproduces the run. A run that could not
//! start is one test case with an error, so a CI job always has a file to
//! show.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::report::failure_story;
use super::Checks;

/// What the suite is called: `gpuswap-run.SCENARIO`.
fn suite_name(scenario: &str) -> String {
    format!("gpuswap-run.{scenario}")
}

/// The JUnit document for a finished run.
pub fn for_run(checks: &Checks, report: &Value, elapsed_s: f64) -> String {
    let scenario = report["scenario"].as_str().unwrap_or("?");
    let reproduce = report["reproduce"].as_str().unwrap_or("");
    let suite = suite_name(scenario);
    let (mut failures, mut skipped, mut tests) = (0, 0, 0);
    let mut cases = String::new();
    for (name, check) in checks.iter() {
        tests += 1;
        let counts = format!(
            "{} passed, {} failed, {} skipped",
            check.passed, check.failed, check.skipped
        );
        let _ = writeln!(
            cases,
            "    <testcase classname=\"{}\" name=\"{}\" time=\"0\">",
            attr(&suite),
            attr(name)
        );
        if check.failed > 0 {
            failures += 1;
            let mut story = String::new();
            for f in &check.failures {
                for line in failure_story(name, f) {
                    story.push_str(&line);
                    story.push('\n');
                }
                story.push('\n');
            }
            if check.failures.len() < check.failed as usize {
                let _ = writeln!(
                    story,
                    "({} more failures not kept)\n",
                    check.failed as usize - check.failures.len()
                );
            }
            let _ = writeln!(story, "reproduce: {reproduce}");
            let _ = writeln!(
                cases,
                "      <failure type=\"check\" message=\"{}\">{}</failure>",
                attr(&format!("{name}: {counts}")),
                text(&story)
            );
        } else if check.optional && check.passed == 0 {
            skipped += 1;
            let _ = writeln!(
                cases,
                "      <skipped message=\"{}\"/>",
                attr("not exercised this run")
            );
        }
        let _ = write!(
            cases,
            "      <system-out>{}</system-out>\n    </testcase>\n",
            text(&counts)
        );
    }
    let mut properties = String::new();
    for (key, value) in [
        ("seed", report["seed"].to_string()),
        ("reproduce", reproduce.to_string()),
        (
            "qemu",
            report["qemu"]["version"]
                .as_str()
                .unwrap_or("?")
                .to_string(),
        ),
        ("logs", report["logs"].as_str().unwrap_or("").to_string()),
    ] {
        let _ = writeln!(
            properties,
            "      <property name=\"{}\" value=\"{}\"/>",
            attr(key),
            attr(&value)
        );
    }
    document(
        &suite,
        tests,
        failures,
        0,
        skipped,
        elapsed_s,
        &format!("    <properties>\n{properties}    </properties>\n{cases}"),
    )
}

/// The JUnit document for a run that could not start.
pub fn for_error(scenario: &str, error: &str, reproduce: &str) -> String {
    let suite = suite_name(scenario);
    let case = format!(
        "    <testcase classname=\"{}\" name=\"run\" time=\"0\">\n      \
         <error type=\"could_not_run\" message=\"the run could not start\">{}</error>\n    \
         </testcase>\n",
        attr(&suite),
        text(&format!("{error}\n\nreproduce: {reproduce}\n"))
    );
    document(&suite, 1, 0, 1, 0, 0.0, &case)
}

fn document(
    suite: &str,
    tests: u32,
    failures: u32,
    errors: u32,
    skipped: u32,
    time: f64,
    body: &str,
) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <testsuites name=\"gpuswap-run\" tests=\"{tests}\" failures=\"{failures}\" \
         errors=\"{errors}\" skipped=\"{skipped}\" time=\"{time:.3}\">\n  \
         <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" \
         skipped=\"{skipped}\" time=\"{time:.3}\">\n{body}  </testsuite>\n</testsuites>\n",
        attr(suite)
    )
}

/// Writes `xml` to `path`, creating its directory.
pub fn write(path: &Path, xml: &str) -> crate::Result<()> {
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(path, xml).map_err(|e| format!("{}: {e}", path.display()))
}

/// Text content: markup characters escaped; characters XML 1.0 cannot
/// carry (most control characters) replaced.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// An attribute value: as text, with quotes and line breaks escaped too.
fn attr(s: &str) -> String {
    text(s)
        .replace('"', "&quot;")
        .replace('\n', "&#10;")
        .replace('\r', "&#13;")
        .replace('\t', "&#9;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report() -> Value {
        json!({
            "scenario": "steady",
            "seed": 3,
            "reproduce": "cargo xtask run -- steady --seed 3 --sizes 64x64",
            "qemu": {"version": "10.0.2"},
            "logs": "/tmp/run <1>",
        })
    }

    #[test]
    fn one_case_per_check_with_failures_and_skips() {
        let mut checks = Checks::default();
        checks.expect("guest_content_intact");
        checks.optional("purged_buffer_refuses_use");
        checks.record("guest_content_intact", true, || Value::Null);
        checks.record("host_copy_matches_guest", false, || {
            json!({"res_id": 7, "buffer": 2, "kind": "2d", "size": [64, 64],
                   "pattern": "random", "version": 3, "t_s": 1.5,
                   "detail": "hash <a> & \"b\"\u{1}",
                   "daemon_trace": [{"time_us": 10, "event": "attach", "generation": 2}],
                   "guest_kernel": [{"time_us": 8, "uncertainty_us": 1400.4, "event": "bo_attach",
                                     "args": {"res": 7, "gen": 2, "use": "transfer"}}]})
        });
        let xml = for_run(&checks, &report(), 12.5);
        let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        let suite = doc
            .descendants()
            .find(|n| n.has_tag_name("testsuite"))
            .unwrap();
        assert_eq!(suite.attribute("name"), Some("gpuswap-run.steady"));
        assert_eq!(suite.attribute("tests"), Some("3"));
        assert_eq!(suite.attribute("failures"), Some("1"));
        assert_eq!(suite.attribute("skipped"), Some("1"));
        assert_eq!(suite.attribute("time"), Some("12.500"));
        let cases: Vec<_> = suite
            .children()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        let names: Vec<_> = cases.iter().filter_map(|c| c.attribute("name")).collect();
        assert_eq!(
            names,
            [
                "guest_content_intact",
                "host_copy_matches_guest",
                "purged_buffer_refuses_use"
            ]
        );
        let failure = cases[1]
            .children()
            .find(|n| n.has_tag_name("failure"))
            .expect("failure element");
        assert_eq!(
            failure.attribute("message"),
            Some("host_copy_matches_guest: 0 passed, 1 failed, 0 skipped")
        );
        let story = failure.text().unwrap();
        assert!(story.contains("resource 7"), "{story}");
        assert!(story.contains("hash <a> & "), "{story}");
        assert!(story.contains("daemon  attach"), "{story}");
        // The guest kernel's ATTACH, by time before the daemon's.
        let kernel = story
            .find("kernel  bo_attach          g2")
            .unwrap_or_else(|| panic!("{story}"));
        assert!(story[kernel..].contains("(±1400 µs)"), "{story}");
        assert!(kernel < story.find("daemon  attach").unwrap(), "{story}");
        assert!(
            story.contains("reproduce: cargo xtask run -- steady --seed 3"),
            "{story}"
        );
        assert!(cases[2].children().any(|n| n.has_tag_name("skipped")));
        assert!(!cases[0]
            .children()
            .any(|n| n.has_tag_name("failure") || n.has_tag_name("skipped")));
        let logs = doc
            .descendants()
            .find(|n| n.attribute("name") == Some("logs"))
            .unwrap();
        assert_eq!(logs.attribute("value"), Some("/tmp/run <1>"));
    }

    #[test]
    fn a_run_that_could_not_start_is_an_error() {
        let xml = for_error(
            "soak",
            "no guest agent within 180s\n<serial>",
            "cargo xtask run -- soak",
        );
        let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        let root = doc.root_element();
        assert_eq!(root.attribute("errors"), Some("1"));
        let error = doc.descendants().find(|n| n.has_tag_name("error")).unwrap();
        assert!(error.text().unwrap().contains("<serial>"));
        assert!(error
            .text()
            .unwrap()
            .contains("reproduce: cargo xtask run -- soak"));
    }
}
