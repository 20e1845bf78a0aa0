//! The Python module `miner_ext`: argument checking and waiting, nothing more.
//!
//! Hashing happens on the pool's own threads, never holding the GIL; a caller
//! that waits releases the GIL and wakes every few milliseconds to let
//! Python run signal handlers, so Ctrl-C cancels a search promptly.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use pyo3::exceptions::{
    PyOverflowError, PyRuntimeError, PyTimeoutError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::backend::{first_lanes, Backend};
use crate::search::{default_threads, Search, SearchSpec, Snapshot, MAX_THREADS, NONCE_SPACE};
use crate::work::{leading_zeros as count_zeros, Work};

/// How often a waiting caller checks for Ctrl-C.
const SIGNAL_POLL: Duration = Duration::from_millis(10);
/// Most nonces `hash_prefixes` computes in one call.
const MAX_PREFIXES: u128 = 1 << 20;

/// An integer argument in `min..=max`; out of range is a ValueError naming it.
fn int_in(value: &Bound<'_, PyAny>, what: &str, min: u128, max: u128) -> PyResult<u128> {
    let out_of_range = || PyValueError::new_err(format!("{what} must be between {min} and {max}"));
    match value.extract::<u128>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        Ok(_) => Err(out_of_range()),
        Err(e) if e.is_instance_of::<PyOverflowError>(value.py()) => Err(out_of_range()),
        Err(_) => Err(PyTypeError::new_err(format!(
            "{what} must be an int, got {}",
            value.get_type().name()?
        ))),
    }
}

/// An integer argument in `0..=max`.
fn int_arg(value: &Bound<'_, PyAny>, what: &str, max: u128) -> PyResult<u128> {
    int_in(value, what, 0, max)
}

fn key_arg(value: &Bound<'_, PyAny>, what: &str) -> PyResult<[u8; 32]> {
    let bytes: Cow<'_, [u8]> = value
        .extract()
        .map_err(|_| PyTypeError::new_err(format!("{what} must be bytes (32 raw bytes)")))?;
    <[u8; 32]>::try_from(bytes.as_ref())
        .map_err(|_| PyValueError::new_err(format!("{what} must be 32 bytes, got {}", bytes.len())))
}

fn work_args(
    index: &Bound<'_, PyAny>,
    entropy: &Bound<'_, PyAny>,
    farmer: &Bound<'_, PyAny>,
) -> PyResult<Work> {
    Ok(Work {
        index: int_arg(index, "index", u128::from(u32::MAX))? as u32,
        entropy: key_arg(entropy, "entropy")?,
        farmer: key_arg(farmer, "farmer")?,
    })
}

fn backend_arg(name: Option<&str>) -> PyResult<Backend> {
    let Some(name) = name else {
        return Ok(Backend::best());
    };
    let backend = Backend::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = Backend::ALL.iter().map(|b| b.name()).collect();
        PyValueError::new_err(format!(
            "unknown backend {name:?}; known: {}",
            known.join(", ")
        ))
    })?;
    if !backend.is_available() {
        return Err(PyValueError::new_err(format!(
            "backend {name:?} is not supported by this CPU"
        )));
    }
    Ok(backend)
}

/// Bounds and options shared by `search`, `Search` and `search_many`.
#[allow(clippy::too_many_arguments)]
fn spec_args(
    work: Work,
    start_nonce: Option<&Bound<'_, PyAny>>,
    max_hashes: Option<&Bound<'_, PyAny>>,
    target_zeros: Option<&Bound<'_, PyAny>>,
    seconds: Option<f64>,
    threads: Option<&Bound<'_, PyAny>>,
    backend: Option<&str>,
) -> PyResult<SearchSpec> {
    let mut spec = SearchSpec::new(work);
    if let Some(n) = start_nonce {
        spec.start_nonce = int_arg(n, "start_nonce", u128::from(u64::MAX))? as u64;
    }
    if let Some(m) = max_hashes {
        spec.max_hashes = Some(int_in(m, "max_hashes", 1, NONCE_SPACE)?);
    }
    if let Some(t) = target_zeros {
        spec.target_zeros = Some(int_arg(t, "target_zeros", 64)? as u32);
    }
    if let Some(s) = seconds {
        let d = Duration::try_from_secs_f64(s)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                PyValueError::new_err(format!("seconds must be positive and finite, got {s}"))
            })?;
        spec.duration = Some(d);
    }
    if let Some(t) = threads {
        spec.threads = Some(int_in(t, "threads", 1, MAX_THREADS as u128)? as usize);
    }
    spec.backend = backend_arg(backend)?;
    spec.validate()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(spec)
}

