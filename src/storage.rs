//! Where receipt images live: one small interface over two real backends,
//! a local directory (the default) and S3-compatible object storage, both
//! through `object_store`. Images are served back at `/uploads/{key}` by the
//! server whichever backend holds them.

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::sync::Arc;

use crate::config::{Config, StorageBackend};

/// The URL path images are served under.
pub const URL_PREFIX: &str = "/uploads/";

#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// Prepended to `/uploads/{key}` in `image_url` (empty: a relative URL).
    public_base_url: String,
    pub backend: &'static str,
}

#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct StorageError(String);

impl From<object_store::Error> for StorageError {
    fn from(e: object_store::Error) -> Self {
        StorageError(e.to_string())
    }
}

/// A stored object read back.
pub struct Object {
    pub bytes: Bytes,
}

impl Storage {
    pub fn from_config(config: &Config) -> Result<Storage, StorageError> {
        let public_base_url = config.public_base_url.trim_end_matches('/').to_string();
        match &config.storage {
            StorageBackend::Local { dir } => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StorageError(format!("cannot create {}: {e}", dir.display())))?;
                let store = LocalFileSystem::new_with_prefix(dir)?;
                Ok(Storage {
                    store: Arc::new(store),
                    public_base_url,
                    backend: "local",
                })
            }
            StorageBackend::S3 {
                endpoint,
                bucket,
                region,
                access_key_id,
                secret_access_key,
            } => {
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_access_key_id(access_key_id)
                    .with_secret_access_key(secret_access_key.expose());
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                Ok(Storage {
                    store: Arc::new(builder.build()?),
                    public_base_url,
                    backend: "s3",
                })
            }
        }
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.store
            .put(&Path::from(key), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Option<Object>, StorageError> {
        match self.store.get(&Path::from(key)).await {
            Ok(r) => Ok(Some(Object {
                bytes: r.bytes().await?,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Keys under `prefix` last modified before `before`.
    pub async fn list_older_than(
        &self,
        prefix: &str,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>, StorageError> {
        use futures::TryStreamExt;
        let metas: Vec<_> = self
            .store
            .list(Some(&Path::from(prefix)))
            .try_collect()
            .await?;
        Ok(metas
            .into_iter()
            .filter(|m| m.last_modified < before)
            .map(|m| m.location.to_string())
            .collect())
    }

    pub fn url(&self, key: &str) -> String {
        format!("{}{URL_PREFIX}{key}", self.public_base_url)
    }
}
