//! The media spool and the media byte budget: where fetched videos live between fetch and upload, and how many
//! bytes of media the process handles at once.
//!
//! Semantics:
//! 1. A fetched body is streamed to a file under the spool while its SHA-256 is computed ([`SpoolWriter`]); it is
//!    never held whole in memory. The upload streams the file back ([`SpoolFile::stream`]); a retry re-opens the
//!    file, it never clones bytes. Memory per job is therefore a few read/write buffers, whatever the video size.
//! 2. Every spool file is owned by one [`SpoolFile`] (or [`SpoolWriter`] while it is written) whose `Drop` removes
//!    it: success, error, cancellation (a lease lost mid-upload drops the future) and panic (unwinding drops it)
//!    all clean up. Only a killed process leaves files behind, and those are removed at the next startup (rule 3).
//! 3. Each [`Spool`] works in its own instance directory `<MEDIA_SPOOL_DIR>/<pid>-<n>` holding an exclusively
//!    locked `.lock` file. [`Spool::open`] removes every sibling instance directory whose lock it can take (its
//!    owner is gone — killed, OOM-killed, restarted container), and never one whose owner is alive, so replicas or
//!    test processes sharing a directory do not delete each other's files. The sweep and the creation of an
//!    instance hold the root's `.open.lock`, so a sweep never sees an instance between its creation and its lock.
//!    An instance directory removed from outside (a tmp cleaner, an operator) is recreated, with its lock, by the
//!    next spool file ([`Spool::create`]), so one `rm` costs one retried try, not every try until a restart.
//! 4. The byte budget ([`MediaBudget`], `MEDIA_MEMORY_BUDGET_BYTES`) is a weighted semaphore: a video fetch takes
//!    a permit BEFORE it starts (outside the fetch deadline, so waiting for budget never times a fetch out),
//!    weighted by the size the event declares (`imeta size`), else the video size cap, capped at the whole budget
//!    so one huge body can still run alone. The permit travels with the prepared media and is released when the
//!    job drops it after the upload. Once the body is spooled its size is known and the permit shrinks to it
//!    ([`BudgetPermit::shrink_to`]: giving budget back never waits, so it cannot deadlock): a video that declared no
//!    size holds the cap only while it is fetched, not until its upload ends, and small videos do not queue behind
//!    budget nobody uses. So the number of videos in flight adapts to the budget instead of `WORKERS` deciding how
//!    much media is in flight. A body larger than it declared is still bounded by the size cap (taking more budget
//!    mid-fetch would hold-and-wait, a deadlock risk). The budget bounds media bytes in flight (on disk and in
//!    transit); with the spool, the heap part of each is a few buffers.
//! 5. Spool files are not fsynced: they never outlive their process (rule 3 removes them at the next start), the
//!    upload reads them back through the page cache, so a flush to disk per video bought nothing but latency.
//!
//! This module must not fetch, upload or decide job outcomes.

use futures::stream::Stream;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default `MEDIA_MEMORY_BUDGET_BYTES`: two maximum-size videos (2 × 100 MB) in flight at once.
pub const DEFAULT_MEDIA_BUDGET_BYTES: u64 = 200_000_000;
/// The budget's granularity: semaphore permits are KiB (a tokio permit count is a `u32` per acquire).
const BUDGET_UNIT: u64 = 1024;
/// Read buffer of the upload stream.
const READ_CHUNK: usize = 64 * 1024;
/// The root's lock file, held while an instance is swept or created (a file, so the sweep never removes it).
const OPEN_LOCK: &str = ".open.lock";
/// An instance directory's lock file, held by its owner for the spool's lifetime (rule 3).
const INSTANCE_LOCK: &str = ".lock";
/// Instances opened in this process (for unique instance directory names).
static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// Spool failures: the directory cannot be created, written or read. Transient (a full or unmounted disk can be
/// fixed without changing the job), except at startup where `open` failing stops the process.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("media spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SpoolError {
    fn io(path: &Path, source: std::io::Error) -> SpoolError {
        SpoolError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl divine_bridge_core::Classified for SpoolError {
    fn code(&self) -> divine_bridge_core::ErrorCode {
        divine_bridge_core::ErrorCode::MediaSpoolIo
    }
    fn class(&self) -> divine_bridge_core::ErrorClass {
        divine_bridge_core::ErrorClass::Transient
    }
}

/// The process-wide media byte budget (rule 4). Cheap to clone.
#[derive(Debug, Clone)]
pub struct MediaBudget {
    semaphore: Arc<Semaphore>,
    units: u32,
}

/// Budget held by one body; released when dropped.
#[derive(Debug)]
pub struct BudgetPermit {
    permit: OwnedSemaphorePermit,
}

impl BudgetPermit {
    /// Bytes of budget this permit holds.
    pub fn bytes(&self) -> u64 {
        self.permit.num_permits() as u64 * BUDGET_UNIT
    }

    /// Gives back what this permit holds beyond `bytes` (rounded up to the unit, at least one unit); never grows it
    /// (rule 4: once a body is spooled, it holds its observed size).
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = bytes.div_ceil(BUDGET_UNIT).max(1);
        let held = self.permit.num_permits() as u64;
        if keep < held {
            // The split-off part is dropped at once: its units go back to the semaphore.
            drop(self.permit.split((held - keep) as usize));
        }
    }
}

