//! The policy tests of `policies/tests/*.yaml`, run through arq-auth (as `arq check` runs them).

use std::path::Path;

use projects as svc;

#[test]
fn policy_tests_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let report = arq_auth::policy::run_policy_tests_in(&dir).unwrap();
    assert!(
        report.total > 0,
        "no policy tests found in {}",
        dir.display()
    );
    assert!(
        report.is_success(),
        "policy tests failed: {:#?}",
        report.failures
    );
}

#[test]
fn the_embedded_policies_compile() {
    svc::policies().unwrap();
}
