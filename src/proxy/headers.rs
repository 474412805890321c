//! Header rules of the proxy: hop-by-hop removal (RFC 9110 §7.6.1) and the record id.

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_SAGEMAKER_INFERENCE_ID: HeaderName =
    HeaderName::from_static("x-amzn-sagemaker-inference-id");
pub const X_SAGEMAKER_TARGET_MODEL: HeaderName =
    HeaderName::from_static("x-amzn-sagemaker-target-model");
pub const X_INVOKED_VARIANT: HeaderName =
    HeaderName::from_static("x-amzn-invoked-production-variant");
pub const X_REVIEWLOOP_ID: HeaderName = HeaderName::from_static("x-reviewloop-id");
pub const X_REVIEWLOOP_REVIEW: HeaderName = HeaderName::from_static("x-reviewloop-review");
/// W3C Trace Context: forwarded unchanged, and carried into the records.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Longest client-chosen id kept as the record id; a longer or odd one is replaced.
const MAX_ID_LEN: usize = 256;

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1), plus the
/// de-facto ones proxies drop.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Drops hop-by-hop headers, including every header the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    // `Trailer` only announces trailers of a chunked message; hyper re-frames the body.
    headers.remove(header::TRAILER);
}

/// The record id: SageMaker's inference id, else the client's request id, else a new UUIDv7.
pub fn record_id(headers: &HeaderMap) -> String {
    [X_SAGEMAKER_INFERENCE_ID, X_REQUEST_ID]
        .iter()
        .filter_map(|name| headers.get(name))
        .filter_map(|value| value.to_str().ok())
        .map(str::trim)
        .find(|id| is_usable_id(id))
        .map_or_else(crate::ids::new_v7_string, str::to_owned)
}

/// The request's W3C `traceparent` when it is well formed (version `00`: `00-` 32 hex trace
/// id `-` 16 hex parent id `-` 2 hex flags, ids not all zero; a later version's longer value
/// keeps its first 55 characters' shape), lower-cased as the spec requires. The header is the
/// client's: anything else is not carried into a record (it is still forwarded).
pub fn traceparent(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(TRACEPARENT)?.to_str().ok()?.trim();
    let bytes = value.as_bytes();
    let hex = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_hexdigit);
    let zeros = |range: std::ops::Range<usize>| bytes[range].iter().all(|&b| b == b'0');
    let shaped = bytes.len() >= 55
        && hex(0..2)
        && bytes[2] == b'-'
        && hex(3..35)
        && bytes[35] == b'-'
        && hex(36..52)
        && bytes[52] == b'-'
        && hex(53..55);
    if !shaped || zeros(3..35) || zeros(36..52) {
        return None;
    }
    let version_ok = match &value[..2] {
        "00" => bytes.len() == 55,
        "ff" | "FF" => false,
        // A future version may append fields after a dash (W3C Trace Context §3.2.4).
        _ => bytes.len() == 55 || bytes[55] == b'-',
    };
    version_ok
        .then(|| value[..55].to_ascii_lowercase())
}

fn is_usable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// A header value as text, when it is text.
pub fn text(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// An id as a header value; ids are printable ASCII by construction.
pub fn id_value(id: &str) -> HeaderValue {
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traceparent_of(value: &str) -> Option<String> {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_str(value).unwrap());
        traceparent(&h)
    }

    #[test]
    fn well_formed_traceparents_are_carried_and_others_are_not() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(traceparent_of(good).as_deref(), Some(good));
        assert_eq!(
            traceparent_of(&good.to_ascii_uppercase()).as_deref(),
            Some(good),
            "lower-cased"
        );
        // A later version may append fields: its first 55 characters are kept.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert_eq!(
            traceparent_of(future).as_deref(),
            Some(&future[..55].to_owned()[..])
        );
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "<script>alert(1)</script>-00f067aa0ba902b7-01-0000000000",
        ] {
            assert_eq!(traceparent_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().unwrap(),
        );
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        h.insert("x-model-version", "7".parse().unwrap());
        remove_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "x-model-version"]);
    }

    #[test]
    fn record_id_prefers_sagemaker_then_request_id_then_new() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, "req-1".parse().unwrap());
        assert_eq!(record_id(&h), "req-1");
        h.insert(X_SAGEMAKER_INFERENCE_ID, "inf-9".parse().unwrap());
        assert_eq!(record_id(&h), "inf-9");
        let fresh = record_id(&HeaderMap::new());
        assert_eq!(uuid::Uuid::parse_str(&fresh).unwrap().get_version_num(), 7);
        let mut odd = HeaderMap::new();
        odd.insert(X_REQUEST_ID, "has space".parse().unwrap());
        assert_ne!(record_id(&odd), "has space");
    }
}
