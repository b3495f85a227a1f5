//! Atomic writes leave no temporary behind: not after a failed commit, and not after a killed writer
//! once its directory is swept.

use std::path::{Path, PathBuf};

use peerlm::data::atomic_file::{sweep_stale_temps, AtomicFile};

fn temp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("atomic-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn a_commit_that_fails_removes_its_temporary() {
    let dir = temp_dir("failed-commit");
    // The final name is a non-empty directory, so the rename inside `commit` fails after the data is
    // flushed and synced: the same place a full disk makes the flush fail.
    let target = dir.join("checkpoint.safetensors");
    std::fs::create_dir_all(target.join("occupied")).unwrap();
    let mut file = AtomicFile::create(&target).unwrap();
    file.write_all(&[7; 4096]).unwrap();
    let error = file.commit().unwrap_err().to_string();
    assert!(error.contains("checkpoint.safetensors"), "{error}");
    assert_eq!(names(&dir), ["checkpoint.safetensors"], "the temporary outlived the failure");
}

#[test]
fn sweeping_removes_the_temporaries_of_dead_processes_only() {
    let dir = temp_dir("sweep");
    // No process has an id this large (Linux caps ids at 2^22), so it is certainly dead.
    let dead = dir.join("checkpoint.safetensors.tmp2147483646-0");
    let alive = dir.join(format!("checkpoint.safetensors.tmp{}-3", std::process::id()));
    for path in [&dead, &alive, &dir.join("metrics.jsonl"), &dir.join("notes.tmp-x")] {
        std::fs::write(path, b"x").unwrap();
    }
    assert_eq!(sweep_stale_temps(&dir).unwrap(), [dead]);
    let own = format!("checkpoint.safetensors.tmp{}-3", std::process::id());
    assert_eq!(names(&dir), [own.as_str(), "metrics.jsonl", "notes.tmp-x"]);
    assert!(sweep_stale_temps(&dir.join("missing")).unwrap().is_empty());
}