/// Wait for every search, GIL released, checking for signals between short
/// waits. A signal (Ctrl-C) cancels them all and is raised once they stopped.
fn wait_all(py: Python<'_>, searches: &[&Search], timeout: Option<Duration>) -> PyResult<bool> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let slice_end = Instant::now() + SIGNAL_POLL;
        let slice_end = deadline.map_or(slice_end, |d| d.min(slice_end));
        let done = py.detach(|| {
            searches
                .iter()
                .all(|s| s.wait(Some(slice_end.saturating_duration_since(Instant::now()))))
        });
        if done {
            return Ok(true);
        }
        if let Err(err) = py.check_signals() {
            for s in searches {
                s.cancel();
            }
            py.detach(|| searches.iter().for_each(|s| _ = s.wait(None)));
            return Err(err);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
    }
}

/// The best hash of a search (final, or so far) and how many hashes were tried.
#[pyclass(frozen, module = "miner_ext", name = "SearchResult")]
struct PySearchResult {
    snap: Snapshot,
}

#[pymethods]
impl PySearchResult {
    /// The nonce of the best hash.
    #[getter]
    fn nonce(&self) -> u64 {
        self.snap.best.nonce
    }
    /// The best hash (32 bytes).
    #[getter]
    fn hash<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.snap.best.hash)
    }
    /// Its leading zero hex nibbles.
    #[getter]
    fn zeros(&self) -> u32 {
        self.snap.best.zeros
    }
    /// Hashes tried.
    #[getter]
    fn hashes(&self) -> u128 {
        self.snap.hashes
    }
    /// Seconds since the search started (until it finished, once it has).
    #[getter]
    fn elapsed(&self) -> f64 {
        self.snap.elapsed.as_secs_f64()
    }
    /// Why the search stopped ("target", "max_hashes", "deadline",
    /// "cancelled", "exhausted"), or None while it runs.
    #[getter]
    fn reason(&self) -> Option<&'static str> {
        self.snap.reason.map(|r| r.name())
    }
    /// Whether the search has finished.
    #[getter]
    fn done(&self) -> bool {
        self.snap.reason.is_some()
    }
    fn __repr__(&self) -> String {
        let hex: String = self
            .snap
            .best
            .hash
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!(
            "SearchResult(nonce={}, hash={hex}, zeros={}, hashes={}, reason={})",
            self.snap.best.nonce,
            self.snap.best.zeros,
            self.snap.hashes,
            self.snap.reason.map_or("None", |r| r.name()),
        )
    }
}

fn result(snap: Snapshot) -> PySearchResult {
    PySearchResult { snap }
}

/// A search running in the background on the shared pool of hashing threads.
#[pyclass(frozen, module = "miner_ext", name = "Search")]
struct PySearch {
    inner: Search,
}

impl PySearch {
    /// The handle, unless it came through a fork from the parent process.
    fn live(&self) -> PyResult<&Search> {
        if self.inner.is_inherited() {
            return Err(PyRuntimeError::new_err(
                "this search was started by the parent process before a fork",
            ));
        }
        Ok(&self.inner)
    }
}

#[pymethods]
impl PySearch {
    #[new]
    #[pyo3(signature = (index, entropy, farmer, *, start_nonce=None, max_hashes=None,
                        target_zeros=None, seconds=None, threads=None, backend=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        index: &Bound<'_, PyAny>,
        entropy: &Bound<'_, PyAny>,
        farmer: &Bound<'_, PyAny>,
        start_nonce: Option<&Bound<'_, PyAny>>,
        max_hashes: Option<&Bound<'_, PyAny>>,
        target_zeros: Option<&Bound<'_, PyAny>>,
        seconds: Option<f64>,
        threads: Option<&Bound<'_, PyAny>>,
        backend: Option<&str>,
    ) -> PyResult<Self> {
        let work = work_args(index, entropy, farmer)?;
        let spec = spec_args(
            work,
            start_nonce,
            max_hashes,
            target_zeros,
            seconds,
            threads,
            backend,
        )?;
        let inner = Search::start(spec).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PySearch { inner })
    }

    /// Best hash and hash count so far (`reason` is None while running).
    fn progress(&self) -> PyResult<PySearchResult> {
        Ok(result(self.live()?.progress()))
    }

    /// Stop the search; it finishes within milliseconds.
    fn cancel(&self) -> PyResult<()> {
        self.live()?.cancel();
        Ok(())
    }

    /// Whether the search has finished.
    fn done(&self) -> PyResult<bool> {
        Ok(self.live()?.is_finished())
    }

    /// Wait for the final result; `timeout` in seconds raises TimeoutError
    /// if still running then. Ctrl-C while waiting cancels the search.
    #[pyo3(signature = (timeout=None))]
    fn result(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<PySearchResult> {
        let timeout = timeout
            .map(|t| {
                Duration::try_from_secs_f64(t).map_err(|_| {
                    PyValueError::new_err(format!("timeout must be >= 0 and finite, got {t}"))
                })
            })
            .transpose()?;
        let search = self.live()?;
        if !wait_all(py, &[search], timeout)? {
            return Err(PyTimeoutError::new_err("the search is still running"));
        }
        Ok(result(search.progress()))
    }

    /// The kernel this search runs.
    #[getter]
    fn backend(&self) -> &'static str {
        self.inner.spec().backend.name()
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.live()?.cancel();
        Ok(false)
    }
}

