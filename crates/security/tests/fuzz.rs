//! Fuzz-style property test: arbitrary and mutated inputs through every decoder that sees
//! untrusted bytes (frame, zstd, AES-GCM, the codec pipeline, bus messages, audit lines,
//! keyring text). The property: no panic, ever (errors are fine).
//!
//! `STRATA_FUZZ_CASES` sets the total number of inputs for the default run (split evenly across
//! the decoders); the ignored `fuzz_long` test (run by `cargo xtask fuzz`) reads
//! `STRATA_FUZZ_LONG_CASES` (default 10,000,000). Each test prints how many inputs it executed.
#![allow(clippy::unwrap_used)]

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use strata_cache_core::frame::{CodecStep, Frame, encode_meta};
use strata_cache_core::{
    Codec, CodecContext, CodecPipeline, Encoded, EntryMeta, InstanceId, Invalidation, InvalidationTarget, Key,
    Namespace, Timestamp,
};
use strata_security::audit::{self, AuditRecord, AuditSink, JsonLinesAuditSink};
use strata_security::{Action, AesGcmCodec, Keyring, Outcome, ZstdCodec, ZstdDictionary};

/// Inputs for the default run: sized to finish well within a minute with the workspace's
/// dev-profile optimisation of this crate and its codecs.
const DEFAULT_CASES: u64 = 1_200_000;
const DEFAULT_LONG_CASES: u64 = 10_000_000;

/// How an input is made from a corpus of valid encodings.
#[derive(Debug, Clone)]
struct Mutation {
    pick: usize,
    edits: Vec<(usize, u8)>,
    cut: Option<usize>,
    splice: Option<(usize, Vec<u8>)>,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (
        any::<usize>(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        proptest::option::weighted(0.3, any::<usize>()),
        proptest::option::weighted(0.2, (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))),
    )
        .prop_map(|(pick, edits, cut, splice)| Mutation { pick, edits, cut, splice })
}

impl Mutation {
    fn apply(&self, corpus: &[Vec<u8>]) -> Vec<u8> {
        let mut v = corpus[self.pick % corpus.len()].clone();
        if !v.is_empty() {
            for &(i, b) in &self.edits {
                let i = i % v.len();
                v[i] = b;
            }
        }
        if let Some((at, bytes)) = &self.splice {
            let at = at % (v.len() + 1);
            v.splice(at..at, bytes.iter().copied());
        }
        if let Some(c) = self.cut {
            v.truncate(c % (v.len() + 1));
        }
        v
    }
}

/// Either arbitrary bytes or a mutated valid encoding.
#[derive(Debug, Clone)]
enum Input {
    Raw(Vec<u8>),
    Mutated(Mutation),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..256).prop_map(Input::Raw),
        3 => mutation().prop_map(Input::Mutated),
    ]
}

impl Input {
    fn bytes(&self, corpus: &[Vec<u8>]) -> Vec<u8> {
        match self {
            Input::Raw(v) => v.clone(),
            Input::Mutated(m) => m.apply(corpus),
        }
    }
}

struct Targets {
    key: Key,
    zstd: ZstdCodec,
    aes: AesGcmCodec,
    pipeline: CodecPipeline,
    frames: Vec<Vec<u8>>,
    zstd_out: Vec<Vec<u8>>,
    zstd_params: Vec<Vec<u8>>,
    aes_out: Vec<Vec<u8>>,
    aes_params: Vec<Vec<u8>>,
    bus: Vec<Vec<u8>>,
    audit_lines: Vec<Vec<u8>>,
    keyrings: Vec<Vec<u8>>,
}

