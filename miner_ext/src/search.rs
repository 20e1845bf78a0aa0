//! Searches on a process-wide pool of hashing threads.
//!
//! Every search (one per farmer) is a job on one shared pool of worker
//! threads, one per core by default. Workers take fixed-size chunks of nonces
//! from the jobs in turn, so concurrent searches share the cores evenly, and
//! each job carries its own bounds (hash count, target, deadline). A job's
//! nonces are numbered by *offset* from its first nonce; chunks are claimed in
//! offset order, and the best hash is the one with the most zeros, ties going
//! to the lowest offset, so the answer for a fully scanned range does not
//! depend on how many threads scanned it.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::scan::{scan, Hit, Range};
use crate::work::{leading_zeros, Work};

/// Nonces per chunk: a few milliseconds of work with any kernel; a job's
/// bounds are also checked inside a chunk, every batch.
const CHUNK: u64 = 1 << 16;
/// Upper bound on `threads`: a sanity limit, far above any real core count.
pub const MAX_THREADS: usize = 1024;
/// Nonces in the whole space: a search never hashes a nonce twice.
pub const NONCE_SPACE: u128 = 1 << 64;
/// The most leading zero nibbles a 32-byte hash can have.
pub const MAX_ZEROS: u32 = 64;
/// How long a worker with no chunk to take sleeps before looking at deadlines again.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// Everything that defines one search.
#[derive(Clone, Debug)]
pub struct SearchSpec {
    pub work: Work,
    /// First nonce; the search wraps from 2^64 - 1 to 0.
    pub start_nonce: u64,
    /// Stop after this many hashes (1..=2^64).
    pub max_hashes: Option<u128>,
    /// Stop once a hash has at least this many zeros (0..=64).
    pub target_zeros: Option<u32>,
    /// Stop this long after the start.
    pub duration: Option<Duration>,
    /// At most this many pool workers on this search at once (default: all).
    pub threads: Option<usize>,
    pub backend: Backend,
}

/// Why a spec was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecError {
    NoBound,
    MaxHashes,
    TargetZeros,
    Threads,
    Duration,
    Backend(&'static str),
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpecError::NoBound => {
                write!(
                    f,
                    "a search needs a bound: max_hashes, target_zeros or seconds"
                )
            }
            SpecError::MaxHashes => write!(f, "max_hashes must be between 1 and 2**64"),
            SpecError::TargetZeros => write!(f, "target_zeros must be between 0 and {MAX_ZEROS}"),
            SpecError::Threads => write!(f, "threads must be between 1 and {MAX_THREADS}"),
            SpecError::Duration => write!(f, "seconds must be a positive, finite number"),
            SpecError::Backend(name) => write!(f, "backend {name} is not supported by this CPU"),
        }
    }
}

impl std::error::Error for SpecError {}

impl SearchSpec {
    /// A spec with no bounds yet, on the fastest kernel.
    pub fn new(work: Work) -> Self {
        SearchSpec {
            work,
            start_nonce: 0,
            max_hashes: None,
            target_zeros: None,
            duration: None,
            threads: None,
            backend: Backend::best(),
        }
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        if self.max_hashes.is_none() && self.target_zeros.is_none() && self.duration.is_none() {
            return Err(SpecError::NoBound);
        }
        if self.max_hashes.is_some_and(|m| m == 0 || m > NONCE_SPACE) {
            return Err(SpecError::MaxHashes);
        }
        if self.target_zeros.is_some_and(|t| t > MAX_ZEROS) {
            return Err(SpecError::TargetZeros);
        }
        if self.threads.is_some_and(|t| t == 0 || t > MAX_THREADS) {
            return Err(SpecError::Threads);
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err(SpecError::Duration);
        }
        if !self.backend.is_available() {
            return Err(SpecError::Backend(self.backend.name()));
        }
        Ok(())
    }
}

/// Why a search stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A hash reached `target_zeros`.
    Target,
    /// `max_hashes` were tried.
    MaxHashes,
    /// The deadline passed.
    Deadline,
    /// Cancelled by the caller.
    Cancelled,
    /// All 2^64 nonces were tried.
    Exhausted,
}

impl StopReason {
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Target => "target",
            StopReason::MaxHashes => "max_hashes",
            StopReason::Deadline => "deadline",
            StopReason::Cancelled => "cancelled",
            StopReason::Exhausted => "exhausted",
        }
    }
}