/// Keccak-256 of the 76-byte KALE preimage (`farmer`: the 32 raw key bytes).
#[pyfunction]
fn kale_hash<'py>(
    py: Python<'py>,
    index: &Bound<'py, PyAny>,
    nonce: &Bound<'py, PyAny>,
    entropy: &Bound<'py, PyAny>,
    farmer: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let work = work_args(index, entropy, farmer)?;
    let nonce = int_arg(nonce, "nonce", u128::from(u64::MAX))? as u64;
    Ok(PyBytes::new(py, &work.hash(nonce)))
}

/// Leading zero hex nibbles of a hash.
#[pyfunction]
fn leading_zeros(hash: &Bound<'_, PyAny>) -> PyResult<u32> {
    let bytes: Cow<'_, [u8]> = hash
        .extract()
        .map_err(|_| PyTypeError::new_err("hash must be bytes"))?;
    Ok(count_zeros(&bytes))
}

/// Search nonces for the best hash; blocks (GIL released) until a bound is hit.
#[pyfunction]
#[pyo3(signature = (index, entropy, farmer, *, start_nonce=None, max_hashes=None,
                    target_zeros=None, seconds=None, threads=None, backend=None))]
#[allow(clippy::too_many_arguments)]
fn search(
    py: Python<'_>,
    index: &Bound<'_, PyAny>,
    entropy: &Bound<'_, PyAny>,
    farmer: &Bound<'_, PyAny>,
    start_nonce: Option<&Bound<'_, PyAny>>,
    max_hashes: Option<&Bound<'_, PyAny>>,
    target_zeros: Option<&Bound<'_, PyAny>>,
    seconds: Option<f64>,
    threads: Option<&Bound<'_, PyAny>>,
    backend: Option<&str>,
) -> PyResult<PySearchResult> {
    let s = PySearch::new(
        index,
        entropy,
        farmer,
        start_nonce,
        max_hashes,
        target_zeros,
        seconds,
        threads,
        backend,
    )?;
    s.result(py, None)
}

/// Search for several assignments at once, sharing the cores evenly; each
/// assignment is `(index, entropy, farmer)`, bounds apply to each. `seconds`
/// may also be one deadline per assignment.
#[pyfunction]
#[pyo3(signature = (assignments, *, start_nonce=None, max_hashes=None, target_zeros=None,
                    seconds=None, threads=None, backend=None))]
#[allow(clippy::too_many_arguments)]
fn search_many(
    py: Python<'_>,
    assignments: &Bound<'_, PyAny>,
    start_nonce: Option<&Bound<'_, PyAny>>,
    max_hashes: Option<&Bound<'_, PyAny>>,
    target_zeros: Option<&Bound<'_, PyAny>>,
    seconds: Option<&Bound<'_, PyAny>>,
    threads: Option<&Bound<'_, PyAny>>,
    backend: Option<&str>,
) -> PyResult<Vec<PySearchResult>> {
    let items: Vec<Bound<'_, PyAny>> = assignments.try_iter()?.collect::<PyResult<_>>()?;
    let per_job_seconds: Option<Vec<f64>> = match seconds {
        None => None,
        Some(s) => match s.extract::<f64>() {
            Ok(one) => Some(vec![one; items.len()]),
            Err(_) => {
                let each: Vec<f64> = s.extract().map_err(|_| {
                    PyTypeError::new_err("seconds must be a number or a sequence of numbers")
                })?;
                if each.len() != items.len() {
                    return Err(PyValueError::new_err(format!(
                        "seconds has {} entries for {} assignments",
                        each.len(),
                        items.len()
                    )));
                }
                Some(each)
            }
        },
    };
    // Check everything before starting anything.
    let mut specs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let (index, entropy, farmer): (Bound<'_, PyAny>, Bound<'_, PyAny>, Bound<'_, PyAny>) =
            item.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "assignment {i} must be a tuple (index, entropy, farmer)"
                ))
            })?;
        let work = work_args(&index, &entropy, &farmer)
            .map_err(|e| annotate(py, e, &format!("assignment {i}")))?;
        let secs = per_job_seconds.as_ref().map(|v| v[i]);
        let spec = spec_args(
            work,
            start_nonce,
            max_hashes,
            target_zeros,
            secs,
            threads,
            backend,
        )
        .map_err(|e| annotate(py, e, &format!("assignment {i}")))?;
        specs.push(spec);
    }
    let searches: Vec<Search> = specs
        .into_iter()
        .map(|spec| Search::start(spec).map_err(|e| PyValueError::new_err(e.to_string())))
        .collect::<PyResult<_>>()?;
    let refs: Vec<&Search> = searches.iter().collect();
    wait_all(py, &refs, None)?;
    Ok(searches.iter().map(|s| result(s.progress())).collect())
}

