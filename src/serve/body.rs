//! Reading an ingest request's body: within a time limit, within the size limit, and decoded from
//! its `Content-Encoding` (`gzip`, as RudderStack's SDKs send every request and Segment's Python
//! SDK with `gzip=True`; `deflate`).
//!
//! The size limit applies to the decoded body, and decoding stops one byte past it, so a
//! decompression bomb costs at most the limit in memory before it is refused. flate2's decoders do
//! the decoding; a compressed body may itself be at most the limit (plus a little framing).

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use std::io::Read as _;
use std::time::Duration;

/// Bytes a compressed body may add over the limit (gzip framing of an incompressible body).
const FRAMING: usize = 1024;

/// How a request body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
}

impl Encoding {
    /// The `Content-Encoding` of a request; `Err` names an encoding zdmap does not decode.
    pub fn of(headers: &HeaderMap) -> Result<Encoding, BodyError> {
        let Some(value) = headers.get(header::CONTENT_ENCODING) else {
            return Ok(Encoding::Identity);
        };
        let text = value
            .to_str()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match text.as_str() {
            "" | "identity" => Ok(Encoding::Identity),
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            "deflate" => Ok(Encoding::Deflate),
            _ => Err(BodyError::UnsupportedEncoding(
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
        }
    }
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than the limit of {what}")]
    TooLarge { what: &'static str },
    #[error("the request body is not valid {encoding} data ({detail})")]
    Undecodable {
        encoding: &'static str,
        detail: String,
    },
    #[error("Content-Encoding {0:?} is not supported; send gzip, deflate or an uncompressed body")]
    UnsupportedEncoding(String),
    #[error("the request body did not arrive within {0:?}")]
    Timeout(Duration),
    #[error("the request body could not be read: {0}")]
    Read(String),
}

/// What a body may be.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// Largest decoded body, in bytes.
    pub max_bytes: usize,
    /// How the limit is said in messages (`500 KB per batch`).
    pub what: &'static str,
    /// How long the whole body may take to arrive.
    pub timeout: Duration,
}

/// Reads and decodes a request body.
pub async fn read(body: Body, headers: &HeaderMap, limits: BodyLimits) -> Result<Bytes, BodyError> {
    let encoding = Encoding::of(headers)?;
    let raw_limit = match encoding {
        Encoding::Identity => limits.max_bytes,
        _ => limits.max_bytes + FRAMING,
    };
    let too_large = || BodyError::TooLarge { what: limits.what };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > raw_limit as u64) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(limits.timeout, Limited::new(body, raw_limit).collect())
        .await
        .map_err(|_| BodyError::Timeout(limits.timeout))?;
    let raw = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(too_large()),
        Err(e) => return Err(BodyError::Read(e.to_string())),
    };
    match encoding {
        Encoding::Identity => Ok(raw),
        _ => decode(encoding, &raw, limits).map(Bytes::from),
    }
}

/// Decodes `raw`, stopping one byte past the limit. `deflate` is zlib data (RFC 9110); raw
/// deflate data, which some senders send under that name, is taken too.
pub fn decode(encoding: Encoding, raw: &[u8], limits: BodyLimits) -> Result<Vec<u8>, BodyError> {
    let bounded = |reader: &mut dyn std::io::Read| {
        let mut out = Vec::new();
        reader
            .take(limits.max_bytes as u64 + 1)
            .read_to_end(&mut out)
            .map(|_| out)
    };
    let decoded = match encoding {
        Encoding::Identity => Ok(raw.to_vec()),
        Encoding::Gzip => bounded(&mut flate2::read::MultiGzDecoder::new(raw)),
        Encoding::Deflate => bounded(&mut flate2::read::ZlibDecoder::new(raw))
            .or_else(|_| bounded(&mut flate2::read::DeflateDecoder::new(raw))),
    };
    match decoded {
        Ok(out) if out.len() > limits.max_bytes => Err(BodyError::TooLarge { what: limits.what }),
        Ok(out) => Ok(out),
        Err(e) => Err(BodyError::Undecodable {
            encoding: encoding.name(),
            detail: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use std::io::Write as _;

    const LIMITS: BodyLimits = BodyLimits {
        max_bytes: 1000,
        what: "1000 bytes",
        timeout: Duration::from_secs(5),
    };

    fn compress(encoding: Encoding, data: &[u8]) -> Vec<u8> {
        if encoding == Encoding::Gzip {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
            e.write_all(data).expect("write");
            e.finish().expect("finish")
        } else {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), Compression::default());
            e.write_all(data).expect("write");
            e.finish().expect("finish")
        }
    }

    #[test]
    fn gzip_zlib_and_raw_deflate_decode_within_the_limit() {
        let data = br#"{"batch":[]}"#;
        for encoding in [Encoding::Gzip, Encoding::Deflate] {
            let raw = compress(encoding, data);
            assert_eq!(decode(encoding, &raw, LIMITS).expect("decodes"), data);
        }
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("write");
        let raw_deflate = e.finish().expect("finish");
        assert_eq!(
            decode(Encoding::Deflate, &raw_deflate, LIMITS).expect("raw deflate"),
            data
        );
    }

    #[test]
    fn a_bomb_stops_at_the_limit_and_garbage_names_its_encoding() {
        let bomb = compress(Encoding::Gzip, &vec![b' '; 10_000_000]);
        assert!(bomb.len() < LIMITS.max_bytes * 20);
        assert!(matches!(
            decode(Encoding::Gzip, &bomb, LIMITS),
            Err(BodyError::TooLarge { .. })
        ));
        let err = decode(Encoding::Gzip, b"{\"not\":\"gzip\"}", LIMITS).expect_err("garbage");
        assert!(err.to_string().contains("not valid gzip data"), "{err}");
        let err = decode(Encoding::Deflate, b"plain text", LIMITS).expect_err("garbage");
        assert!(err.to_string().contains("not valid deflate data"), "{err}");
    }

    #[test]
    fn the_content_encoding_header_is_read_case_insensitively() {
        let mut headers = HeaderMap::new();
        assert_eq!(Encoding::of(&headers).ok(), Some(Encoding::Identity));
        headers.insert(header::CONTENT_ENCODING, "GZIP".parse().expect("value"));
        assert_eq!(Encoding::of(&headers).ok(), Some(Encoding::Gzip));
        headers.insert(header::CONTENT_ENCODING, "br".parse().expect("value"));
        let err = Encoding::of(&headers).expect_err("br");
        assert!(err.to_string().contains("\"br\""), "{err}");
    }
}
