//! The OTLP/HTTP decoders: logs and traces, protobuf and JSON. Any body decodes or gives the
//! error text of a `400`, never a panic; what decodes maps to events whose native lines are
//! valid JSON.
#![no_main]

use std::time::Instant;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use outrigger::ingest::otlp::http::{Encoding, decode};
use outrigger::ingest::otlp::{logs_to_events, spans_to_events};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the signal and the encoding; the rest is the body.
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let enc = if pick & 1 == 0 {
        Encoding::Protobuf
    } else {
        Encoding::Json
    };
    let body = Bytes::copy_from_slice(body);
    let events = if pick & 2 == 0 {
        match decode::<ExportLogsServiceRequest>(enc, body) {
            Ok(req) => logs_to_events(&req, Instant::now()),
            Err(_) => return,
        }
    } else {
        match decode::<ExportTraceServiceRequest>(enc, body) {
            Ok(req) => spans_to_events(&req, Instant::now()),
            Err(_) => return,
        }
    };
    for e in events {
        let mut line = Vec::new();
        e.write_native(&mut line);
        serde_json::from_slice::<serde_json::Value>(&line).expect("an OTLP event is a JSON line");
    }
});
