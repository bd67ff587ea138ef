//! The Weave mapping: a Weave sidecar line (`{"method": …, "payload": …}`) with an arbitrary
//! payload becomes an event, and the `weave` sink turns events into an `upsert_batch` body
//! that is valid JSON, with every event either in it or counted as refused.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use outrigger::event::{Line, parse_line};
use outrigger::sinks::{Batch, WeaveSink};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the method; the rest is the payload as sent.
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let method = ["call_start", "call_end", "other", "flush"][pick as usize % 4];
    let mut line = format!(r#"{{"method":"{method}","payload":"#).into_bytes();
    line.extend_from_slice(payload);
    line.push(b'}');
    let buf = Bytes::from(line);
    let mut events = Vec::new();
    if let Ok(Line::Event(e)) = parse_line(&buf, &buf, 1 << 20) {
        assert_eq!(&*e.kind, method);
        events.push(e.clone());
        events.push(e);
    }
    let n = events.len();
    let enc = WeaveSink::encode(&Batch {
        events,
        upto: 1,
        floor: 1,
    });
    let refused: u64 = enc.refused.iter().sum();
    assert_eq!(enc.calls as u64 + refused, n as u64);
    if enc.calls > 0 {
        // Raw values, not `Value`: the payload is kept byte for byte, and JSON allows numbers
        // (`1e999`) that `Value` refuses as out of range (the first crash this target found).
        #[derive(serde::Deserialize)]
        struct Body {
            batch: Vec<Box<serde_json::value::RawValue>>,
        }
        let body: Body = serde_json::from_slice(&enc.body).expect("the upsert_batch body is JSON");
        assert_eq!(body.batch.len(), enc.calls);
    }
});
