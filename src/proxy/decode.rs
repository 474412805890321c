//! Decoding a captured body's `Content-Encoding` for inspection only (the client always gets the
//! bytes the upstream sent). Output is capped, so a compression bomb costs at most the cap.

use std::io::Read;

use bytes::Bytes;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("decoded body is larger than the inspection cap")]
    TooLarge,
    #[error("body is not valid {0}")]
    Invalid(&'static str),
    #[error("content-encoding {0:?} is not supported for inspection")]
    Unsupported(String),
}

/// Decodes `bytes` per `content_encoding` (`gzip`, `x-gzip`, `deflate`, `br`, `zstd`, `identity`,
/// or a comma-separated chain of them), producing at most `cap` bytes. Without an encoding (or
/// with `identity` alone) the result shares `bytes`: nothing is copied.
pub fn decode(
    content_encoding: Option<&str>,
    bytes: &Bytes,
    cap: usize,
) -> Result<Bytes, DecodeError> {
    let Some(encodings) = content_encoding else {
        return Ok(bytes.clone());
    };
    let mut data = bytes.clone();
    // Encodings are listed in the order they were applied; undo them last to first.
    for coding in encodings
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .rev()
    {
        data = match coding.as_str() {
            "" | "identity" => data,
            "gzip" | "x-gzip" => {
                read_capped(flate2::read::MultiGzDecoder::new(&data[..]), cap, "gzip")?
            }
            "deflate" => read_capped(flate2::read::ZlibDecoder::new(&data[..]), cap, "deflate")?,
            "br" => read_capped(
                brotli_decompressor::Decompressor::new(&data[..], 8192),
                cap,
                "br",
            )?,
            "zstd" => {
                let decoder = zstd::stream::read::Decoder::new(&data[..])
                    .map_err(|_| DecodeError::Invalid("zstd"))?;
                read_capped(decoder, cap, "zstd")?
            }
            other => return Err(DecodeError::Unsupported(other.to_owned())),
        };
    }
    Ok(data)
}

fn read_capped(reader: impl Read, cap: usize, name: &'static str) -> Result<Bytes, DecodeError> {
    let mut out = Vec::new();
    reader
        .take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| DecodeError::Invalid(name))?;
    if out.len() > cap {
        return Err(DecodeError::TooLarge);
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const JSON: &[u8] = br#"[{"label":"cat","score":0.42}]"#;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decode(encoding: Option<&str>, bytes: &[u8], cap: usize) -> Result<Bytes, DecodeError> {
        super::decode(encoding, &Bytes::copy_from_slice(bytes), cap)
    }

    #[test]
    fn each_supported_encoding_round_trips() {
        assert_eq!(decode(Some("gzip"), &gzip(JSON), 1024).unwrap(), JSON);
        let zstd = zstd::encode_all(JSON, 3).unwrap();
        assert_eq!(decode(Some("zstd"), &zstd, 1024).unwrap(), JSON);
        let mut br = Vec::new();
        brotli_encode(JSON, &mut br);
        assert_eq!(decode(Some("br"), &br, 1024).unwrap(), JSON);
        assert_eq!(decode(None, JSON, 1024).unwrap(), JSON);
        assert_eq!(decode(Some("identity"), JSON, 1024).unwrap(), JSON);
    }

    #[test]
    fn a_body_without_an_encoding_is_shared_not_copied() {
        let body = Bytes::from_static(JSON);
        for encoding in [None, Some("identity")] {
            let decoded = super::decode(encoding, &body, 1024).unwrap();
            assert_eq!(decoded.as_ptr(), body.as_ptr(), "{encoding:?}");
        }
    }

    #[test]
    fn bombs_stop_at_the_cap_and_garbage_is_an_error() {
        let bomb = gzip(&vec![b'a'; 1 << 20]);
        assert_eq!(
            decode(Some("gzip"), &bomb, 4096),
            Err(DecodeError::TooLarge)
        );
        assert_eq!(
            decode(Some("gzip"), b"not gzip", 4096),
            Err(DecodeError::Invalid("gzip"))
        );
        assert!(matches!(
            decode(Some("compress"), JSON, 4096),
            Err(DecodeError::Unsupported(_))
        ));
    }

    fn brotli_encode(data: &[u8], out: &mut Vec<u8>) {
        let mut w = brotli::CompressorWriter::new(out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
}