impl MediaBudget {
    /// A budget of `bytes` (at least one unit).
    pub fn new(bytes: u64) -> MediaBudget {
        let units = (bytes / BUDGET_UNIT).clamp(1, u64::from(u32::MAX)) as u32;
        MediaBudget {
            semaphore: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// The whole budget in bytes.
    pub fn total_bytes(&self) -> u64 {
        u64::from(self.units) * BUDGET_UNIT
    }

    /// Bytes not currently held.
    pub fn available_bytes(&self) -> u64 {
        self.semaphore.available_permits() as u64 * BUDGET_UNIT
    }

    /// Waits until `bytes` (rounded up to the unit, capped at the whole budget) are free and takes them.
    pub async fn acquire(&self, bytes: u64) -> BudgetPermit {
        let units = bytes.div_ceil(BUDGET_UNIT).clamp(1, u64::from(self.units)) as u32;
        let permit = self
            .semaphore
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("the media budget semaphore is never closed");
        BudgetPermit { permit }
    }
}

/// One process's spool: an instance directory plus the byte budget. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<SpoolInner>,
}

#[derive(Debug)]
struct SpoolInner {
    root: PathBuf,
    dir: PathBuf,
    budget: MediaBudget,
    next: AtomicU64,
    /// Holds the instance lock for the spool's lifetime (replaced when the directory is restored, see
    /// [`Spool::create`]).
    lock: std::sync::Mutex<std::fs::File>,
}

impl Drop for SpoolInner {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The default spool root: `<temp dir>/divine-atbridge-spool`.
pub fn default_spool_root() -> PathBuf {
    std::env::temp_dir().join("divine-atbridge-spool")
}

/// Takes the root's `.open.lock` (blocking): rule 3's sweep and the creation of an instance directory exclude each
/// other. Between `create_dir` and `try_lock` a new instance looks exactly like one whose owner died before locking
/// it, and a sweep running then removed it under its owner. Held until the returned file drops.
fn open_guard(root: &Path) -> Result<std::fs::File, SpoolError> {
    std::fs::create_dir_all(root).map_err(|e| SpoolError::io(root, e))?;
    let path = root.join(OPEN_LOCK);
    let guard = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| SpoolError::io(&path, e))?;
    guard.lock().map_err(|e| SpoolError::io(&path, e))?;
    Ok(guard)
}

/// Creates `dir` and its exclusively locked `.lock` file; call with [`open_guard`] held.
fn lock_instance(dir: &Path) -> Result<std::fs::File, SpoolError> {
    std::fs::create_dir_all(dir).map_err(|e| SpoolError::io(dir, e))?;
    let lock_path = dir.join(INSTANCE_LOCK);
    let lock = std::fs::File::create(&lock_path).map_err(|e| SpoolError::io(&lock_path, e))?;
    lock.try_lock().map_err(|e| {
        SpoolError::io(
            &lock_path,
            std::io::Error::other(format!("instance lock is taken: {e}")),
        )
    })?;
    Ok(lock)
}

impl Spool {
    /// Opens a spool under `root` (created if missing): removes instance directories left by dead processes
    /// (rule 3), then creates and locks this instance's directory.
    pub fn open(root: &Path, budget: MediaBudget) -> Result<Spool, SpoolError> {
        let _open_guard = open_guard(root)?;
        let removed = clean_stale(root)?;
        if removed > 0 {
            tracing::info!(root = %root.display(), removed, "removed media spool directories of dead processes");
        }
        let name = format!("{}-{}", std::process::id(), INSTANCES.fetch_add(1, Ordering::Relaxed));
        let dir = root.join(name);
        let lock = lock_instance(&dir)?;
        Ok(Spool {
            inner: Arc::new(SpoolInner {
                root: root.to_path_buf(),
                dir,
                budget,
                next: AtomicU64::new(0),
                lock: std::sync::Mutex::new(lock),
            }),
        })
    }

