//! Writes quota counts to disk at least every second and at shutdown, so a
//! crash loses at most about a second of counts; every ten seconds, trims
//! the per-client limiters so their memory stays bounded.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use super::Book;

/// A pingora background service around [`Book::flush`].
pub struct QuotaFlusher {
    pub book: Arc<Book>,
}

impl QuotaFlusher {
    async fn flush(&self) {
        let book = self.book.clone();
        match tokio::task::spawn_blocking(move || book.flush()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "quota counts not saved; retrying in a second"),
            Err(e) => tracing::error!(error = %e, "quota flush task failed"),
        }
    }
}

/// Flushes once more when dropped. pingora shuts a service's runtime down
/// right after broadcasting shutdown, dropping its tasks, possibly before
/// the shutdown branch below runs: the drop still writes the counts.
struct FinalFlush(Arc<Book>);

impl Drop for FinalFlush {
    fn drop(&mut self) {
        if let Err(e) = self.0.flush() {
            tracing::error!(error = %e, "quota counts not saved at shutdown");
        }
    }
}

#[async_trait]
impl BackgroundService for QuotaFlusher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _final = FinalFlush(self.book.clone());
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                // `_final` flushes on return.
                _ = shutdown.changed() => return,
                _ = tick.tick() => {
                    self.flush().await;
                    ticks += 1;
                    if ticks.is_multiple_of(10) {
                        let book = self.book.clone();
                        let _ = tokio::task::spawn_blocking(move || book.trim_clients()).await;
                    }
                }
            }
        }
    }
}
