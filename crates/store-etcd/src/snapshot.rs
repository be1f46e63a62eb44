//! Snapshots of an etcd member's database through etcd's Maintenance/Snapshot RPC (what
//! `etcdctl snapshot save` does): the member streams its backend file in chunks, the
//! last chunk being the SHA-256 of the rest (etcd's integrity trailer, checked by
//! `etcdctl snapshot restore`). The file is written as `<path>.partial`, synced, then
//! renamed: a file at `path` is always a whole snapshot.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use http::uri::PathAndQuery;
use tokio::io::AsyncWriteExt;

use crate::proto::{self, path};
use crate::{EtcdError, EtcdStore, MAX_MESSAGE};

/// What [`EtcdStore::snapshot_to_file`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotStats {
    /// The snapshot file.
    pub path: PathBuf,
    /// Its size in bytes (the database and etcd's 32-byte SHA-256 trailer).
    pub size: u64,
    /// The member that sent it.
    pub member: String,
    /// The store's revision just before the snapshot started: the snapshot holds at
    /// least this revision (etcd 3.4 does not tell the snapshot's own revision).
    pub revision_at_least: i64,
}

fn partial_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> EtcdError + '_ {
    move |source| EtcdError::WriteFile {
        path: path.to_path_buf(),
        source,
    }
}

impl EtcdStore {
    /// Streams a snapshot of one member's database into the file `path` (see the module
    /// docs). Members are tried in turn, from the preferred one, until one starts sending;
    /// a stream cut short fails (nothing is left at `path`).
    pub async fn snapshot_to_file(&self, path: &Path) -> Result<SnapshotStats, EtcdError> {
        let members = &self.shared.members;
        let first = self.shared.preferred.load(Ordering::Relaxed);
        let mut last_error = String::from("no member");
        for offset in 0..members.len() {
            let member = &members[(first + offset) % members.len()];
            let revision_at_least = match crate::unary::<_, proto::RangeResponse>(
                &member.channel,
                path::RANGE,
                proto::RangeRequest {
                    key: vec![0],
                    count_only: true,
                    ..Default::default()
                },
            )
            .await
            {
                Ok(resp) => resp.header.map_or(0, |h| h.revision),
                Err(status) => {
                    tracing::debug!(member = %member.url, error = %status.message(), "etcd member unavailable for a snapshot");
                    last_error = format!("{}: {}", member.url, status.message());
                    continue;
                }
            };
            let stream = match snapshot_call(&member.channel).await {
                Ok(stream) => stream,
                Err(status) => {
                    last_error = format!("{}: {}", member.url, status.message());
                    continue;
                }
            };
            let size = write_stream(stream, path).await?;
            tracing::info!(member = %member.url, path = %path.display(), size, "etcd snapshot saved");
            return Ok(SnapshotStats {
                path: path.to_path_buf(),
                size,
                member: member.url.clone(),
                revision_at_least,
            });
        }
        Err(EtcdError::Snapshot(last_error))
    }
}

async fn snapshot_call(
    channel: &tonic::transport::Channel,
) -> Result<tonic::Streaming<proto::SnapshotResponse>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::from_error(Box::new(e)))?;
    let mut request = tonic::Request::new(proto::SnapshotRequest {});
    crate::require_leader(&mut request);
    let codec =
        tonic_prost::ProstCodec::<proto::SnapshotRequest, proto::SnapshotResponse>::default();
    grpc.server_streaming(request, PathAndQuery::from_static(path::SNAPSHOT), codec)
        .await
        .map(tonic::Response::into_inner)
}