/// A search's state at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    /// Best hash so far (there always is one: the first nonce is hashed at start).
    pub best: Hit,
    /// Hashes tried so far.
    pub hashes: u128,
    pub elapsed: Duration,
    /// `Some` once the search has finished.
    pub reason: Option<StopReason>,
}

#[derive(Debug)]
struct State {
    best: Hit,
    hashes: u128,
    /// Why no more chunks are handed out (the first cause wins).
    closed_by: Option<StopReason>,
    /// Set once no chunk is in flight any more: the result is final.
    finished_at: Option<Instant>,
}

#[derive(Debug)]
struct Job {
    spec: SearchSpec,
    /// The process that started it (handles do not carry over a fork).
    pid: u32,
    /// Offsets `0..total` are the search's range.
    total: u128,
    started: Instant,
    deadline: Option<Instant>,
    max_workers: usize,
    // Scheduling: changed only with the pool lock held, read anywhere.
    next_chunk: AtomicU64,
    active: AtomicUsize,
    closed: AtomicBool,
    /// Chunks in flight should stop now (cancelled, deadline, target), as
    /// opposed to merely no new chunks (range handed out).
    stop: AtomicBool,
    state: Mutex<State>,
    finished: Condvar,
}

impl Job {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking worker aborts the process (panic = "abort" in release);
        // in tests a poisoned lock still holds consistent plain data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn past_deadline(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// Stop handing out chunks (pool lock held, or job not in the pool); for
    /// a reason other than the range being handed out, also stop the chunks
    /// in flight. The first reason is kept, except that stopping early
    /// overrides "range handed out" while chunks still run.
    fn close(&self, reason: StopReason) {
        let range_done = matches!(reason, StopReason::MaxHashes | StopReason::Exhausted);
        if !range_done {
            self.stop.store(true, Ordering::Release);
        }
        self.closed.store(true, Ordering::Release);
        let mut st = self.lock();
        let replace = match st.closed_by {
            None => true,
            Some(StopReason::MaxHashes | StopReason::Exhausted) => {
                !range_done && st.finished_at.is_none()
            }
            Some(_) => false,
        };
        if replace {
            st.closed_by = Some(reason);
        }
    }

    /// The next chunk of the range, if any is left (pool lock held).
    fn claim(&self) -> Option<Range> {
        let k = self.next_chunk.load(Ordering::Relaxed);
        // Offset 0 was hashed when the search started.
        let first = 1 + u128::from(k) * u128::from(CHUNK);
        if first >= self.total {
            return None;
        }
        self.next_chunk.store(k + 1, Ordering::Relaxed);
        let count = (self.total - first).min(u128::from(CHUNK)) as u64;
        let offset = first as u64; // < total <= 2^64
        Some(Range {
            start: self.spec.start_nonce.wrapping_add(offset),
            count,
            offset,
        })
    }

    fn range_done_reason(&self) -> StopReason {
        if self
            .spec
            .max_hashes
            .is_some_and(|m| m <= NONCE_SPACE && m == self.total)
        {
            StopReason::MaxHashes
        } else {
            StopReason::Exhausted
        }
    }

    /// Mark the result final and wake whoever waits for it.
    fn finish(&self) {
        let mut st = self.lock();
        if st.finished_at.is_none() {
            st.finished_at = Some(Instant::now());
            self.finished.notify_all();
        }
    }

    /// Smallest zero count worth reporting from a chunk at `offset`, given
    /// the best so far: ties only matter from earlier offsets.
    fn min_zeros_for(&self, offset: u64) -> u32 {
        let st = self.lock();
        if offset < st.best.offset {
            st.best.zeros
        } else {
            st.best.zeros + 1
        }
    }

    /// Fold a chunk's outcome in; true once the target is reached.
    fn merge(&self, hashed: u64, hit: Option<Hit>) -> bool {
        let mut st = self.lock();
        st.hashes += u128::from(hashed);
        if let Some(h) = hit {
            if h.beats(&st.best) {
                st.best = h;
            }
        }
        self.spec.target_zeros.is_some_and(|t| st.best.zeros >= t)
    }

    fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        let end = st.finished_at.unwrap_or_else(Instant::now);
        let reason = st.finished_at.map(|_| {
            if self.spec.target_zeros.is_some_and(|t| st.best.zeros >= t) {
                StopReason::Target
            } else {
                st.closed_by.unwrap_or(StopReason::Cancelled)
            }
        });
        Snapshot {
            best: st.best,
            hashes: st.hashes,
            elapsed: end.saturating_duration_since(self.started),
            reason,
        }
    }
}

