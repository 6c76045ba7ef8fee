//! Idle followers cost nothing: measured as this process's CPU time, so this test
//! lives alone in its own test binary (other tests would add their CPU time).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::time::Duration;

use common::{TestServer, plaintext_client};
use proglog_api::v1::{ConsumeRequest, ProduceRequest, Record};
use tokio_stream::StreamExt;

fn produce(value: &str) -> ProduceRequest {
    ProduceRequest {
        record: Some(Record { value: value.to_owned().into(), ..Default::default() }),
        ..Default::default()
    }
}

fn process_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_consume_streams_at_the_tail_cost_almost_no_cpu() {
    let server = TestServer::plaintext().await;
    let mut client = plaintext_client(server.addr).await;
    client.produce(produce("only")).await.unwrap();
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut stream = client
            .consume_stream(ConsumeRequest { offset: 0, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        stream.next().await.unwrap().unwrap();
        streams.push(stream); // now waiting at the tail
    }
    let before = process_cpu_seconds();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = process_cpu_seconds() - before;
    // A busy loop (the book's) would burn ~2 s per core here.
    assert!(used < 0.2, "50 idle streams used {used:.3} s of CPU in 2 s");
    // They still work.
    client.produce(produce("wake up")).await.unwrap();
    for stream in &mut streams {
        assert_eq!(stream.next().await.unwrap().unwrap().record.unwrap().value, "wake up");
    }
    drop(streams);
    server.stop().await;
}
