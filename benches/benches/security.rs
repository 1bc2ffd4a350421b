//! Security codec benches: zstd ratio and MB/s on realistic JSON (1 KiB, 4 KiB, 64 KiB; level
//! 3; 1 KiB with and without a trained dictionary) and AES-256-GCM encrypt + decrypt MB/s on
//! 4 KiB values. Prints the ratios and the CPU features the AES backend can use; criterion
//! reports the throughput.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use strata_cache_core::{Codec, CodecContext, Encoded, Key, Namespace};
use strata_security::{AesGcmCodec, Keyring, ZstdCodec, ZstdDictionary};

const FIRST: [&str; 12] =
    ["Ana", "Ben", "Chloé", "Dmitri", "Emeka", "Fatima", "Gao", "Hana", "Ivan", "Jia", "Kofi", "Lena"];
const LAST: [&str; 10] =
    ["Silva", "Müller", "Nakamura", "Okafor", "Smith", "Kowalski", "Haddad", "Chen", "Rossi", "Novak"];
const CITIES: [&str; 8] = ["Berlin", "Lagos", "Osaka", "São Paulo", "Toronto", "Warsaw", "Pune", "Lyon"];
const SKUS: [&str; 6] = ["SKU-10492", "SKU-88121", "SKU-00017", "SKU-55310", "SKU-73002", "SKU-19945"];
const STATUS: [&str; 4] = ["pending", "paid", "shipped", "delivered"];

fn user(r: &mut fastrand::Rng, id: u64) -> String {
    let (f, l) = (FIRST[r.usize(..FIRST.len())], LAST[r.usize(..LAST.len())]);
    format!(
        r#"{{"id":{id},"first_name":"{f}","last_name":"{l}","email":"{}.{}{}@example.com","city":"{}","age":{},"active":{},"score":{:.2},"created_at":"2024-{:02}-{:02}T{:02}:{:02}:{:02}Z"}}"#,
        f.to_lowercase(),
        l.to_lowercase(),
        r.u32(1..999),
        CITIES[r.usize(..CITIES.len())],
        r.u8(18..90),
        r.bool(),
        r.f64() * 100.0,
        r.u8(1..13),
        r.u8(1..29),
        r.u8(0..24),
        r.u8(0..60),
        r.u8(0..60)
    )
}

fn order(r: &mut fastrand::Rng, id: u64) -> String {
    let lines: Vec<String> = (0..r.usize(1..4))
        .map(|_| {
            format!(
                r#"{{"sku":"{}","quantity":{},"unit_price":{:.2}}}"#,
                SKUS[r.usize(..SKUS.len())],
                r.u8(1..6),
                r.f64() * 200.0
            )
        })
        .collect();
    format!(
        r#"{{"order_id":"ord-{id:08}","customer_id":{},"status":"{}","currency":"EUR","lines":[{}],"shipping":{{"city":"{}","express":{}}}}}"#,
        r.u32(1..100_000),
        STATUS[r.usize(..STATUS.len())],
        lines.join(","),
        CITIES[r.usize(..CITIES.len())],
        r.bool()
    )
}

/// A JSON array of users and orders of about `size` bytes (never more), from `seed`.
fn json_payload(size: usize, seed: u64) -> Bytes {
    let mut r = fastrand::Rng::with_seed(seed);
    let mut s = String::from("[");
    let mut id = seed * 1_000;
    loop {
        id += 1;
        let obj = if r.bool() { user(&mut r, id) } else { order(&mut r, id) };
        if s.len() + obj.len() + 2 > size {
            break;
        }
        if s.len() > 1 {
            s.push(',');
        }
        s.push_str(&obj);
    }
    s.push(']');
    Bytes::from(s)
}

fn ctx_key() -> Key {
    Key::new("bench", Namespace::default_namespace(), "user:42").expect("key")
}

fn compressed(codec: &ZstdCodec, key: &Key, input: &Bytes) -> (Vec<u8>, Bytes) {
    let ctx = CodecContext { key, meta_section: b"" };
    match codec.encode(&ctx, input.clone()).expect("encode") {
        Encoded::Applied { params, output } => (params, output),
        Encoded::Skipped => panic!("{} bytes of JSON were not compressed", input.len()),
    }
}