struct Inner {
    jobs: Vec<Arc<Job>>,
    /// Round-robin position: the job after the last one served.
    cursor: usize,
    workers: usize,
}

impl Inner {
    /// Close jobs past their deadline; finish and drop closed jobs with no chunk in flight.
    fn reap(&mut self, now: Instant) {
        self.jobs.retain(|job| {
            if !job.is_closed() && job.past_deadline(now) {
                job.close(StopReason::Deadline);
            }
            if job.is_closed() && job.active.load(Ordering::Acquire) == 0 {
                job.finish();
                false
            } else {
                true
            }
        });
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.jobs
            .iter()
            .filter(|j| !j.is_closed())
            .filter_map(|j| j.deadline)
            .min()
    }
}

struct Pool {
    /// The process whose threads these are.
    pid: u32,
    inner: Mutex<Inner>,
    wake: Condvar,
}

/// This process's pool, started on first use.
///
/// A forked child gets a fresh pool: the parent's worker threads did not come
/// along, and its lock may have been held by one of them at the fork.
fn pool() -> &'static Pool {
    static CURRENT: AtomicPtr<Pool> = AtomicPtr::new(std::ptr::null_mut());
    let pid = std::process::id();
    let seen = CURRENT.load(Ordering::Acquire);
    // SAFETY: non-null pointers in CURRENT come from Box::leak and are never freed.
    if let Some(p) = unsafe { seen.as_ref() } {
        if p.pid == pid {
            return p;
        }
    }
    let fresh: &'static mut Pool = Box::leak(Box::new(Pool {
        pid,
        inner: Mutex::new(Inner {
            jobs: Vec::new(),
            cursor: 0,
            workers: 0,
        }),
        wake: Condvar::new(),
    }));
    match CURRENT.compare_exchange(seen, fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => fresh,
        // Another thread installed one first; ours never ran a thread, so a
        // small leak is all it costs.
        // SAFETY: as above.
        Err(winner) => unsafe { &*winner },
    }
}

/// Worker threads the pool starts with: one per core this process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ensure_workers(&'static self, n: usize) {
        let mut inner = self.lock();
        while inner.workers < n {
            let id = inner.workers;
            std::thread::Builder::new()
                .name(format!("kale-miner-{id}"))
                .spawn(move || self.work())
                .expect("spawn a miner thread");
            inner.workers += 1;
        }
    }

    fn submit(&self, job: Arc<Job>) {
        self.lock().jobs.push(job);
        self.wake.notify_all();
    }

    fn cancel(&self, job: &Job) {
        let mut inner = self.lock();
        job.close(StopReason::Cancelled);
        inner.reap(Instant::now());
    }

    /// Block until some job has a chunk for this worker.
    fn next_task(&self) -> (Arc<Job>, Range) {
        let mut inner = self.lock();
        loop {
            let now = Instant::now();
            inner.reap(now);
            let n = inner.jobs.len();
            let mut picked = None;
            for k in 0..n {
                let idx = (inner.cursor + k) % n;
                let job = &inner.jobs[idx];
                if job.is_closed() || job.active.load(Ordering::Acquire) >= job.max_workers {
                    continue;
                }
                match job.claim() {
                    Some(range) => {
                        picked = Some((idx, range));
                        break;
                    }
                    None => job.close(job.range_done_reason()),
                }
            }
            if let Some((idx, range)) = picked {
                let job = Arc::clone(&inner.jobs[idx]);
                job.active.fetch_add(1, Ordering::AcqRel);
                inner.cursor = idx + 1;
                return (job, range);
            }
            inner.reap(now);
            inner = if inner.jobs.is_empty() {
                // Nothing to do until a search is submitted (which wakes us).
                self.wake.wait(inner).unwrap_or_else(|e| e.into_inner())
            } else {
                // Every job is at its thread limit: look again at the next
                // deadline, or when a chunk finishes (which wakes us).
                let wait = inner
                    .next_deadline()
                    .map_or(IDLE_POLL, |d| d.saturating_duration_since(now))
                    .clamp(Duration::from_millis(1), IDLE_POLL);
                self.wake
                    .wait_timeout(inner, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            };
        }
    }

    fn task_done(&self, job: &Job, target_reached: bool) {
        let mut inner = self.lock();
        job.active.fetch_sub(1, Ordering::AcqRel);
        if target_reached {
            job.close(StopReason::Target);
        }
        inner.reap(Instant::now());
        drop(inner);
        // A worker may be idle because this job was at its thread limit.
        self.wake.notify_all();
    }

    /// A worker thread's life: take a chunk, scan it, report, repeat.
    fn work(&self) {
        loop {
            let (job, range) = self.next_task();
            let min_zeros = job.min_zeros_for(range.offset);
            let out = scan(
                job.spec.backend,
                &job.spec.work,
                range,
                min_zeros,
                job.spec.target_zeros,
                || job.stop.load(Ordering::Acquire) || job.past_deadline(Instant::now()),
            );
            let reached = job.merge(out.hashed, out.best);
            self.task_done(&job, reached);
        }
    }
}

