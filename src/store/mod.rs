//! Storage of the repair journal and incidents (being written).

use futures_util::future::BoxFuture;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("invalid store URL: {0}")]
    Url(String),
}

pub trait Store: Send + Sync {
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

pub mod sqlite;

use std::sync::Arc;

use crate::config::StoreOptions;

/// Open the store named by a `--store` URL.
pub async fn open(url: &str, opts: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url, opts).await?))
    } else {
        Err(StoreError::Url(format!(
            "{}: only sqlite:// stores are supported in this build",
            crate::config::mask_url_password(url)
        )))
    }
}
