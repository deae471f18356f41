//! tenantgate: an edge gateway for multi-tenant SaaS platforms.
//!
//! Data flows through the modules in this order: [`config`] turns the file
//! into a validated model; [`routing`] compiles it into a domain table;
//! [`registry`] owns the live [`registry::Snapshot`]; [`proxy`] serves
//! requests from it; [`telemetry`] counts and logs what happened;
//! [`admin`] changes the registry through its one writer.

/// Implements `AsyncWrite` for a wrapper type by handing every call to
/// its `$field` (the stream wrappers given to pingora: the TLS stream, and a
/// stream with bytes to replay).
macro_rules! forward_async_write {
    ($ty:ty, $field:ident) => {
        impl tokio::io::AsyncWrite for $ty {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$field).poll_write(cx, buf)
            }
            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$field).poll_flush(cx)
            }
            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.$field).poll_shutdown(cx)
            }
            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.$field).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.$field.is_write_vectored()
            }
        }
    };
}

pub mod acme;
pub mod admin;
pub mod config;
pub mod console;
pub mod demo;
pub mod domains;
pub mod limits;
pub mod listener;
pub mod proxy;
pub mod registry;
pub mod routing;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upstream;

/// Keeps the process off transparent huge pages. mimalloc (the binary's
/// allocator, see `main.rs`) asks for them with `madvise`, and each touched
/// 2 MiB region then stays resident: about 10 MB more RSS at 10,000 tenants.
/// Call first thing in `main`.
pub fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Raises this process's soft limit on open files to its hard limit (as Go
/// and nginx's `worker_rlimit_nofile` do) and returns the limit in force
/// then; `None` if it cannot be read. Call at start, before any listener.
pub fn raise_nofile() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `lim`, a valid
    // rlimit on this stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    Some(lim.rlim_cur)
}

/// mimalloc's `mi_option_purge_delay` (the same index in its v2 and v3
/// headers; libmimalloc-sys exports no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Whether this process sets mimalloc's purge delay (decided at the first
/// [`set_purge_delay`]).
static PURGE_MANAGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The purge delay while the first config loads: purging freed pages at
/// once made the 100,000-tenant compile fault 227,000 pages in (0.45 s of
/// kernel time); 100 ms keeps the peak RSS where it was (205 against
/// 203 MB) at 91,000 faults (`tenantgate check`, release build).
pub const STARTUP_PURGE_DELAY_MS: i64 = 100;

/// Sets how long mimalloc keeps freed pages before it returns them to the
/// OS (in ms; its default is 1 s in the mimalloc v3 this build uses). Left
/// alone if `MIMALLOC_PURGE_DELAY` is set, or if the option at that index
/// does not hold one of mimalloc's defaults (10 ms in v2, 1 s in v3) at the
/// first call, which would mean another layout.
pub fn set_purge_delay(ms: i64) {
    use std::sync::atomic::Ordering;
    // SAFETY: reading and setting a mimalloc option has no preconditions.
    unsafe {
        if !PURGE_MANAGED.load(Ordering::Acquire) {
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
                || !matches!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 10 | 1000)
            {
                return;
            }
            PURGE_MANAGED.store(true, Ordering::Release);
        }
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms as std::ffi::c_long);
    }
}

/// The purge delay once the first config is live: mimalloc's own default.
/// Purging at once (0) put `madvise` and the page faults that follow it in
/// every HTTP/2 stream's path (benches/results/purge-2026-12-04.md).
pub const RUNNING_PURGE_DELAY_MS: i64 = 1000;

/// How often the trim thread asks mimalloc to return pages whose purge
/// delay has passed: without it, pages freed by a burst stay resident until
/// the next allocation after the delay, which an idle gateway never makes.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Sets the running purge delay ([`RUNNING_PURGE_DELAY_MS`]) and starts the
/// trim thread. Called once the first config is live
/// ([`STARTUP_PURGE_DELAY_MS`] until then).
pub fn purge_freed_pages_after_delay() {
    set_purge_delay(RUNNING_PURGE_DELAY_MS);
    let spawned = std::thread::Builder::new()
        .name("tenantgate trim".into())
        .spawn(|| loop {
            std::thread::sleep(TRIM_EVERY);
            // SAFETY: mi_collect(false) only purges mimalloc's own expired,
            // unused ranges (program-wide) and this thread's empty pages.
            unsafe { libmimalloc_sys::mi_collect(false) };
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no memory trim thread: freed pages return to the OS only under allocation");
    }
}

/// Returns the heap pages freed so far (config parsing leaves many) to the
/// operating system. Called once after start-up.
pub fn release_free_memory() {
    // SAFETY: mi_collect only frees mimalloc's own unused pages; malloc_trim
    // does the same for the rest of glibc's heap (C libraries).
    unsafe {
        libmimalloc_sys::mi_collect(true);
        libc::malloc_trim(0);
    }
}

/// Below this many items, [`map_parallel`] uses the calling thread only.
const PARALLEL_FROM: usize = 256;

/// `f` of every item, in order: on one thread per core (at least 2, since
/// the work it is used for, creating files and parsing them, also waits on
/// the disk; at most 8) when there are many items. For blocking threads
/// only (bulk writes and loads of 100,000 tenants).
pub fn map_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
    if items.len() < PARALLEL_FROM {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let f = &f;
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for (w, part) in workers.into_iter().zip(items.chunks(chunk)) {
            match w.join() {
                Ok(r) => out.extend(r),
                // A thread that panicked: that part again, here.
                Err(_) => out.extend(part.iter().map(f)),
            }
        }
        out
    })
}
