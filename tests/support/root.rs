//! Tests that need root (network namespaces, loop-mounted ext4 images,
//! tmpfs): they install what they lack themselves, and when they cannot run
//! here they say so and pass — unless `PROGLOG_REQUIRE_ROOT_TESTS=1` (CI, which
//! runs as root, sets it), where a test that cannot run fails: it must not pass
//! by skipping. Shared by the black-box tests and `proglog-log`'s.

use std::process::{Command, Stdio};

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Ends a test that cannot run here: a message, or (with
/// `PROGLOG_REQUIRE_ROOT_TESTS=1`) a failure.
pub fn cannot_run(reason: &str) {
    let required = std::env::var("PROGLOG_REQUIRE_ROOT_TESTS").is_ok_and(|value| value == "1");
    assert!(!required, "cannot run here ({reason}), and PROGLOG_REQUIRE_ROOT_TESTS=1 says it must");
    eprintln!("skipped: {reason}");
}

/// Whether `program` can be started; as root, installs Debian's `package` first if it
/// does not (apt-get, quietly).
pub fn have(program: &str, package: &str) -> bool {
    let runs = || {
        Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    };
    if runs() || !is_root() {
        return runs();
    }
    let install = Command::new("apt-get")
        .args(["install", "-y", "-qq", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    install && runs()
}