fn targets() -> Targets {
    let key = Key::new("fuzz", Namespace::new("ns").unwrap(), "key-1").unwrap();
    let samples: Vec<String> =
        (0..300).map(|i| format!(r#"{{"id":{i},"name":"n{i}","email":"u{i}@x.io","roles":["a","b"]}}"#)).collect();
    let dict = ZstdDictionary::train(&samples, 2048).unwrap();
    let zstd = ZstdCodec::new(3).unwrap().min_size(8).max_decoded_bytes(1 << 20).unwrap().dictionary(dict).unwrap();
    let plain_zstd = ZstdCodec::new(3).unwrap().min_size(8);
    let ring = Arc::new(Keyring::generate().unwrap());
    ring.rotate().unwrap();
    let aes = AesGcmCodec::new(ring.clone()).unwrap();
    let mut pipeline = CodecPipeline::new();
    pipeline.push(Arc::new(ZstdCodec::new(3).unwrap().min_size(8))).unwrap();
    pipeline.push(Arc::new(AesGcmCodec::new(ring.clone()).unwrap())).unwrap();

    let values: Vec<Bytes> = (0..8).map(|i| Bytes::from(samples[i * 7..i * 7 + 1 + i].concat())).collect();
    let mut t = Targets {
        key,
        zstd,
        aes,
        pipeline,
        frames: vec![],
        zstd_out: vec![],
        zstd_params: vec![vec![0], vec![1, 0, 0, 0, 0]],
        aes_out: vec![],
        aes_params: vec![],
        bus: vec![],
        audit_lines: vec![],
        keyrings: vec![],
    };
    for (i, v) in values.iter().enumerate() {
        let meta = EntryMeta {
            created: Timestamp(1_000 * i as u64),
            fresh_until: Timestamp(2_000_000),
            expires_at: Timestamp(3_000_000),
            version: i as u64,
            load_cost_us: 5,
            negative: i == 7,
            tags: vec!["t1".to_string(), format!("tag-{i}")].into(),
        };
        let meta_section = encode_meta(&meta, 1).unwrap();
        let ctx = CodecContext { key: &t.key, meta_section: &meta_section };
        let (steps, out) = t.pipeline.encode(&ctx, v.clone()).unwrap();
        t.frames.push(Frame::finish(meta_section.clone(), &steps, &out).unwrap().to_vec());
        let odd = [CodecStep { id: 1, params: vec![0] }, CodecStep { id: 77, params: vec![1; 3] }];
        t.frames.push(Frame::finish(meta_section.clone(), &odd, v).unwrap().to_vec());
        for codec in [&t.zstd, &plain_zstd] {
            if let Encoded::Applied { params, output } = codec.encode(&ctx, v.clone()).unwrap() {
                t.zstd_params.push(params);
                t.zstd_out.push(output.to_vec());
            }
        }
        if let Encoded::Applied { params, output } = t.aes.encode(&ctx, v.clone()).unwrap() {
            t.aes_params.push(params);
            t.aes_out.push(output.to_vec());
        }
        let target = match i % 4 {
            0 => InvalidationTarget::Key(format!("k{i}")),
            1 => InvalidationTarget::Tag(format!("t{i}")),
            2 => InvalidationTarget::Namespace,
            _ => InvalidationTarget::All,
        };
        t.bus.push(
            Invalidation { origin: InstanceId(i as u128), cache: "c".into(), namespace: "n".into(), target }.to_bytes(),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let sink = JsonLinesAuditSink::open(&path).unwrap();
    for i in 0..6 {
        let outcome = if i % 2 == 0 { Outcome::Allowed } else { Outcome::Denied };
        sink.record(&AuditRecord::now(&format!("p{i}"), Action::Write, "c", "n", Some(format!("{i:032x}")), outcome))
            .unwrap();
    }
    t.audit_lines = std::fs::read_to_string(&path).unwrap().lines().map(|l| l.as_bytes().to_vec()).collect();
    assert_eq!(audit::verify(&path).unwrap().lines, 6);
    t.keyrings = vec![
        b"1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n*2:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n".to_vec(),
        b"# comment\n7:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=,8:AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM="
            .to_vec(),
    ];
    t
}

/// Runs `cases` inputs through one decoder; returns how many ran. Panics (a failed property)
/// fail the test with the input that caused them.
fn run<S: Strategy>(name: &str, cases: u64, strategy: S, f: impl Fn(S::Value)) -> u64
where
    S::Value: std::fmt::Debug,
{
    let cfg = Config {
        cases: u32::try_from(cases).unwrap_or(u32::MAX),
        failure_persistence: None,
        max_shrink_iters: 2_000,
        ..Config::default()
    };
    let ran = Cell::new(0u64);
    let start = Instant::now();
    TestRunner::new(cfg)
        .run(&strategy, |v| {
            ran.set(ran.get() + 1);
            f(v);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("decoder `{name}` panicked: {e}"));
    println!("  {name:<22} {:>10} inputs in {:.1?}", ran.get(), start.elapsed());
    ran.get()
}

fn fuzz_all(total: u64) -> u64 {
    let t = targets();
    let per = total.div_ceil(7);
    let mut n = 0;
    println!("fuzzing {per} inputs per decoder:");
    let (parsed, opened) = (Cell::new(0u64), Cell::new(0u64));
    n += run("Frame::decode+pipeline", per, (input(), any::<bool>()), |(i, fix_crc)| {
        let mut v = i.bytes(&t.frames);
        if fix_crc && v.len() >= 6 {
            // Recompute the checksum so that mutations reach the parser and the codecs.
            let body = v.len() - 4;
            let crc = crc32fast::hash(&v[..body]).to_le_bytes();
            v[body..].copy_from_slice(&crc);
        }
        let b = Bytes::from(v);
        if let Ok((frame, meta_len)) = Frame::decode(&b) {
            parsed.set(parsed.get() + 1);
            let ctx = CodecContext { key: &t.key, meta_section: &b[..meta_len] };
            if t.pipeline.decode(&ctx, &frame.codecs, frame.payload).is_ok() {
                opened.set(opened.get() + 1);
            }
        }
    });
    println!("    ({} parsed as frames, {} of them decoded by the pipeline)", parsed.get(), opened.get());
    n += run("ZstdCodec::decode", per, (input(), mutation()), |(i, p)| {
        let ctx = CodecContext { key: &t.key, meta_section: b"" };
        let _ = t.zstd.decode(&ctx, &p.apply(&t.zstd_params), Bytes::from(i.bytes(&t.zstd_out)));
    });
    n += run("AesGcmCodec::decode", per, (input(), mutation()), |(i, p)| {
        let ctx = CodecContext { key: &t.key, meta_section: b"m" };
        let _ = t.aes.decode(&ctx, &p.apply(&t.aes_params), Bytes::from(i.bytes(&t.aes_out)));
    });
    n += run("Invalidation::from_bytes", per, input(), |i| {
        let _ = Invalidation::from_bytes(&i.bytes(&t.bus));
    });
    n += run("audit::parse_line", per, input(), |i| {
        let _ = audit::parse_line(&String::from_utf8_lossy(&i.bytes(&t.audit_lines)));
    });
    n += run("Keyring::parse", per, input(), |i| {
        let _ = Keyring::parse(&String::from_utf8_lossy(&i.bytes(&t.keyrings)), "fuzz");
    });
    n += run("escape_glob+redis_match", per, (".{0,12}", ".{0,12}"), |(a, b)| {
        let p = strata_security::escape_glob(&a);
        assert!(strata_security::glob::redis_glob_match(p.as_bytes(), a.as_bytes()));
        assert_eq!(strata_security::glob::redis_glob_match(p.as_bytes(), b.as_bytes()), a == b);
    });
    n
}

fn cases_from_env(var: &str, default: u64) -> u64 {
    match std::env::var(var) {
        Ok(v) => v.replace('_', "").parse().unwrap_or_else(|_| panic!("{var} must be a number, got {v:?}")),
        Err(_) => default,
    }
}

#[test]
fn fuzz_every_decoder() {
    let want = cases_from_env("STRATA_FUZZ_CASES", DEFAULT_CASES);
    let start = Instant::now();
    let ran = fuzz_all(want);
    println!("fuzz: {ran} inputs executed across 7 decoders in {:.1?}, 0 panics", start.elapsed());
    assert!(ran >= want, "ran {ran} of {want}");
}

#[test]
#[ignore = "long run: cargo xtask fuzz (STRATA_FUZZ_LONG_CASES, default 10M)"]
fn fuzz_long() {
    let want = cases_from_env("STRATA_FUZZ_LONG_CASES", DEFAULT_LONG_CASES);
    let start = Instant::now();
    let ran = fuzz_all(want);
    println!("fuzz (long): {ran} inputs executed across 7 decoders in {:.1?}, 0 panics", start.elapsed());
    assert!(ran >= want, "ran {ran} of {want}");
}
