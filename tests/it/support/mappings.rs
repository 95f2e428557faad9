//! A copy of the shipped mappings in a temp dir, for tests that change them on purpose.

use std::path::{Path, PathBuf};

/// Copies `mappings/` (its files, not `tests/`) into a new temp dir: (the dir, the copy).
pub fn mappings_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let dst = dir.path().join("mappings");
    std::fs::create_dir_all(&dst).expect("mkdir");
    for entry in std::fs::read_dir("mappings").expect("mappings dir") {
        let p = entry.expect("entry").path();
        if p.is_file() {
            std::fs::copy(&p, dst.join(p.file_name().expect("name"))).expect("copy");
        }
    }
    (dir, dst)
}

/// Replaces the first `from` in `file` with `to`; `from` must be there.
pub fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).expect("read");
    assert!(text.contains(from), "{from:?} not in {}", file.display());
    std::fs::write(file, text.replacen(from, to, 1)).expect("write");
}
