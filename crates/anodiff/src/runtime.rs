//! Process-wide settings for heavy numeric work, applied once by the binary at start-up.

/// Keeps freed tensor memory in the heap for reuse instead of handing it back to the kernel.
///
/// Why: glibc serves blocks above a *dynamic* threshold with fresh `mmap`s and trims the heap top
/// eagerly, so a training step that frees and re-allocates the same 10–30 MB activations pays a
/// page fault plus a page clear for every 4 KiB of every tensor, every step. Measured on
/// `anodiff bench ops`: GroupNorm+SiLU forward+backward 87 → 30 ms, conv forward+backward
/// 344 → 202 ms. Fixing the mmap threshold at its maximum (32 MiB) and never trimming removes
/// that; peak RSS is unchanged because it is set by the step's peak working set.
///
/// One arena for all threads: the work runs on pool workers ([`run_on_workers`]), and with an
/// arena per thread a tensor freed by one worker is not reused by another, so `bench small`'s
/// peak RSS grew from 0.86 to 1.49 GiB; with one arena it stays at 0.86 GiB.
///
/// A no-op outside glibc. Library users embedding anodiff decide for their own process.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Lets a closed standard output end the process quietly, as it ends other command-line tools:
/// Rust ignores SIGPIPE, so `anodiff … | head -1` made the next `println!` panic with "failed
/// printing to stdout: Broken pipe" and a backtrace. Restores the default signal action (Unix
/// only; a no-op elsewhere). For binaries, not for library users.
pub fn quiet_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: resets one signal's disposition to the default; called first thing in main.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// candle's own worker pool for large element-wise ops (besides rayon's) reads its spin limit
/// from this variable when it starts.
const CANDLE_SPIN_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Spins of an idle candle pool worker before it parks (candle's default: 25,000, about a
/// millisecond). Between two element-wise ops the worker spun on a core that rayon's workers
/// (convolutions, GEMMs, our kernels) needed: with 2 cores, three busy threads. Measured at 2
/// threads (`bench small`, 5 alternating rounds, BENCHMARKS.md): locnet64 152 → 125 ms, small
/// UNet 531 → 447 ms with 1,000.
const CANDLE_SPIN_LIMIT: u32 = 1000;

/// Fixes the worker-thread count for the whole process through `RAYON_NUM_THREADS`: `threads`
/// when given, else the variable as the user set it, else the available parallelism (rayon's own
/// default). Call before the first parallel op.
///
/// Why: besides sizing rayon's pool, candle looks the count up on every matmul, and without the
/// variable it re-reads and parses `/proc/cpuinfo` each time: about 6,500 reads per SD-1.5 LoRA
/// training step (`strace -e openat`), ~3 % of the step's CPU time in `perf`. Also shortens the
/// spinning of candle's pool workers to 1,000 spins (`CANDLE_SPIN_LIMIT`) unless the user set
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT`.
pub fn set_thread_count(threads: Option<usize>) {
    if std::env::var_os(CANDLE_SPIN_VAR).is_none() {
        std::env::set_var(CANDLE_SPIN_VAR, CANDLE_SPIN_LIMIT.to_string());
    }
    let n = match threads {
        Some(n) => n.max(1),
        None => match std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            Some(n) if n > 0 => return,
            _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
        },
    };
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
}

/// Stack of each worker thread: the whole command runs on a worker ([`run_on_workers`]), and
/// candle's backward walks the graph recursively, so workers get the main thread's room and more.
pub(crate) const WORKER_STACK: usize = 64 << 20;

/// Runs `f` on a worker thread of the global pool (built here with `WORKER_STACK`-sized stacks
/// and the count of [`set_thread_count`]) and returns its result.
///
/// Why: a parallel op called from a thread outside the pool is injected into the pool and the
/// caller blocks on a latch until a worker has run it — a wake-up and a context switch per op,
/// even with one worker. Small networks issue thousands of small parallel ops per training step;
/// from a worker thread they run inline (one worker) or split by work stealing.
pub fn run_on_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // Fails only when the global pool already exists (then it is used as it is).
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(WORKER_STACK)
        .build_global();
    rayon::scope(|_| f())
}

/// Single-thread worker pools, one per core, for running independent pieces of work side by
/// side — the micro-batches of one training update, generation blocks, detection images — each
/// with all of its ops inline on its own thread (candle's pools bypassed, see
/// [`candle_core::utils::serial`]). With one lane, or one item, the work runs on the calling
/// thread as usual (its ops split across the cores), and no pool is made.
///
/// Why: the small networks trained on a CPU issue thousands of small ops per step; split across
/// cores op by op they leave cores waiting at every op's barrier, while two independent halves of
/// a batch keep both cores busy with no barrier at all.
pub struct Lanes {
    /// Empty for a single lane (the caller).
    pools: Vec<rayon::ThreadPool>,
}

impl Lanes {
    /// `n` lanes (at least 1); from 2, each a pool of one thread with the workers' stack size.
    pub fn new(n: usize) -> std::io::Result<Self> {
        let pools = if n < 2 {
            Vec::new()
        } else {
            (0..n)
                .map(|_| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .stack_size(WORKER_STACK)
                        .thread_name(|_| "anodiff-lane".into())
                        .build()
                        .map_err(std::io::Error::other)
                })
                .collect::<std::io::Result<_>>()?
        };
        Ok(Self { pools })
    }

    /// Number of lanes.
    pub fn len(&self) -> usize {
        self.pools.len().max(1)
    }

    /// Always false (there is at least one lane).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// `f(0), …, f(n - 1)` with item `i` on lane `i % len`, items of one lane in order; the
    /// results in item order. A panicking item is re-raised on the caller's thread.
    pub fn map<T: Send>(&self, n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
        let lanes = self.pools.len().min(n);
        if lanes < 2 {
            return (0..n).map(f).collect();
        }
        let run_lane = |j: usize| {
            self.pools[j].install(|| {
                candle_core::utils::serial(|| (j..n).step_by(lanes).map(&f).collect::<Vec<T>>())
            })
        };
        let per_lane: Vec<Vec<T>> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..lanes).map(|j| s.spawn(move || run_lane(j))).collect();
            let mut all = vec![run_lane(0)];
            for h in handles {
                all.push(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            }
            all
        });
        // Interleave back: item i is the (i / lanes)-th result of lane i % lanes.
        let mut iters: Vec<_> = per_lane.into_iter().map(Vec::into_iter).collect();
        (0..n)
            .map(|i| iters[i % lanes].next().expect("one result per item"))
            .collect()
    }
}