fn zstd(c: &mut Criterion) {
    let key = ctx_key();
    let ctx = CodecContext { key: &key, meta_section: b"" };
    let plain = ZstdCodec::new(3).expect("level");
    let samples: Vec<Bytes> = (1_000..1_500).map(|seed| json_payload(1024, seed)).collect();
    let dict = ZstdDictionary::train(&samples, 16 * 1024).expect("train");
    let with_dict = ZstdCodec::new(3).expect("level").dictionary(dict).expect("dict");

    println!("\nzstd level 3 on realistic JSON (users and orders):");
    let mut g = c.benchmark_group("zstd");
    for (label, size, codec) in
        [("1KiB", 1024, &plain), ("1KiB_dict", 1024, &with_dict), ("4KiB", 4096, &plain), ("64KiB", 65536, &plain)]
    {
        // Payloads the dictionary was not trained on.
        let inputs: Vec<Bytes> = (0..64).map(|seed| json_payload(size, seed)).collect();
        let (mut raw, mut packed) = (0usize, 0usize);
        let encoded: Vec<(Vec<u8>, Bytes)> = inputs.iter().map(|i| compressed(codec, &key, i)).collect();
        for (i, (_, o)) in inputs.iter().zip(&encoded) {
            raw += i.len();
            packed += o.len();
        }
        println!("  {label:>10}: ratio {:.2}x ({raw} -> {packed} bytes over 64 payloads)", raw as f64 / packed as f64);
        let avg = (raw / inputs.len()) as u64;
        g.throughput(Throughput::Bytes(avg));
        let mut n = 0usize;
        g.bench_function(format!("compress_{label}"), |b| {
            b.iter(|| {
                n = (n + 1) % inputs.len();
                black_box(codec.encode(&ctx, inputs[n].clone()).expect("encode"))
            })
        });
        let mut m = 0usize;
        g.bench_function(format!("decompress_{label}"), |b| {
            b.iter(|| {
                m = (m + 1) % encoded.len();
                let (p, o) = &encoded[m];
                black_box(codec.decode(&ctx, p, o.clone()).expect("decode"))
            })
        });
    }
    g.finish();
}

fn aes(c: &mut Criterion) {
    #[cfg(target_arch = "x86_64")]
    println!(
        "\nCPU: aes={} pclmulqdq={} vaes={} vpclmulqdq={} avx512f={}",
        std::arch::is_x86_feature_detected!("aes"),
        std::arch::is_x86_feature_detected!("pclmulqdq"),
        std::arch::is_x86_feature_detected!("vaes"),
        std::arch::is_x86_feature_detected!("vpclmulqdq"),
        std::arch::is_x86_feature_detected!("avx512f"),
    );
    let key = ctx_key();
    let meta = [7u8; 48];
    let ctx = CodecContext { key: &key, meta_section: &meta };
    let codec = AesGcmCodec::new(Arc::new(Keyring::generate().expect("keys"))).expect("codec");
    let value = json_payload(4096, 7);
    let value = Bytes::from(value.iter().copied().chain(std::iter::repeat(b' ')).take(4096).collect::<Vec<u8>>());
    let Encoded::Applied { params, output } = codec.encode(&ctx, value.clone()).expect("encrypt") else {
        panic!("AES-GCM never skips")
    };
    let mut g = c.benchmark_group("aes_256_gcm_4KiB");
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("encrypt", |b| b.iter(|| black_box(codec.encode(&ctx, value.clone()).expect("encrypt"))));
    g.bench_function("decrypt", |b| {
        b.iter(|| black_box(codec.decode(&ctx, &params, output.clone()).expect("decrypt")))
    });
    g.bench_function("encrypt_then_decrypt", |b| {
        b.iter(|| {
            let Encoded::Applied { params, output } = codec.encode(&ctx, value.clone()).expect("encrypt") else {
                unreachable!()
            };
            black_box(codec.decode(&ctx, &params, output).expect("decrypt"))
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    zstd(&mut c);
    aes(&mut c);
    c.final_summary();
}
