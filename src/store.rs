//! Bounded calls to the fleet store (Redis), shared by the fleet stores
//! that keep a lazily opened, self-reconnecting connection: ACME's and the
//! domain lifecycle's. Each maps [`CallError`] into its own error type and
//! keeps its own reachability bookkeeping.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;

/// Why one bounded call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// No answer within the bound (connecting included).
    #[error("no answer in {} s", .0.as_secs())]
    Timeout(Duration),
}

/// A connection to the fleet store, opened on first use, and every call
/// on it bounded by `timeout`.
pub struct BoundedRedis {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    timeout: Duration,
}

impl BoundedRedis {
    pub fn new(client: redis::Client, timeout: Duration) -> BoundedRedis {
        BoundedRedis {
            client,
            conn: Mutex::new(None),
            timeout,
        }
    }

    /// The client, for what needs a connection of its own (pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The connection, opened if needed (bounded).
    async fn conn(&self) -> Result<ConnectionManager, CallError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let c = tokio::time::timeout(
            self.timeout,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| CallError::Timeout(self.timeout))??;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs `f` on the connection, bounded by the timeout.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, CallError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let c = self.conn().await?;
        match tokio::time::timeout(self.timeout, f(c)).await {
            Ok(r) => r.map_err(CallError::from),
            Err(_) => Err(CallError::Timeout(self.timeout)),
        }
    }

    /// Drops the connection: the next call opens a fresh one.
    pub async fn reset(&self) {
        *self.conn.lock().await = None;
    }
}
