#![allow(clippy::unwrap_used)]
//! OTLP/HTTP export against a receiver this test starts on 127.0.0.1 (feature `otlp`).

#[cfg(feature = "otlp")]
mod otlp {

    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::time::Duration;

    use strata_telemetry::tracing_setup::{TracingConfig, TracingPipeline};
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn spans_arrive_as_otlp_http_protobuf() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = Vec::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                head.push(line.trim_end().to_owned());
            }
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).unwrap();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
            tx.send((head, body)).unwrap();
        });

        let pipeline =
            TracingPipeline::new(TracingConfig::new("otlp-test").otlp_endpoint(format!("http://{addr}/v1/traces")))
                .unwrap();
        let subscriber = tracing_subscriber::registry().with(strata_telemetry::raw::otel_layer(&pipeline));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("cache.get", cache.name = "users");
            let _e = span.enter();
        });
        pipeline.flush().unwrap();
        let (head, body) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        assert!(head[0].starts_with("POST /v1/traces "), "{head:?}");
        assert!(head.iter().any(|h| h.eq_ignore_ascii_case("content-type: application/x-protobuf")), "{head:?}");
        // The protobuf payload carries the span name and service name as strings.
        let find = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"cache.get") && find(b"otlp-test") && find(b"users"), "{} bytes", body.len());
        let _ = pipeline.shutdown();
    }
}
