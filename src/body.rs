//! Reading bodies the proxy must look into (a 404 from Twilio, a JSON
//! answer whose links are rewritten), bounded and decoded.

use bytes::Bytes;
use http::HeaderValue;

/// Largest decoded body inspected (a Twilio error body is ~200 bytes; a
/// page of JSON is far below this).
pub const MAX_DECODED_BYTES: u64 = 1024 * 1024;

/// Decode a gzip/deflate body for inspection (bounded by
/// [`MAX_DECODED_BYTES`]); `None` when the encoding is unknown or the data
/// is corrupt.
pub fn decode_body(encoding: Option<&HeaderValue>, raw: &Bytes) -> Option<Vec<u8>> {
    use std::io::Read;
    let enc = encoding
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_ascii_lowercase());
    let mut out = Vec::new();
    match enc.as_deref() {
        None | Some("identity") | Some("") => return Some(raw.to_vec()),
        Some("gzip") | Some("x-gzip") => {
            flate2::read::GzDecoder::new(&raw[..])
                .take(MAX_DECODED_BYTES)
                .read_to_end(&mut out)
                .ok()?;
        }
        Some("deflate") => {
            flate2::read::ZlibDecoder::new(&raw[..])
                .take(MAX_DECODED_BYTES)
                .read_to_end(&mut out)
                .ok()?;
        }
        _ => return None,
    }
    Some(out)
}
