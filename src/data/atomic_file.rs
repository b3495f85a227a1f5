//! Write a file so that readers see either nothing or the whole finished file: write to a temporary name
//! beside it, fsync, then rename over the final name (rename is atomic within a directory on POSIX).
//! A crash half-way through `prepare` therefore never leaves a truncated shard that looks valid.
//!
//! Every failure removes the temporary file, whether it happens while writing or while committing. Only a
//! process killed outright (kill -9, power loss) leaves one behind; [`sweep_stale_temps`] removes those of
//! dead processes, and the tools call it on their output directories at start.

use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

static NEXT_SERIAL: AtomicU64 = AtomicU64::new(0);

pub struct AtomicFile {
    final_path: PathBuf,
    temp_path: PathBuf,
    /// `None` once `commit` has taken it.
    writer: Option<BufWriter<File>>,
    /// Set once the temporary has been renamed into place; until then, dropping removes the temporary
    /// (an error half-way, or a failed flush, fsync or rename inside `commit`).
    renamed: bool,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self> {
        let file_name =
            path.file_name().ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
        let mut temp_name = file_name.to_os_string();
        // Unique per process and per writer, so concurrent writers of one name never share a temporary.
        let serial = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed);
        temp_name.push(format!(".tmp{}-{serial}", std::process::id()));
        let temp_path = path.with_file_name(temp_name);
        let file = File::create(&temp_path).map_err(|e| Error::io(temp_path.display(), e))?;
        Ok(AtomicFile {
            final_path: path.to_path_buf(),
            temp_path,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
            renamed: false,
        })
    }

    fn writer(&mut self) -> &mut BufWriter<File> {
        self.writer.as_mut().expect("AtomicFile used after commit")
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let temp = &self.temp_path;
        self.writer
            .as_mut()
            .expect("AtomicFile used after commit")
            .write_all(bytes)
            .map_err(|e| Error::io(temp.display(), e))
    }

    /// Overwrite bytes at `offset` (used to fill in a header once the contents are known).
    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        let temp = self.temp_path.display().to_string();
        let writer = self.writer();
        writer.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(&temp, e))?;
        writer.write_all(bytes).map_err(|e| Error::io(&temp, e))?;
        writer.seek(SeekFrom::End(0)).map_err(|e| Error::io(&temp, e))?;
        Ok(())
    }

    /// Flush, fsync, and rename into place; then fsync the directory so the rename itself is durable.
    pub fn commit(mut self) -> Result<()> {
        let temp = self.temp_path.display().to_string();
        let writer = self.writer.take().expect("AtomicFile committed twice");
        let file = writer.into_inner().map_err(|e| Error::io(&temp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&temp, e))?;
        drop(file);
        fs::rename(&self.temp_path, &self.final_path).map_err(|e| Error::io(self.final_path.display(), e))?;
        self.renamed = true;
        if let Some(dir) = self.final_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(dir_handle) = File::open(dir) {
                // Best effort: some filesystems refuse fsync on a directory handle.
                let _ = dir_handle.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.renamed {
            drop(self.writer.take());
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

/// The process id in a temporary's name `<name>.tmp<pid>-<serial>`, if `name` is one.
fn temp_owner(name: &str) -> Option<i32> {
    let (_, suffix) = name.rsplit_once(".tmp")?;
    let (pid, serial) = suffix.split_once('-')?;
    serial.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Is process `pid` alive? A process of another user that we may not signal counts as alive.
fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 sends nothing; kill only checks that the process exists and may be signalled.
    let status = unsafe { libc::kill(pid, 0) };
    status == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Writes `bytes` to `path` atomically: a temporary beside it, fsync, rename.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)?;
    file.commit()
}

/// Removes the temporaries in `dir` left by writers whose process is gone (killed mid-write), and
/// returns their paths. A missing directory holds none.
pub fn sweep_stale_temps(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir.display(), e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir.display(), e))?.path();
        let Some(pid) = path.file_name().and_then(|n| n.to_str()).and_then(temp_owner) else { continue };
        if pid > 0 && !process_alive(pid) && path.is_file() {
            fs::remove_file(&path).map_err(|e| Error::io(path.display(), e))?;
            removed.push(path);
        }
    }
    Ok(removed)
}
