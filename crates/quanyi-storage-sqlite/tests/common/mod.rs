//! Database files for the tests: a fresh file in the temp directory and its removal.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

/// A path in the temp directory no other test uses.
pub fn fresh_path() -> PathBuf {
    std::env::temp_dir().join(format!(
        "{}.db",
        quanyi_testkit::unique_name("quanyi_sqlite")
    ))
}

/// Removes the database file and its WAL and shared-memory files.
pub fn remove_files(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}
