//! The output directory of a training run, owned by one process at a time.
//!
//! A run directory holds `checkpoint.safetensors` and `metrics.jsonl` (and, when `train` prepared raw
//! data, `data/`). Training into a directory that already holds a run would replace a trained checkpoint
//! and mix two runs' metrics, so [`RunDir::open`] refuses it unless the caller resumes that run or asks
//! to overwrite it, and overwriting moves the old files aside into `previous-<n>/` rather than deleting
//! them. Two processes training into one directory would tear `metrics.jsonl` and race on the
//! checkpoint, so the directory is locked (`flock` on `.lock`, which the kernel releases when the process
//! ends, however it ends) for as long as the [`RunDir`] lives. Opening also sweeps the temporary files
//! that writers killed mid-write left behind.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::data::atomic_file::sweep_stale_temps;
use crate::error::Error;

/// The files that make a directory hold a run.
const RUN_FILES: [&str; 2] = ["checkpoint.safetensors", "metrics.jsonl"];

/// What to do when the directory already holds a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Refuse: a new run needs an empty directory (or one holding only prepared `data/`).
    Refuse,
    /// Continue the run: its checkpoint must be there.
    Resume,
    /// Start again: move the old run's files into `previous-<n>/`.
    Overwrite,
}

/// A locked run directory; the lock is released when this is dropped (or the process ends).
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    _lock: File,
    /// Where an overwritten run's files went.
    pub moved_to: Option<PathBuf>,
    /// Temporaries of killed writers that were removed.
    pub swept: Vec<PathBuf>,
}

impl RunDir {
    /// Creates (if needed) and locks `path`, applies `existing` to a run already there, and removes stale
    /// temporaries from it and from its `data/`.
    pub fn open(path: &Path, existing: Existing) -> Result<RunDir, Error> {
        let io = |what: &Path, e: std::io::Error| Error::Train(format!("{}: {e}", what.display()));
        std::fs::create_dir_all(path).map_err(|e| io(path, e))?;
        let lock = lock(path)?;
        let mut swept = sweep_stale_temps(path)?;
        swept.extend(sweep_stale_temps(&path.join("data"))?);
        let held: Vec<&str> = RUN_FILES.into_iter().filter(|name| path.join(name).exists()).collect();
        let mut moved_to = None;
        match existing {
            Existing::Refuse if !held.is_empty() => {
                return Err(Error::Train(format!(
                    "{} already holds a run ({}): pass --resume to continue it, or --overwrite to start again \
                     (the old files move to {}/previous-<n>/)",
                    path.display(),
                    held.join(", "),
                    path.display()
                )));
            }
            Existing::Resume if !path.join(RUN_FILES[0]).exists() => {
                return Err(Error::Train(format!("{}: no {} to resume", path.display(), RUN_FILES[0])));
            }
            Existing::Overwrite if !held.is_empty() => {
                let aside = free_name(path);
                std::fs::create_dir(&aside).map_err(|e| io(&aside, e))?;
                for name in held {
                    std::fs::rename(path.join(name), aside.join(name)).map_err(|e| io(&path.join(name), e))?;
                }
                moved_to = Some(aside);
            }
            _ => {}
        }
        Ok(RunDir { path: path.to_path_buf(), _lock: lock, moved_to, swept })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn checkpoint(&self) -> PathBuf {
        self.path.join(RUN_FILES[0])
    }
}

/// Takes the exclusive lock on `<dir>/.lock`, failing at once if another process holds it.
fn lock(dir: &Path) -> Result<File, Error> {
    let path = dir.join(".lock");
    let file = File::create(&path).map_err(|e| Error::Train(format!("{}: {e}", path.display())))?;
    // SAFETY: flock on a descriptor this function owns; it touches no memory.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(Error::Train(format!(
                "{}: another process is training into this directory (it holds {})",
                dir.display(),
                path.display()
            )));
        }
        return Err(Error::Train(format!("{}: cannot lock: {error}", path.display())));
    }
    Ok(file)
}

/// The first `previous-<n>` that does not exist yet in `dir`.
fn free_name(dir: &Path) -> PathBuf {
    (1..).map(|n| dir.join(format!("previous-{n}"))).find(|p| !p.exists()).expect("some name is free")
}
