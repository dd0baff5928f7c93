//! Where receipt images live: one small interface over two real backends,
//! a local directory (the default) and S3-compatible object storage, both
//! through `object_store`. Images are served back at `/uploads/{key}` by the
//! server whichever backend holds them, only to their owner and merchants.

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
    /// The local directory, when images live on this machine: a received
    /// file is moved into place instead of copied.
    local_root: Option<std::path::PathBuf>,
    /// Where an upload is written while it is received and cleaned.
    scratch: std::path::PathBuf,
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

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        StorageError(e.to_string())
    }
}

/// A stored object being read back, in chunks.
pub struct Object {
    pub size: u64,
    pub chunks: futures::stream::BoxStream<'static, Result<Bytes, StorageError>>,
}

impl Storage {
    pub fn from_config(config: &Config) -> Result<Storage, StorageError> {
        match &config.storage {
            StorageBackend::Local { dir } => {
                let scratch = dir.join(".incoming");
                std::fs::create_dir_all(&scratch).map_err(|e| {
                    StorageError(format!("cannot create {}: {e}", scratch.display()))
                })?;
                let root = std::fs::canonicalize(dir)?;
                let store = LocalFileSystem::new_with_prefix(&root)?;
                Ok(Storage {
                    store: Arc::new(store),
                    local_root: Some(root),
                    scratch,
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
                let scratch = std::env::temp_dir().join("restaurant-points-incoming");
                std::fs::create_dir_all(&scratch)?;
                Ok(Storage {
                    store: Arc::new(builder.build()?),
                    local_root: None,
                    scratch,
                    backend: "s3",
                })
            }
        }
    }

    /// A new file to receive an upload into, removed when dropped unless
    /// it was stored.
    pub async fn scratch_file(&self) -> Result<(tokio::fs::File, ScratchPath), StorageError> {
        let path = self.scratch.join(ulid::Ulid::new().to_string());
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok((file, ScratchPath(Some(path))))
    }

    /// Stores a received file under `key`: moved into place on a local
    /// disk, streamed to object storage otherwise.
    pub async fn put_file(&self, key: &str, mut scratch: ScratchPath) -> Result<(), StorageError> {
        let Some(path) = scratch.0.take() else {
            return Err(StorageError("the scratch file was already stored".into()));
        };
        let result = match &self.local_root {
            Some(root) => {
                let target = root.join(key);
                if let Some(dir) = target.parent() {
                    tokio::fs::create_dir_all(dir).await?;
                }
                tokio::fs::rename(&path, &target)
                    .await
                    .map_err(StorageError::from)
            }
            None => {
                // Object storage takes a multipart upload in parts of at
                // least 5 MiB, so an image (at most UPLOAD_MAX_BYTES) is
                // one part: read it whole from the file and put it.
                let bytes = tokio::fs::read(&path).await?;
                let r = self
                    .store
                    .put(&Path::from(key), PutPayload::from(Bytes::from(bytes)))
                    .await
                    .map(|_| ())
                    .map_err(StorageError::from);
                let _ = tokio::fs::remove_file(&path).await;
                r
            }
        };
        if result.is_err() {
            let _ = tokio::fs::remove_file(&path).await;
        }
        result
    }

    /// Reads a stored object as a stream (never whole into memory).
    pub async fn get(&self, key: &str) -> Result<Option<Object>, StorageError> {
        use futures::TryStreamExt;
        match self.store.get(&Path::from(key)).await {
            Ok(r) => Ok(Some(Object {
                size: r.meta.size,
                chunks: Box::pin(r.into_stream().map_err(StorageError::from)),
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
}

/// A received file not yet stored; deleted on drop.
pub struct ScratchPath(Option<std::path::PathBuf>);

impl Drop for ScratchPath {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Signed, short-lived receipt URLs: `/uploads/{key}?exp=<unix>&sig=<hex>`,
/// so an `<image>` tag can show a receipt to its owner or a merchant
/// without a token in the URL, and a leaked link stops working. The expiry
/// is rounded up to the next five minutes so a list fetched twice gives the
/// same URLs (and the image is cached once).
pub struct ImageUrls {
    base: String,
    key: [u8; 32],
    ttl: std::time::Duration,
}

const URL_BUCKET_SECS: i64 = 300;

impl ImageUrls {
    pub fn new(public_base_url: &str, secret: &str, ttl: std::time::Duration) -> ImageUrls {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(b"receipt-url-key");
        ImageUrls {
            base: public_base_url.trim_end_matches('/').to_string(),
            key: mac.finalize().into_bytes().into(),
            ttl,
        }
    }

    fn sign(&self, key: &str, exp: i64) -> String {
        use hmac::Mac;
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(exp.to_string().as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// The URL of a stored image, valid for the configured lifetime.
    pub fn url(&self, key: &str, now: chrono::DateTime<chrono::Utc>) -> String {
        let exp = now.timestamp() + self.ttl.as_secs() as i64;
        let exp = (exp + URL_BUCKET_SECS - 1) / URL_BUCKET_SECS * URL_BUCKET_SECS;
        format!(
            "{}{URL_PREFIX}{key}?exp={exp}&sig={}",
            self.base,
            self.sign(key, exp)
        )
    }

    /// Whether `sig` signs `key` until `exp`, and `exp` is still ahead.
    pub fn verify(
        &self,
        key: &str,
        exp: i64,
        sig: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> bool {
        use subtle::ConstantTimeEq;
        exp > now.timestamp()
            && exp <= now.timestamp() + self.ttl.as_secs() as i64 + URL_BUCKET_SECS
            && bool::from(self.sign(key, exp).as_bytes().ct_eq(sig.as_bytes()))
    }
}