    /// Recreates this instance's directory and its lock after something outside the bridge removed them (a tmp
    /// cleaner, an operator's `rm`): otherwise every later spool file fails `media_spool_io` until a restart.
    fn restore_dir(&self) -> Result<(), SpoolError> {
        let _open_guard = open_guard(&self.inner.root)?;
        if self.inner.dir.join(INSTANCE_LOCK).exists() {
            return Ok(()); // another task of this spool restored it first
        }
        let lock = lock_instance(&self.inner.dir)?;
        *self.inner.lock.lock().unwrap_or_else(|p| p.into_inner()) = lock;
        tracing::warn!(
            code = "media_spool_io",
            dir = %self.inner.dir.display(),
            "media spool directory was removed from outside the bridge; recreated it"
        );
        Ok(())
    }

    /// This instance's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn budget(&self) -> &MediaBudget {
        &self.inner.budget
    }

    /// A new spool file, written through the returned writer.
    pub fn create(&self) -> Result<SpoolWriter, SpoolError> {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let path = self.inner.dir.join(format!("{n}.media"));
        let file = match std::fs::File::create(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.restore_dir()?;
                std::fs::File::create(&path)
            }
            other => other,
        }
        .map_err(|e| SpoolError::io(&path, e))?;
        Ok(SpoolWriter {
            guard: PathGuard(path),
            file: std::io::BufWriter::with_capacity(READ_CHUNK, file),
            hasher: Sha256::new(),
            size: 0,
            head: Vec::new(),
            _spool: self.clone(),
        })
    }

    /// Files currently in this instance's directory (tests and diagnostics).
    pub fn file_count(&self) -> usize {
        std::fs::read_dir(&self.inner.dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name() != INSTANCE_LOCK)
                    .count()
            })
            .unwrap_or(0)
    }
}

/// Removes the instance directories under `root` whose lock is free (their process is gone). Returns how many.
fn clean_stale(root: &Path) -> Result<usize, SpoolError> {
    let mut removed = 0;
    for entry in std::fs::read_dir(root).map_err(|e| SpoolError::io(root, e))? {
        let entry = entry.map_err(|e| SpoolError::io(root, e))?;
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let lock_path = path.join(INSTANCE_LOCK);
        let owner_alive = match std::fs::OpenOptions::new().write(true).open(&lock_path) {
            // Taking the lock proves the owner is gone; it is released when `f` drops, after the removal.
            Ok(f) => match f.try_lock() {
                Ok(()) => false,
                Err(std::fs::TryLockError::WouldBlock) => true,
                Err(std::fs::TryLockError::Error(e)) => return Err(SpoolError::io(&lock_path, e)),
            },
            // No lock file: a directory whose owner died before locking it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(SpoolError::io(&lock_path, e)),
        };
        if !owner_alive {
            std::fs::remove_dir_all(&path).map_err(|e| SpoolError::io(&path, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes its path when dropped.
#[derive(Debug)]
struct PathGuard(PathBuf);

impl Drop for PathGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), error = %e, "could not remove media spool file");
            }
        }
    }
}

/// How many leading bytes are kept for content sniffing.
pub const HEAD_BYTES: usize = 64;

/// Writes one body to the spool while hashing it. Dropping it unfinished removes the file.
#[derive(Debug)]
pub struct SpoolWriter {
    guard: PathGuard,
    file: std::io::BufWriter<std::fs::File>,
    hasher: Sha256,
    size: u64,
    head: Vec<u8>,
    _spool: Spool,
}

impl SpoolWriter {
    /// Appends a chunk (hashing it). Blocking file I/O on a buffered writer; chunks are network-sized.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), SpoolError> {
        if self.head.len() < HEAD_BYTES {
            let take = (HEAD_BYTES - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        self.file.write_all(chunk).map_err(|e| SpoolError::io(&self.guard.0, e))
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The first [`HEAD_BYTES`] bytes written.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Flushes the buffer to the file and closes it (no fsync: rule 5).
    pub fn finish(self) -> Result<SpoolFile, SpoolError> {
        let SpoolWriter {
            guard,
            file,
            hasher,
            size,
            head: _,
            _spool,
        } = self;
        drop(
            file.into_inner()
                .map_err(|e| SpoolError::io(&guard.0, e.into_error()))?,
        );
        Ok(SpoolFile {
            inner: Arc::new(SpoolFileInner {
                guard,
                size,
                sha256: hasher.finalize().into(),
                _spool,
            }),
        })
    }
}

/// A complete spooled body: its size and SHA-256, readable as a stream any number of times. The file is removed
/// when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct SpoolFile {
    inner: Arc<SpoolFileInner>,
}

#[derive(Debug)]
struct SpoolFileInner {
    // Field order: the file goes before the spool directory can be removed.
    guard: PathGuard,
    size: u64,
    sha256: [u8; 32],
    _spool: Spool,
}

impl SpoolFile {
    pub fn path(&self) -> &Path {
        &self.inner.guard.0
    }

