//! Consistency checks of a stress run: each counted separately, with the
//! first failures kept in full for the report.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// Failures kept per check; the count goes on.
const KEPT_FAILURES: usize = 8;

/// One consistency check: how often it held, was skipped, failed.
#[derive(Debug, Default)]
pub struct Check {
    pub passed: u64,
    /// Not applicable this time (e.g. the backing was evicted between the
    /// transfer and the host's look at it).
    pub skipped: u64,
    pub failed: u64,
    pub failures: Vec<Value>,
    /// May end the run without having run (see [`Checks::optional`]).
    pub optional: bool,
}

impl Check {
    pub fn json(&self) -> Value {
        json!({
            "passed": self.passed,
            "skipped": self.skipped,
            "failed": self.failed,
            "failures": self.failures,
            "optional": self.optional,
        })
    }
}

/// Every check of a run, by name.
#[derive(Debug, Default)]
pub struct Checks(BTreeMap<&'static str, Check>);

impl Checks {
    /// Registers `name` so it shows up in the report even if never used:
    /// a check that never ran is reported as failed (see `finish`).
    pub fn expect(&mut self, name: &'static str) {
        self.0.entry(name).or_default();
    }

    /// Registers `name` as a check that may not get a chance to run (it
    /// depends on what the guest's shrinker chose to do): reported either
    /// way, failed only by a failure.
    pub fn optional(&mut self, name: &'static str) {
        self.0.entry(name).or_default().optional = true;
    }

    /// Records one outcome; `failure` builds the failure's context.
    pub fn record(&mut self, name: &'static str, ok: bool, failure: impl FnOnce() -> Value) {
        let check = self.0.entry(name).or_default();
        if ok {
            check.passed += 1;
        } else {
            check.failed += 1;
            if check.failures.len() < KEPT_FAILURES {
                check.failures.push(failure());
            }
        }
    }

    /// Every failure kept, for adding what was only known later.
    pub fn failures_mut(&mut self) -> impl Iterator<Item = &mut Value> {
        self.0.values_mut().flat_map(|c| c.failures.iter_mut())
    }

    /// Records `n` passes at once.
    pub fn pass_n(&mut self, name: &'static str, n: u64) {
        self.0.entry(name).or_default().passed += n;
    }

    pub fn skip(&mut self, name: &'static str) {
        self.0.entry(name).or_default().skipped += 1;
    }

    /// A registered check that never passed nor failed proves nothing: it
    /// fails, so a run cannot pass by not looking.
    pub fn finish(&mut self) {
        for (name, check) in self.0.iter_mut() {
            if check.passed == 0 && check.failed == 0 && !check.optional {
                check.failed = 1;
                check.failures.push(json!({
                    "never_checked": name,
                    "skipped": check.skipped,
                }));
            }
        }
    }

    pub fn passed(&self) -> bool {
        self.0.values().all(|c| c.failed == 0)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Check)> {
        self.0.iter().map(|(k, v)| (*k, v))
    }

    pub fn get(&self, name: &str) -> Option<&Check> {
        self.0.get(name)
    }

    pub fn json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, c)| (k.to_string(), c.json()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_and_the_first_ones_kept() {
        let mut c = Checks::default();
        for i in 0..20 {
            c.record("x", i % 2 == 0, || json!({ "i": i }));
        }
        let x = c.get("x").unwrap();
        assert_eq!(
            (x.passed, x.failed, x.failures.len()),
            (10, 10, KEPT_FAILURES)
        );
        assert_eq!(x.failures[0], json!({"i": 1}));
        assert!(!c.passed());
    }

    #[test]
    fn a_check_that_never_ran_fails_unless_optional() {
        let mut c = Checks::default();
        c.expect("ran");
        c.expect("never");
        c.optional("maybe");
        c.record("ran", true, || Value::Null);
        c.skip("never");
        assert!(c.passed());
        c.finish();
        assert!(!c.passed());
        assert_eq!(
            c.get("never").unwrap().failures[0]["never_checked"],
            "never"
        );
        assert_eq!(c.get("ran").unwrap().failed, 0);
        assert_eq!(c.get("maybe").unwrap().failed, 0);
    }
}