/// A running (or finished) search. Dropping the handle cancels the search.
#[derive(Debug)]
pub struct Search {
    job: Arc<Job>,
}

impl Search {
    /// Validate `spec` and start searching in the background.
    pub fn start(spec: SearchSpec) -> Result<Search, SpecError> {
        spec.validate()?;
        let started = Instant::now();
        let total = spec.max_hashes.unwrap_or(NONCE_SPACE).min(NONCE_SPACE);
        // The first nonce is hashed right here, so a search always has a best
        // hash, even one cancelled before any worker got to it.
        let hash = spec.work.hash(spec.start_nonce);
        let best = Hit {
            nonce: spec.start_nonce,
            offset: 0,
            zeros: leading_zeros(&hash),
            hash,
        };
        let job = Arc::new(Job {
            pid: std::process::id(),
            total,
            started,
            deadline: spec.duration.and_then(|d| started.checked_add(d)),
            max_workers: spec.threads.unwrap_or(usize::MAX),
            next_chunk: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            state: Mutex::new(State {
                best,
                hashes: 1,
                closed_by: None,
                finished_at: None,
            }),
            finished: Condvar::new(),
            spec,
        });
        if job.spec.target_zeros.is_some_and(|t| best.zeros >= t) {
            job.close(StopReason::Target);
            job.finish();
        } else if total == 1 {
            job.close(job.range_done_reason());
            job.finish();
        } else {
            let pool = pool();
            pool.ensure_workers(default_threads().max(job.spec.threads.unwrap_or(0)));
            pool.submit(Arc::clone(&job));
        }
        Ok(Search { job })
    }

    pub fn spec(&self) -> &SearchSpec {
        &self.job.spec
    }

    /// Whether this handle was inherited through `fork()`: its search ran in
    /// the parent, and nothing about it can be known or waited for here (its
    /// locks may have been held at the fork). Callers must not use it.
    pub fn is_inherited(&self) -> bool {
        self.job.pid != std::process::id()
    }

    /// Best hash and hash count so far; `reason` is set once finished.
    pub fn progress(&self) -> Snapshot {
        self.job.snapshot()
    }

    /// Stop the search; chunks in flight stop at their next batch.
    pub fn cancel(&self) {
        if !self.is_finished() {
            pool().cancel(&self.job);
        }
    }

    pub fn is_finished(&self) -> bool {
        self.job.lock().finished_at.is_some()
    }