    pub fn size(&self) -> u64 {
        self.inner.size
    }

    pub fn sha256(&self) -> [u8; 32] {
        self.inner.sha256
    }

    /// The body as a stream of chunks read from the file (a fresh read each call, opened on first poll, so an I/O
    /// error surfaces as a body error of the request it feeds). The stream keeps the file alive.
    pub fn stream(&self) -> impl Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static + use<> {
        let keep = self.clone();
        futures::stream::try_unfold(
            (None, keep),
            |(file, keep): (Option<tokio::fs::File>, SpoolFile)| async move {
                use tokio::io::AsyncReadExt;
                let mut file = match file {
                    Some(f) => f,
                    None => tokio::fs::File::open(keep.path()).await?,
                };
                let mut buf = bytes::BytesMut::with_capacity(READ_CHUNK);
                let n = file.read_buf(&mut buf).await?;
                if n == 0 {
                    Ok(None)
                } else {
                    Ok(Some((buf.freeze(), (Some(file), keep))))
                }
            },
        )
    }

    /// Reads the whole file (small bodies and tests only).
    pub async fn read_all(&self) -> Result<Vec<u8>, SpoolError> {
        tokio::fs::read(self.path())
            .await
            .map_err(|e| SpoolError::io(self.path(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn budget_limits_concurrency_by_weight() {
        let budget = MediaBudget::new(100 * 1024);
        let a = budget.acquire(60 * 1024).await;
        assert_eq!(a.bytes(), 60 * 1024);
        // A second 60 KiB body does not fit next to the first: it waits.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(100), budget.acquire(60 * 1024)).await;
        assert!(waiting.is_err(), "60 + 60 KiB exceeds a 100 KiB budget");
        // A small one does fit.
        let b = budget.acquire(30 * 1024).await;
        drop(a);
        let c = tokio::time::timeout(std::time::Duration::from_secs(5), budget.acquire(60 * 1024))
            .await
            .expect("released budget is reusable");
        drop((b, c));
        // A body larger than the whole budget still runs, alone.
        let huge = budget.acquire(10 * 1024 * 1024).await;
        assert_eq!(huge.bytes(), budget.total_bytes());
        assert_eq!(budget.available_bytes(), 0);
        drop(huge);
        assert_eq!(budget.available_bytes(), budget.total_bytes());
    }

    #[tokio::test]
    async fn a_permit_shrinks_to_the_observed_size_and_never_grows() {
        let budget = MediaBudget::new(100 * 1024);
        // A video that declared no size takes the cap (here: the whole budget) while it is fetched ...
        let mut p = budget.acquire(10 * 1024 * 1024).await;
        assert_eq!(budget.available_bytes(), 0);
        // ... and holds its observed size (rounded up to the unit) once spooled, so the next fetch starts at once.
        p.shrink_to(2_918);
        assert_eq!(p.bytes(), 3 * 1024);
        assert_eq!(budget.available_bytes(), 97 * 1024);
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), budget.acquire(90 * 1024))
            .await
            .expect("the given-back budget is free");
        p.shrink_to(50 * 1024);
        assert_eq!(p.bytes(), 3 * 1024, "shrinking never grows a permit");
        p.shrink_to(0);
        assert_eq!(p.bytes(), 1024, "at least one unit");
        drop((p, next));
        assert_eq!(budget.available_bytes(), budget.total_bytes());
    }

    #[tokio::test]
    async fn spool_file_hashes_streams_and_is_removed_on_drop() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path(), MediaBudget::new(1 << 20)).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = spool.create().unwrap();
        for chunk in data.chunks(10_000) {
            w.write(chunk).unwrap();
        }
        assert_eq!(w.head(), &data[..HEAD_BYTES]);
        let f = w.finish().unwrap();
        assert_eq!(f.size(), data.len() as u64);
        assert_eq!(f.sha256(), <[u8; 32]>::from(Sha256::digest(&data)));
        for _ in 0..2 {
            let mut s = Box::pin(f.stream());
            let mut got = Vec::new();
            while let Some(c) = s.next().await {
                got.extend_from_slice(&c.unwrap());
            }
            assert_eq!(got, data, "each stream re-reads the whole file");
        }
        let path = f.path().to_path_buf();
        assert!(path.exists());
        drop(f);
        assert!(!path.exists(), "dropping the last handle removes the file");
        // An unfinished writer (an error or cancellation mid-fetch) removes its file too.
        let mut w = spool.create().unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        assert_eq!(spool.file_count(), 0);
    }

