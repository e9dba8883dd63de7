use super::*;
use futures_util::TryStreamExt;

fn body(parts: &[&'static [u8]]) -> ByteStream {
    Box::pin(futures_util::stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>()))
}

async fn read_all(s: &FsBlobStore, d: &Digest, off: u64, len: u64) -> Result<Vec<u8>> {
    let chunks: Vec<Bytes> = s.read(d, off, len).await?.try_collect().await.map_err(BlobStoreError::Body)?;
    Ok(chunks.concat())
}

#[tokio::test]
async fn chunked_upload_becomes_a_blob() -> Result<()> {
    let dir = tempfile::tempdir().map_err(io_err("tempdir"))?;
    let s = FsBlobStore::open(dir.path())?;
    let id = s.create_upload("web").await?;
    assert_eq!(s.append(&id, Some(0), body(&[b"hello ", b"wor"])).await?, 9);
    assert!(matches!(s.append(&id, Some(3), body(&[b"x"])).await, Err(BlobStoreError::OffsetMismatch { expected: 9, actual: 3 })));
    assert_eq!(s.append(&id, None, body(&[b"ld"])).await?, 11);
    let d = Digest::sha256_of(b"hello world");
    assert_eq!(s.finish(&id, &d, Some(11)).await?, 11);
    assert_eq!(s.stat(&d).await?, Some(11));
    assert_eq!(read_all(&s, &d, 6, 5).await?, b"world");
    assert_eq!(s.upload_info(&id).await?, None);
    assert!(s.list_uploads().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn wrong_digest_leaves_nothing() -> Result<()> {
    let dir = tempfile::tempdir().map_err(io_err("tempdir"))?;
    let s = FsBlobStore::open(dir.path())?;
    let id = s.create_upload("web").await?;
    s.append(&id, None, body(&[b"abc"])).await?;
    let wrong = Digest::sha256_of(b"abd");
    assert!(matches!(s.finish(&id, &wrong, None).await, Err(BlobStoreError::DigestMismatch { .. })));
    assert_eq!(s.stat(&wrong).await?, None);
    assert!(s.list().await?.is_empty());
    assert!(matches!(s.append(&id, None, body(&[b"x"])).await, Err(BlobStoreError::UploadUnknown(_))));
    Ok(())
}

#[tokio::test]
async fn resumes_after_restart_and_verifies_sha512() -> Result<()> {
    let dir = tempfile::tempdir().map_err(io_err("tempdir"))?;
    let id = {
        let s = FsBlobStore::open(dir.path())?;
        let id = s.create_upload("web").await?;
        s.append(&id, None, body(&[b"part one, "])).await?;
        id
    };
    // A new instance has no in-memory hasher: it rebuilds it from the data on disk.
    let s = FsBlobStore::open(dir.path())?;
    assert_eq!(s.upload_info(&id).await?.map(|u| u.size), Some(10));
    s.append(&id, Some(10), body(&[b"part two"])).await?;
    let mut h = Hasher::new(Algorithm::Sha512);
    h.update(b"part one, part two");
    let d = h.finish();
    s.finish(&id, &d, None).await?;
    assert_eq!(read_all(&s, &d, 0, 18).await?, b"part one, part two");
    Ok(())
}

#[tokio::test]
async fn identical_content_is_stored_once() -> Result<()> {
    let dir = tempfile::tempdir().map_err(io_err("tempdir"))?;
    let s = FsBlobStore::open(dir.path())?;
    let d = Digest::sha256_of(b"same");
    for repo in ["a", "b"] {
        let id = s.create_upload(repo).await?;
        s.append(&id, None, body(&[b"same"])).await?;
        s.finish(&id, &d, None).await?;
    }
    s.put(&d, Bytes::from_static(b"same")).await?;
    assert_eq!(s.list().await?.len(), 1);
    assert!(s.delete(&d).await?);
    assert!(!s.delete(&d).await?);
    Ok(())
}

#[tokio::test]
async fn body_error_keeps_received_bytes() -> Result<()> {
    let dir = tempfile::tempdir().map_err(io_err("tempdir"))?;
    let s = FsBlobStore::open(dir.path())?;
    let id = s.create_upload("web").await?;
    let broken: ByteStream = Box::pin(futures_util::stream::iter(vec![
        Ok(Bytes::from_static(b"abc")),
        Err(io::Error::new(io::ErrorKind::ConnectionReset, "client went away")),
    ]));
    assert!(matches!(s.append(&id, None, broken).await, Err(BlobStoreError::Body(_))));
    assert_eq!(s.upload_info(&id).await?.map(|u| u.size), Some(3));
    assert!(s.cancel(&id).await?);
    assert_eq!(s.upload_info(&id).await?, None);
    Ok(())
}
