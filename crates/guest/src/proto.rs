//! The agent protocol's framing on the guest side: a request line parsed
//! into its id and the shared [`Request`] (`gpuswap_api::agent`, where every
//! op and its reply are defined), replies written as lines.
//!
//! Request:  `{"id":<u64>,"op":"<name>", ...args}`
//! Success:  `{"id":<same>,"ok":true, ...results}`
//! Failure:  `{"id":<same or null>,"ok":false,"error":"<message>","errno":<int or null>}`
//!
//! `errno` is the positive Linux errno when a syscall/ioctl failed, `null` for
//! protocol and argument errors. `id` is `null` only when the request line
//! could not be parsed far enough to find a u64 `id`. Unknown argument names
//! are rejected, so typos do not silently fall back to defaults.

pub use gpuswap_api::agent::{Request, OPS};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Upper bound on one request line (bytes, without the newline).
pub const MAX_LINE: usize = 64 * 1024;

/// Parse one request line into its id (when one could be read) and request.
pub fn parse_request(line: &str) -> (Option<u64>, Result<Request>) {
    let value: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return (None, Err(Error::msg(format!("invalid JSON: {e}")))),
    };
    let Value::Object(mut obj) = value else {
        return (None, Err(Error::msg("request must be a JSON object")));
    };
    let id = match obj.remove("id") {
        Some(v) => match v.as_u64() {
            Some(id) => id,
            None => {
                return (
                    None,
                    Err(Error::msg(format!("\"id\" must be a u64, got {v}"))),
                )
            }
        },
        None => return (None, Err(Error::msg("missing \"id\""))),
    };
    let op = match obj.get("op") {
        Some(Value::String(op)) => op.clone(),
        Some(v) => {
            return (
                Some(id),
                Err(Error::msg(format!("\"op\" must be a string, got {v}"))),
            )
        }
        None => return (Some(id), Err(Error::msg("missing \"op\""))),
    };
    if !OPS.contains(&op.as_str()) {
        return (
            Some(id),
            Err(Error::msg(format!(
                "unknown op \"{op}\" (known: {})",
                OPS.join(", ")
            ))),
        );
    }
    let req = serde_json::from_value::<Request>(Value::Object(obj))
        .map_err(|e| Error::msg(format!("bad arguments for op \"{op}\": {e}")));
    (Some(id), req)
}

/// Serialise a request line (no trailing newline), for host-side users and tests.
pub fn request_line(id: u64, req: &Request) -> String {
    let mut v = serde_json::to_value(req).expect("Request always serialises");
    if let Value::Object(obj) = &mut v {
        obj.insert("id".into(), Value::from(id));
    }
    v.to_string()
}

/// `{"id":id,"ok":true, ...results}` (no trailing newline). `results` must not
/// use the keys `id` or `ok`; they are overwritten if it does.
pub fn ok_response(id: u64, mut results: Map<String, Value>) -> String {
    results.insert("id".into(), Value::from(id));
    results.insert("ok".into(), Value::Bool(true));
    Value::Object(results).to_string()
}