    /// Wait until finished or `timeout` passes; true when finished.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut st = self.job.lock();
        while st.finished_at.is_none() {
            match deadline {
                None => {
                    st = self
                        .job
                        .finished
                        .wait(st)
                        .unwrap_or_else(|e| e.into_inner());
                }
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    st = self
                        .job
                        .finished
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        true
    }

    /// Wait for the final result.
    pub fn result(&self) -> Snapshot {
        self.wait(None);
        self.progress()
    }
}

impl Drop for Search {
    fn drop(&mut self) {
        if !self.is_inherited() {
            self.cancel();
        }
    }
}

/// Run one search to the end on the calling thread's behalf.
pub fn search(spec: SearchSpec) -> Result<Snapshot, SpecError> {
    Ok(Search::start(spec)?.result())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(seed: u8) -> Work {
        Work {
            index: 1000 + u32::from(seed),
            entropy: [seed; 32],
            farmer: std::array::from_fn(|i| (i as u8) ^ seed),
        }
    }

    fn reference_best(w: &Work, start: u64, count: u64) -> (u64, u32) {
        let mut best = (start, leading_zeros(&w.hash(start)));
        for k in 1..count {
            let n = start.wrapping_add(k);
            let z = leading_zeros(&w.hash(n));
            if z > best.1 {
                best = (n, z);
            }
        }
        best
    }

    #[test]
    fn bounded_search_equals_a_sequential_scan_for_any_thread_count() {
        let w = work(1);
        let start = u64::MAX - 150_000; // wraps past 2^64 - 1
        let count = 300_001u64;
        let expected = reference_best(&w, start, count);
        for threads in [1, 2, 3] {
            for backend in Backend::available() {
                let mut spec = SearchSpec::new(w);
                spec.start_nonce = start;
                spec.max_hashes = Some(u128::from(count));
                spec.threads = Some(threads);
                spec.backend = backend;
                let r = search(spec).unwrap();
                assert_eq!(
                    (r.best.nonce, r.best.zeros),
                    expected,
                    "{threads} {backend:?}"
                );
                assert_eq!(r.best.hash, w.hash(expected.0));
                assert_eq!(r.hashes, u128::from(count));
                assert_eq!(r.reason, Some(StopReason::MaxHashes));
            }
        }
    }

    #[test]
    fn target_stops_the_search() {
        let w = work(2);
        let mut spec = SearchSpec::new(w);
        spec.target_zeros = Some(4);
        let r = search(spec).unwrap();
        assert!(r.best.zeros >= 4);
        assert_eq!(r.reason, Some(StopReason::Target));
        assert_eq!(leading_zeros(&w.hash(r.best.nonce)), r.best.zeros);
    }

    #[test]
    fn first_nonce_meeting_target_or_single_hash_finishes_at_once() {
        let mut spec = SearchSpec::new(work(3));
        spec.target_zeros = Some(0);
        let r = search(spec.clone()).unwrap();
        assert_eq!((r.hashes, r.reason), (1, Some(StopReason::Target)));
        spec.target_zeros = None;
        spec.max_hashes = Some(1);
        let r = search(spec).unwrap();
        assert_eq!((r.hashes, r.reason), (1, Some(StopReason::MaxHashes)));
    }

    #[test]
    fn deadline_and_cancel_stop_promptly() {
        let mut spec = SearchSpec::new(work(4));
        spec.duration = Some(Duration::from_millis(100));
        let t0 = Instant::now();
        let r = search(spec.clone()).unwrap();
        assert_eq!(r.reason, Some(StopReason::Deadline));
        assert!(t0.elapsed() >= Duration::from_millis(100));
        assert!(r.hashes > 1);

        spec.duration = None;
        spec.target_zeros = Some(MAX_ZEROS);
        let s = Search::start(spec).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.cancel();
        assert!(s.wait(Some(Duration::from_secs(5))));
        assert_eq!(s.progress().reason, Some(StopReason::Cancelled));
    }

    #[test]
    fn dropping_the_handle_cancels() {
        let mut spec = SearchSpec::new(work(6));
        spec.target_zeros = Some(MAX_ZEROS);
        let s = Search::start(spec).unwrap();
        let job = Arc::clone(&s.job);
        drop(s);
        let waiter = Search { job };
        assert!(waiter.wait(Some(Duration::from_secs(5))));
        assert_eq!(waiter.progress().reason, Some(StopReason::Cancelled));
    }

    #[test]
    fn concurrent_searches_all_progress() {
        let searches: Vec<Search> = (0..5)
            .map(|i| {
                let mut spec = SearchSpec::new(work(10 + i));
                spec.duration = Some(Duration::from_millis(200 + 50 * u64::from(i)));
                Search::start(spec).unwrap()
            })
            .collect();
        for s in &searches {
            let r = s.result();
            assert_eq!(r.reason, Some(StopReason::Deadline));
            assert!(r.hashes > u128::from(CHUNK), "every job got chunks");
        }
    }

    #[test]
    fn bad_specs_are_refused() {
        let spec = SearchSpec::new(work(5));
        assert_eq!(spec.validate(), Err(SpecError::NoBound));
        let mut s = spec.clone();
        s.max_hashes = Some(0);
        assert_eq!(s.validate(), Err(SpecError::MaxHashes));
        s.max_hashes = Some(NONCE_SPACE + 1);
        assert_eq!(s.validate(), Err(SpecError::MaxHashes));
        s.max_hashes = Some(NONCE_SPACE);
        assert_eq!(s.validate(), Ok(()));
        s.threads = Some(0);
        assert_eq!(s.validate(), Err(SpecError::Threads));
        s.threads = Some(1);
        s.target_zeros = Some(65);
        assert_eq!(s.validate(), Err(SpecError::TargetZeros));
        s.target_zeros = None;
        s.duration = Some(Duration::ZERO);
        assert_eq!(s.validate(), Err(SpecError::Duration));
    }
}
