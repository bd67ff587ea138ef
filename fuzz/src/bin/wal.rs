//! The write-ahead log's segment reader (`wal::scan_segment`, what the replay on start reads
//! every segment with): any bytes give the records of a valid prefix and at most one problem,
//! never a panic. Every record lies inside the prefix, in order; the prefix ends where the
//! problem is; what is set aside is exactly the rest; the prefix alone scans again to the same
//! records with no problem; and each record's payload (a native line) parses without a panic,
//! as the replay parses it.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use outrigger::event::parse_line;
use outrigger::wal::scan_segment;

fuzz_target!(|data: &[u8]| {
    let s = scan_segment(data);
    let scan = &s.scan;
    assert!(scan.valid_len <= data.len());
    assert_eq!(s.set_aside_bytes, data.len() - scan.valid_len);
    let mut end = 0;
    for r in &scan.records {
        assert!(r.payload.start >= end && r.payload.end <= scan.valid_len);
        end = r.payload.end;
    }
    match scan.problem {
        Some(p) => assert_eq!(p.at, scan.valid_len),
        None => assert_eq!(scan.valid_len, data.len()),
    }
    if scan.problem.is_some() && scan.valid_len > 0 {
        let again = scan_segment(&data[..scan.valid_len]);
        assert_eq!(again.scan.records, scan.records);
        assert!(again.scan.problem.is_none());
        assert_eq!(again.set_aside_bytes, 0);
    }
    let buf = Bytes::copy_from_slice(data);
    for r in &scan.records {
        let _ = parse_line(&buf, &buf[r.payload.clone()], usize::MAX);
    }
});