/// Writes the chunks to `<path>.partial`, then renames it to `path` once etcd said the
/// last chunk was sent (`remaining_bytes == 0`) and the stream ended cleanly.
async fn write_stream(
    mut stream: tonic::Streaming<proto::SnapshotResponse>,
    path: &Path,
) -> Result<u64, EtcdError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(write_err(dir))?;
    }
    let partial = partial_path(path);
    let result = async {
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(write_err(&partial))?;
        let mut size = 0u64;
        let mut finished = false;
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    file.write_all(&chunk.blob)
                        .await
                        .map_err(write_err(&partial))?;
                    size += chunk.blob.len() as u64;
                    finished = chunk.remaining_bytes == 0;
                }
                Ok(None) => break,
                Err(status) => {
                    return Err(EtcdError::Snapshot(format!(
                        "the snapshot stream failed after {size} bytes: {}",
                        status.message()
                    )))
                }
            }
        }
        if !finished || size == 0 {
            return Err(EtcdError::Snapshot(format!(
                "the snapshot stream ended early, after {size} bytes"
            )));
        }
        file.sync_all().await.map_err(write_err(&partial))?;
        drop(file);
        tokio::fs::rename(&partial, path)
            .await
            .map_err(write_err(path))?;
        Ok(size)
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::start_cluster;
    use crate::TlsFiles;
    use rk3s_store::Store;

    #[test]
    fn partial_file_is_beside_the_snapshot() {
        assert_eq!(
            partial_path(Path::new("/s/on-demand-n1-10")),
            PathBuf::from("/s/on-demand-n1-10.partial")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_streams_the_database_with_its_hash_trailer() {
        let mut members = start_cluster(1, None);
        let store = members[0].store(TlsFiles::default()).await;
        for i in 0..300 {
            store
                .create(
                    &format!("/registry/configmaps/default/c{i}"),
                    vec![b'x'; 100],
                )
                .await
                .expect("create");
        }
        let revision = store.current_revision().await.expect("revision");
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("snaps").join("on-demand-n1-1");
        let stats = store.snapshot_to_file(&out).await.expect("snapshot");
        assert_eq!(stats.path, out);
        assert_eq!(stats.revision_at_least, revision);
        let bytes = std::fs::read(&out).expect("read");
        assert_eq!(bytes.len() as u64, stats.size);
        assert!(!partial_path(&out).exists());
        // A bbolt file (magic 0xED0CDAED in the first meta page, little endian, after
        // the 16-byte page header) followed by the SHA-256 of the database.
        assert!(bytes.len() > 4096 + 32, "{} bytes", bytes.len());
        assert_eq!(&bytes[16..20], &0xED0C_DAEDu32.to_le_bytes());
        let (db, trailer) = bytes.split_at(bytes.len() - 32);
        assert_eq!(
            trailer,
            ring::digest::digest(&ring::digest::SHA256, db).as_ref()
        );
        // The keys written are in the database.
        let text = String::from_utf8_lossy(db);
        assert!(text.contains("/registry/configmaps/default/c299"));
        // Its revision is the store's (nothing was written in between), read from the
        // file itself.
        assert_eq!(
            crate::snapshot_revision(&out).expect("revision"),
            Some(revision)
        );
        store
            .delete("/registry/configmaps/default/c7", None)
            .await
            .expect("delete");
        let out3 = dir.path().join("snaps").join("on-demand-n1-3");
        store.snapshot_to_file(&out3).await.expect("snapshot");
        assert_eq!(
            crate::snapshot_revision(&out3).expect("revision"),
            Some(revision + 1),
            "a deletion is a revision of the snapshot too"
        );
        // etcd's own tool agrees, when it is installed.
        if let Ok(out) = std::process::Command::new("etcdctl")
            .args(["snapshot", "status", "-w", "json"])
            .arg(&out3)
            .env("ETCDCTL_API", "3")
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains(&format!("\"revision\":{}", revision + 1)),
                "etcdctl snapshot status: {text}"
            );
        }

        // A member that is gone: the snapshot fails and leaves nothing behind.
        members[0].kill();
        let out2 = dir.path().join("snaps").join("on-demand-n1-2");
        assert!(store.snapshot_to_file(&out2).await.is_err());
        assert!(!out2.exists() && !partial_path(&out2).exists());
    }
}
