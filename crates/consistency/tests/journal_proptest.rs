//! Property tests of the journal record format: round trips, and arbitrary bytes never panic.

use proptest::prelude::*;
use strata_consistency::journal::{Record, SEGMENT_MAGIC, ScanEnd, decode_record, scan_segment};

fn arb_record() -> impl Strategy<Value = (u8, u64, Vec<u8>, Vec<u8>)> {
    (
        0u8..4,
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 0..256),
    )
}

fn build<'a>(kind: u8, n: u64, key: &'a [u8], value: &'a [u8]) -> Record<'a> {
    match kind {
        0 => Record::Put { seq: n, key, value },
        1 => Record::Delete { seq: n, key },
        2 => Record::Sealed { seq: n, body: value },
        _ => Record::Checkpoint { confirmed: n },
    }
}

proptest! {
    #[test]
    fn encode_decode_round_trip((kind, n, key, value) in arb_record()) {
        let r = build(kind, n, &key, &value);
        let bytes = r.encode().expect("encodes");
        let (back, used) = decode_record(&bytes).expect("decodes");
        prop_assert_eq!(back, r);
        prop_assert_eq!(used, bytes.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_record(&bytes);
        let _ = scan_segment(&bytes);
        let mut seg = SEGMENT_MAGIC.to_vec();
        seg.extend_from_slice(&bytes);
        let _ = scan_segment(&seg);
    }

    #[test]
    fn any_single_bit_flip_is_detected(
        (kind, n, key, value) in arb_record(),
        bit in any::<proptest::sample::Index>(),
    ) {
        let r = build(kind, n, &key, &value);
        let mut bytes = r.encode().expect("encodes");
        let i = bit.index(bytes.len() * 8);
        bytes[i / 8] ^= 1 << (i % 8);
        prop_assert!(decode_record(&bytes).is_err());
    }

    #[test]
    fn every_truncation_of_a_log_is_a_torn_tail_keeping_the_complete_records(
        records in proptest::collection::vec(arb_record(), 1..8),
        cut in any::<proptest::sample::Index>(),
    ) {
        let mut seg = SEGMENT_MAGIC.to_vec();
        let mut ends = Vec::new();
        for (kind, n, key, value) in &records {
            build(*kind, *n, key, value).encode_into(&mut seg).expect("encodes");
            ends.push(seg.len());
        }
        let at = SEGMENT_MAGIC.len() + cut.index(seg.len() - SEGMENT_MAGIC.len());
        let scan = scan_segment(&seg[..at]);
        let complete = ends.iter().filter(|&&e| e <= at).count();
        prop_assert_eq!(scan.records.len(), complete);
        match scan.end {
            ScanEnd::Clean => prop_assert!(ends.contains(&at) || at == SEGMENT_MAGIC.len()),
            ScanEnd::Damaged { valid_after, .. } => prop_assert!(!valid_after),
        }
    }
}