/// Prefix an error message with which item it is about, keeping its type.
fn annotate(py: Python<'_>, err: PyErr, context: &str) -> PyErr {
    let msg = format!("{context}: {}", err.value(py));
    if err.is_instance_of::<PyTypeError>(py) {
        PyTypeError::new_err(msg)
    } else {
        PyValueError::new_err(msg)
    }
}

/// Wait for several `Search` handles; Ctrl-C cancels them all.
#[pyfunction]
#[pyo3(name = "wait_all", signature = (searches, timeout=None))]
fn wait_all_searches(
    py: Python<'_>,
    searches: Vec<Bound<'_, PySearch>>,
    timeout: Option<f64>,
) -> PyResult<Vec<PySearchResult>> {
    let timeout = timeout
        .map(|t| {
            Duration::try_from_secs_f64(t)
                .map_err(|_| PyValueError::new_err("timeout must be >= 0 and finite"))
        })
        .transpose()?;
    let refs: Vec<&Search> = searches
        .iter()
        .map(|s| s.get().live())
        .collect::<PyResult<_>>()?;
    if !wait_all(py, &refs, timeout)? {
        return Err(PyTimeoutError::new_err("a search is still running"));
    }
    Ok(refs.iter().map(|s| result(s.progress())).collect())
}

/// The first 8 bytes of the hash of `count` nonces from `start_nonce`
/// (wrapping at 2^64), as computed by one kernel: for checking the kernels
/// against each other.
#[pyfunction]
#[pyo3(signature = (index, entropy, farmer, start_nonce, count, backend=None))]
fn hash_prefixes<'py>(
    py: Python<'py>,
    index: &Bound<'py, PyAny>,
    entropy: &Bound<'py, PyAny>,
    farmer: &Bound<'py, PyAny>,
    start_nonce: &Bound<'py, PyAny>,
    count: &Bound<'py, PyAny>,
    backend: Option<&str>,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let work = work_args(index, entropy, farmer)?;
    let start = int_arg(start_nonce, "start_nonce", u128::from(u64::MAX))? as u64;
    let count = int_arg(count, "count", MAX_PREFIXES)? as usize;
    let backend = backend_arg(backend)?;
    let lanes = py.detach(|| first_lanes(backend, &work, start, count));
    Ok(lanes
        .into_iter()
        .map(|l| PyBytes::new(py, &l.to_le_bytes()))
        .collect())
}

/// Kernels this CPU can run, slowest first; the last is the default.
#[pyfunction]
fn backends() -> Vec<&'static str> {
    Backend::available().into_iter().map(|b| b.name()).collect()
}

/// Hashing threads the shared pool starts with (one per usable core).
#[pyfunction]
#[pyo3(name = "default_threads")]
fn py_default_threads() -> usize {
    default_threads()
}

/// The extension's version.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn miner_ext(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<PySearchResult>()?;
    m.add_class::<PySearch>()?;
    m.add_function(wrap_pyfunction!(kale_hash, m)?)?;
    m.add_function(wrap_pyfunction!(leading_zeros, m)?)?;
    m.add_function(wrap_pyfunction!(search, m)?)?;
    m.add_function(wrap_pyfunction!(search_many, m)?)?;
    m.add_function(wrap_pyfunction!(wait_all_searches, m)?)?;
    m.add_function(wrap_pyfunction!(hash_prefixes, m)?)?;
    m.add_function(wrap_pyfunction!(backends, m)?)?;
    m.add_function(wrap_pyfunction!(py_default_threads, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    Ok(())
}