/// `{"id":id,"ok":false,"error":..,"errno":..}` (no trailing newline).
pub fn err_response(id: Option<u64>, err: &Error) -> String {
    serde_json::json!({
        "id": id,
        "ok": false,
        "error": err.message,
        "errno": err.errno,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuswap_api::agent::{
        Create2d, DropCaches, Exit, Hello, Hog, Pattern, Scanout, TransferToHost, Verify, Vmstat,
        Write,
    };

    fn parse(line: &str) -> (Option<u64>, Result<Request>) {
        parse_request(line)
    }

    #[test]
    fn parses_ops_and_args() {
        assert_eq!(
            parse(r#"{"id":1,"op":"hello"}"#),
            (Some(1), Ok(Request::Hello(Hello {})))
        );
        assert_eq!(
            parse(r#"{"op":"create_2d","id":2,"width":64,"height":32}"#),
            (
                Some(2),
                Ok(Request::Create2d(Create2d {
                    width: 64,
                    height: 32,
                    format: None
                }))
            )
        );
        assert_eq!(
            parse(
                r#"{"id":3,"op":"write","handle":1,"seed":18446744073709551615,"bo":0,"version":2}"#
            )
            .1,
            Ok(Request::Write(Write {
                handle: 1,
                seed: u64::MAX,
                bo: 0,
                version: 2,
                pattern: None,
            }))
        );
        assert_eq!(
            parse(r#"{"id":4,"op":"exit","status":null}"#).1,
            Ok(Request::Exit(Exit { status: None }))
        );
        assert_eq!(
            parse(r#"{"id":5,"op":"transfer_to_host","handle":7,"barrier":false}"#).1,
            Ok(Request::TransferToHost(TransferToHost {
                handle: 7,
                barrier: Some(false),
                ..TransferToHost::default()
            }))
        );
    }

    #[test]
    fn parses_new_ops() {
        assert_eq!(
            parse(r#"{"id":1,"op":"hog","mib":512}"#).1,
            Ok(Request::Hog(Hog { mib: 512 }))
        );
        assert_eq!(
            parse(r#"{"id":2,"op":"drop_caches"}"#).1,
            Ok(Request::DropCaches(DropCaches { level: None }))
        );
        assert_eq!(
            parse(r#"{"id":3,"op":"drop_caches","level":1}"#).1,
            Ok(Request::DropCaches(DropCaches { level: Some(1) }))
        );
        assert_eq!(
            parse(r#"{"id":4,"op":"vmstat"}"#).1,
            Ok(Request::Vmstat(Vmstat {}))
        );
        assert_eq!(
            parse(r#"{"id":5,"op":"scanout","handle":3}"#).1,
            Ok(Request::Scanout(Scanout {
                handle: 3,
                width: None,
                height: None,
                stride: None
            }))
        );
        assert_eq!(
            parse(r#"{"id":6,"op":"scanout","handle":3,"width":640,"height":480,"stride":2560}"#).1,
            Ok(Request::Scanout(Scanout {
                handle: 3,
                width: Some(640),
                height: Some(480),
                stride: Some(2560)
            }))
        );
        // Rejections: missing, mistyped, out of range, unknown arguments.
        for bad in [
            r#"{"id":7,"op":"hog"}"#,
            r#"{"id":7,"op":"hog","mib":-1}"#,
            r#"{"id":7,"op":"hog","mib":"1G"}"#,
            r#"{"id":7,"op":"hog","mib":1,"mb":2}"#,
            r#"{"id":7,"op":"drop_caches","level":256}"#,
            r#"{"id":7,"op":"drop_caches","levle":1}"#,
            r#"{"id":7,"op":"vmstat","all":true}"#,
            r#"{"id":7,"op":"scanout","handle":1,"widht":4}"#,
            r#"{"id":7,"op":"scanout","width":4,"height":4}"#,
            r#"{"id":7,"op":"scanout","handle":1,"height":-4}"#,
        ] {
            let (id, r) = parse(bad);
            assert_eq!(id, Some(7));
            let e = r.unwrap_err();
            assert!(
                e.message.starts_with("bad arguments"),
                "{bad}: {}",
                e.message
            );
        }
        for req in [
            Request::Hog(Hog { mib: 0 }),
            Request::DropCaches(DropCaches { level: Some(2) }),
            Request::Vmstat(Vmstat {}),
            Request::Scanout(Scanout {
                handle: 1,
                width: Some(8),
                height: None,
                stride: None,
            }),
        ] {
            assert_eq!(parse(&request_line(1, &req)).1, Ok(req));
        }
    }

    #[test]
    fn every_op_name_is_a_variant() {
        for op in OPS {
            let (_, r) = parse(&format!(r#"{{"id":1,"op":"{op}"}}"#));
            // Either it parses (no required args) or fails on a *missing field*,
            // never on an unknown variant.
            if let Err(e) = r {
                assert!(e.message.contains("missing field"), "{op}: {}", e.message);
            }
        }
    }

    #[test]
    fn protocol_errors() {
        let (id, r) = parse("not json");
        assert_eq!(id, None);
        assert!(r.unwrap_err().message.starts_with("invalid JSON"));
        assert_eq!(parse("[1,2]").0, None);
        assert!(parse(r#"{"op":"hello"}"#)
            .1
            .unwrap_err()
            .message
            .contains("missing \"id\""));
        assert_eq!(parse(r#"{"id":-1,"op":"hello"}"#).0, None);
        let (id, r) = parse(r#"{"id":9,"op":"frobnicate"}"#);
        assert_eq!(id, Some(9));
        assert!(r
            .unwrap_err()
            .message
            .starts_with("unknown op \"frobnicate\""));
        let (id, r) = parse(r#"{"id":10}"#);
        assert_eq!(id, Some(10));
        assert!(r.unwrap_err().message.contains("missing \"op\""));
        // Bad argument type / missing / unknown argument.
        let e = parse(r#"{"id":11,"op":"create_2d","width":"big","height":1}"#)
            .1
            .unwrap_err();
        assert!(
            e.message.starts_with("bad arguments for op \"create_2d\""),
            "{}",
            e.message
        );
        assert!(parse(r#"{"id":12,"op":"create_2d","width":1}"#).1.is_err());
        let e = parse(r#"{"id":13,"op":"hash","handle":1,"hadnle":2}"#)
            .1
            .unwrap_err();
        assert!(e.message.contains("unknown field"), "{}", e.message);
        assert!(parse(r#"{"id":14,"op":"hello","extra":1}"#).1.is_err());
        assert!(parse(r#"{"id":15,"op":"close","handle":-1}"#).1.is_err());
        assert!(parse(r#"{"id":16,"op":"close","handle":4294967296}"#)
            .1
            .is_err());
    }

    #[test]
    fn round_trip_and_responses() {
        let req = Request::Verify(Verify {
            handle: 3,
            seed: 1,
            bo: 2,
            version: 3,
            pattern: Some(Pattern::Sparse),
        });
        let line = request_line(42, &req);
        assert_eq!(parse(&line), (Some(42), Ok(req)));

        let mut m = Map::new();
        m.insert("hash".into(), Value::from("00000000000000ab"));
        let v: Value = serde_json::from_str(&ok_response(7, m)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":7,"ok":true,"hash":"00000000000000ab"})
        );

        let v: Value = serde_json::from_str(&err_response(
            Some(8),
            &Error::with_errno("boom", nix::errno::Errno::ENOENT),
        ))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":8,"ok":false,"error":"boom","errno":2})
        );
        let v: Value = serde_json::from_str(&err_response(None, &Error::msg("bad"))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":null,"ok":false,"error":"bad","errno":null})
        );
    }
}
