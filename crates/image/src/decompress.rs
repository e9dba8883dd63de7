//! Layer decompression: gzip, zstd (all frames of a stream) or none, chosen from the media
//! type and confirmed by the stream's magic bytes.

use std::io::{self, BufRead, BufReader, Read};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares (`…tar`, `…tar+gzip`, `…tar+zstd`, Docker's
    /// `…rootfs.diff.tar.gzip`).
    pub fn from_media_type(media_type: &str) -> Compression {
        if media_type.ends_with("+gzip") || media_type.ends_with(".gzip") {
            Compression::Gzip
        } else if media_type.ends_with("+zstd") || media_type.ends_with(".zstd") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    fn sniff(head: &[u8]) -> Option<Compression> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else {
            None
        }
    }
}

/// Wraps `source` in the decompressor its magic bytes call for (falling back to `declared`).
pub fn decompressor<'a>(source: impl Read + 'a, declared: Compression) -> io::Result<Box<dyn Read + 'a>> {
    let mut buffered = BufReader::with_capacity(256 << 10, source);
    let kind = Compression::sniff(buffered.fill_buf()?).unwrap_or(declared);
    Ok(match kind {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(ZstdFrames { source: buffered, decoder: ruzstd::decoding::FrameDecoder::new(), in_frame: false }),
    })
}

/// Decodes every zstd frame of a stream in turn, skipping skippable frames.
struct ZstdFrames<R: BufRead> {
    source: R,
    decoder: ruzstd::decoding::FrameDecoder,
    in_frame: bool,
}

fn zstd_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        use ruzstd::decoding::BlockDecodingStrategy;
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                while self.decoder.can_collect() < buf.len() && !self.decoder.is_finished() {
                    let want = buf.len() - self.decoder.can_collect();
                    self.decoder.decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(want)).map_err(zstd_error)?;
                }
                let n = self.decoder.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                if !self.decoder.is_finished() {
                    continue;
                }
                self.in_frame = false;
            }
            if self.source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.decoder.reset(&mut self.source) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame { length, .. })) => {
                    io::copy(&mut (&mut self.source).take(u64::from(length)), &mut io::sink())?;
                }
                Err(e) => return Err(zstd_error(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn roundtrip(compressed: &[u8], declared: Compression) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decompressor(compressed, declared)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn media_types() {
        assert_eq!(Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+gzip"), Compression::Gzip);
        assert_eq!(Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"), Compression::Gzip);
        assert_eq!(Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"), Compression::Zstd);
        assert_eq!(Compression::from_media_type("application/vnd.oci.image.layer.v1.tar"), Compression::None);
    }

    #[test]
    fn gzip_zstd_and_plain() -> io::Result<()> {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data)?;
        assert_eq!(roundtrip(&gz.finish()?, Compression::Gzip)?, data);
        // Two zstd frames back to back, declared as plain tar: the magic bytes win.
        let mut zst = ruzstd::encoding::compress_to_vec(&data[..300_000], ruzstd::encoding::CompressionLevel::Fastest);
        zst.extend(ruzstd::encoding::compress_to_vec(&data[300_000..], ruzstd::encoding::CompressionLevel::Fastest));
        assert_eq!(roundtrip(&zst, Compression::None)?, data);
        assert_eq!(roundtrip(&data, Compression::None)?, data);
        assert_eq!(roundtrip(b"", Compression::None)?, b"");
        Ok(())
    }

    #[test]
    fn corrupt_streams_are_errors() {
        assert!(roundtrip(&[0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff], Compression::Zstd).is_err());
        assert!(roundtrip(&[0x1f, 0x8b, 0x08, 0x00, 1, 2, 3], Compression::Gzip).is_err());
        assert!(roundtrip(b"", Compression::Gzip).is_err());
    }
}
