//! The native and Weave line parser (`event::parse_line`): any bytes give an event, a control
//! line or an error, never a panic; an event written back as a native line parses again to
//! the same event.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use outrigger::event::{Line, parse_line};

fuzz_target!(|data: &[u8]| {
    let buf = Bytes::copy_from_slice(data);
    let Ok(Line::Event(e)) = parse_line(&buf, &buf, 1 << 20) else {
        return;
    };
    let mut out = Vec::new();
    e.write_native(&mut out);
    let again = Bytes::from(out);
    let line = &again[..again.len() - 1];
    match parse_line(&again, line, usize::MAX) {
        Ok(Line::Event(f)) => {
            assert_eq!(e.kind, f.kind);
            assert_eq!(e.id, f.id);
            assert_eq!(e.ts_ns, f.ts_ns);
            assert_eq!(e.run_id, f.run_id);
            assert_eq!(e.attributes, f.attributes);
            assert_eq!(e.data, f.data);
        }
        other => panic!("a written event does not parse back: {other:?}"),
    }
});