    #[tokio::test]
    async fn spool_file_is_removed_when_a_task_panics() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path(), MediaBudget::new(1 << 20)).unwrap();
        let s = spool.clone();
        let joined = tokio::spawn(async move {
            let mut w = s.create().unwrap();
            w.write(b"body").unwrap();
            let _f = w.finish().unwrap();
            panic!("handler bug");
        })
        .await;
        assert!(joined.unwrap_err().is_panic());
        assert_eq!(spool.file_count(), 0, "unwinding dropped the spool file");
    }

    #[test]
    fn startup_removes_dead_instances_only() {
        let root = tempfile::tempdir().unwrap();
        // A dead process's instance (lock file present but not held) and one that died before locking.
        let dead = root.path().join("999999-0");
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(dead.join(".lock"), b"").unwrap();
        std::fs::write(dead.join("0.media"), vec![0u8; 1000]).unwrap();
        let unlocked = root.path().join("999999-1");
        std::fs::create_dir_all(&unlocked).unwrap();
        std::fs::write(unlocked.join("3.media"), b"x").unwrap();
        // A live instance (another replica sharing the directory) with a file in flight.
        let live = Spool::open(root.path(), MediaBudget::new(1 << 20)).unwrap();
        let mut w = live.create().unwrap();
        w.write(b"in flight").unwrap();
        let live_file = w.finish().unwrap();

        let second = Spool::open(root.path(), MediaBudget::new(1 << 20)).unwrap();
        assert!(!dead.exists(), "dead instance removed");
        assert!(!unlocked.exists(), "never-locked instance removed");
        assert!(live_file.path().exists(), "a live instance's file is kept");
        assert!(second.dir().exists());
        drop(second);
        drop(live_file);
        let live_dir = live.dir().to_path_buf();
        drop(live);
        assert!(!live_dir.exists(), "a dropped spool removes its directory");
    }

    /// Spools opened at once under one root (replicas or the tests of one binary sharing the default directory):
    /// each must keep its own directory. A sweep used to read a sibling created a moment earlier, before its lock
    /// file existed or was locked, as a dead process's directory and remove it under its owner, whose every
    /// spool file then failed with ENOENT (CI: `media_spool_io` until the e2e test timed out).
    #[test]
    fn spools_opened_at_once_keep_their_directories() {
        let root = tempfile::tempdir().unwrap();
        for _round in 0..50 {
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
            let threads: Vec<_> = (0..6)
                .map(|_| {
                    let (root, barrier) = (root.path().to_path_buf(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        Spool::open(&root, MediaBudget::new(1 << 20)).unwrap()
                    })
                })
                .collect();
            let spools: Vec<Spool> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            for spool in &spools {
                assert!(
                    spool.dir().join(".lock").exists(),
                    "{} lost its directory",
                    spool.dir().display()
                );
                let mut w = spool.create().unwrap();
                w.write(b"x").unwrap();
                drop(w.finish().unwrap());
            }
        }
    }

    /// Something outside the bridge removed the instance directory (a tmp cleaner, an operator): the next spool file
    /// recreates it, with its lock, instead of every try failing `media_spool_io` until a restart; and a spool opened
    /// afterwards by another process does not take the restored directory for a dead one.
    #[test]
    fn a_directory_removed_from_outside_is_restored_with_its_lock() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path(), MediaBudget::new(1 << 20)).unwrap();
        std::fs::remove_dir_all(spool.dir()).unwrap();
        let mut w = spool.create().unwrap();
        w.write(b"after the rm").unwrap();
        let file = w.finish().unwrap();
        assert!(file.path().exists());
        let other = Spool::open(root.path(), MediaBudget::new(1 << 20)).unwrap();
        assert!(
            spool.dir().join(".lock").exists(),
            "the sweep left the restored directory alone"
        );
        assert!(file.path().exists());
        drop(other);
    }
}
