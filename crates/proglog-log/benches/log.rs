//! Storage benchmark: `proglog_log::Log` against `commitlog` 0.2 (and, for durable
//! group commit, against a plain `write + fdatasync` loop).
//!
//! ```text
//! cargo bench -p proglog-log                # 3 repetitions, ~400 MB per append run
//! cargo bench -p proglog-log -- --quick     # 1 repetition, 10x fewer records (smoke check)
//! ```
//!
//! Environment: `PROGLOG_BENCH_QUICK=1` (same as `--quick`), `PROGLOG_BENCH_RECORDS`
//! (records per append run at 1 KiB values, default 400000; smaller values write
//! the same payload bytes), `PROGLOG_BENCH_DIR` (where the temporary logs go,
//! default the system temp dir; it must not be tmpfs for the fsync figures to mean
//! anything).
//!
//! Progress goes to stderr; stdout gets a Markdown table for BENCHMARKS.md. Run
//! without `--bench` (as `cargo test --all-targets` does) it only does a tiny smoke
//! run.
//!
//! Both systems get 1 GiB store segments and a 10M-entry index, so no run rolls a
//! segment. Every run uses a fresh temporary directory, deleted afterwards. The
//! workloads, per value size and repetition, alternate between the two systems:
//!
//! 1. `append`: `Log::append` one record at a time, then `flush` (timed), against
//!    `CommitLog::append_msg` one at a time (which issues one write(2) each; no
//!    flush is needed for its data to reach the OS). Durability: none.
//! 2. `append_batch`: 64 records per call against `CommitLog::append` of a
//!    64-message `MessageBuf` (building it is timed too). Durability: none.
//! 3. `seq read`: the log written by (1) read back from offset 0 in 1 MiB batches,
//!    touching every value (both systems verify every checksum).
//! 4. `random read`: 100k uniformly random offsets of that log, one record each.
//! 5. `durable group commit`: 8 threads share one `Log`, each looping `append` then
//!    `sync` (a record counts once its `sync` returned), for a fixed time. The
//!    comparison is one thread doing `write(B) + fdatasync` on a fresh append-only
//!    file, where B holds as many frames as the log put in each fdatasync on average
//!    (`Log::sync_count`): the throughput of back-to-back fdatasyncs of the same
//!    batches, i.e. what a perfect group commit at that batch size would reach.

mod support;
use support::{XorShift, filesystem_of, mb_per_s, rate, spread, stats};

use std::fs::OpenOptions;
use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use commitlog::message::{HEADER_SIZE, MessageBuf, MessageSet};
use commitlog::{CommitLog, LogOptions, ReadLimit};
use proglog_log::{Config, Log};
use tempfile::TempDir;

const VALUE_SIZES: [usize; 2] = [256, 1024];
const SEGMENT_BYTES: u64 = 1 << 30;
const INDEX_ENTRIES: u64 = 10_000_000;
const BATCH: usize = 64;
const READ_CHUNK: u64 = 1 << 20;
const GROUP_THREADS: usize = 8;
/// Framing proglog adds to each value (length + checksum).
const OURS_FRAME_BYTES: usize = 8;
/// Distinct values cycled through by the appenders.
const POOL: usize = 256;

fn main() -> Result<()> {
    let settings = Settings::from_env()?;
    settings.print_header();
    let mut rows = Vec::new();
    let started = Instant::now();
    for size in VALUE_SIZES {
        rows.extend(bench_size(&settings, size)?);
    }
    print_table(&rows);
    println!();
    reopen(&settings)?;
    println!();
    println!("Total wall time {:.0} s.", started.elapsed().as_secs_f64());
    Ok(())
}

/// Reopen time of a log of about `bytes` in default-sized (64 MiB) segments:
/// after a clean close (no scan), and after a crash (the nearly full active
/// segment is scanned, sealed ones are checked at their ends only).
fn reopen(settings: &Settings) -> Result<()> {
    let bytes: u64 = match settings.mode {
        "full" => 1 << 30,
        "quick" => 128 << 20,
        _ => 4 << 20,
    };
    let dir = tempfile::tempdir_in(&settings.base_dir)?;
    let value = vec![0x5au8; 1024];
    let batch = vec![value.as_slice(); 1024];
    let log = Log::open(dir.path(), Config::default())?;
    // Stop just short of a whole number of segments: the active segment is then
    // nearly full, the worst case for the scan after a crash.
    while log.size_bytes() < bytes - (2 << 20) {
        log.append_batch(&batch)?;
    }
    let records = log.next_offset();
    log.close()?;
    let mut clean = Vec::new();
    let mut crashed = Vec::new();
    for _ in 0..settings.reps.max(3) {
        let started = Instant::now();
        let log = Log::open(dir.path(), Config::default())?;
        clean.push(started.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(log.recovery().clean_shutdown && log.next_offset() == records);
        drop(log); // no close: the next open sees a crash
        let started = Instant::now();
        let log = Log::open(dir.path(), Config::default())?;
        crashed.push(started.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(!log.recovery().clean_shutdown && log.next_offset() == records);
        log.close()?;
    }
    let (clean, crashed) = (stats(&clean), stats(&crashed));
    println!("Reopen of a {} MiB log ({records} records of 1 KiB, 64 MiB segments):", bytes >> 20);
    println!();
    println!("| after | reopen time, median [min..max] |");
    println!("|---|---:|");
    println!("| clean close | {:.1} ms [{:.1}..{:.1}] |", clean.0, clean.1, clean.2);
    println!("| crash (kill -9) | {:.1} ms [{:.1}..{:.1}] |", crashed.0, crashed.1, crashed.2);
    Ok(())
}

// ---------------------------------------------------------------- settings

struct Settings {
    mode: &'static str,
    reps: usize,
    records_1k: u64,
    random_reads: usize,
    timed: Duration,
    base_dir: PathBuf,
}

impl Settings {
    fn from_env() -> Result<Self> {
        let support::Invocation { bench, quick } = support::Invocation::from_args();
        let records_1k = match std::env::var("PROGLOG_BENCH_RECORDS") {
            Ok(v) => v.trim().parse().with_context(|| format!("PROGLOG_BENCH_RECORDS={v:?}"))?,
            Err(_) => 400_000,
        };
        let base_dir = match std::env::var_os("PROGLOG_BENCH_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => std::env::temp_dir(),
        };
        std::fs::create_dir_all(&base_dir).with_context(|| format!("creating {}", base_dir.display()))?;
        let settings = if !bench {
            // `cargo test --all-targets` runs benches without `--bench`: just check they work.
            Self {
                mode: "smoke (no --bench)",
                reps: 1,
                records_1k: 2_000,
                random_reads: 1_000,
                timed: Duration::from_millis(100),
                base_dir,
            }
        } else if quick {
            Self {
                mode: "quick",
                reps: 1,
                records_1k: (records_1k / 10).max(1),
                random_reads: 10_000,
                timed: Duration::from_secs(1),
                base_dir,
            }
        } else {
            Self {
                mode: "full",
                reps: 3,
                records_1k: records_1k.max(1),
                random_reads: 100_000,
                timed: Duration::from_secs(3),
                base_dir,
            }
        };
        Ok(settings)
    }

    /// Records per append run: the payload bytes of `records_1k` 1 KiB values.
    fn records(&self, size: usize) -> u64 {
        (self.records_1k * 1024 / size as u64).max(1)
    }

    fn tempdir(&self) -> Result<TempDir> {
        support::tempdir_in(&self.base_dir, "proglog-bench-")
    }

    fn print_header(&self) {
        let fs = filesystem_of(&self.base_dir).unwrap_or_else(|| "unknown".to_string());
        println!("## proglog-log storage benchmark ({} mode)", self.mode);
        println!();
        if self.mode.starts_with("smoke") {
            println!("Smoke run only (possibly a debug build): the figures mean nothing.");
            println!();
        }
        println!(
            "{} repetition(s), interleaved (proglog, peer, proglog, ...); median [min..max]; \
             proglog/peer is the ratio of the medians (range of the per-repetition ratios). \
             MB = 10^6 payload bytes. {} CPUs; logs in `{}` ({fs}). \
             Append runs: {} records at 256 B, {} at 1 KiB; {} random reads; \
             group commit {} threads for {:.1} s per run. Segments: 1 GiB store, 10M-entry \
             index, for both systems.",
            self.reps,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            self.base_dir.display(),
            self.records(256),
            self.records(1024),
            self.random_reads,
            GROUP_THREADS,
            self.timed.as_secs_f64(),
        );
        if fs.starts_with("tmpfs") {
            eprintln!("WARNING: {} is on tmpfs: fdatasync is free there", self.base_dir.display());
        }
        println!();
    }
}

// ---------------------------------------------------------------- helpers

fn value_pool(size: usize) -> Vec<Vec<u8>> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ size as u64);
    (0..POOL).map(|_| (0..size).map(|_| rng.next() as u8).collect()).collect()
}

fn ours_config() -> Config {
    Config {
        max_store_bytes: SEGMENT_BYTES,
        max_index_bytes: INDEX_ENTRIES * 8,
        max_record_bytes: 16 << 20,
        ..Config::default()
    }
}

fn peer_open(dir: &Path) -> Result<CommitLog> {
    let mut options = LogOptions::new(dir);
    options
        .segment_max_bytes(SEGMENT_BYTES as usize)
        .index_max_items(INDEX_ENTRIES as usize)
        .message_max_bytes(16 << 20);
    CommitLog::new(options).context("opening commitlog")
}

/// commitlog's errors display as just "IO Error": keep their details.
fn peer_error(error: impl std::fmt::Debug) -> anyhow::Error {
    anyhow::anyhow!("commitlog: {error:?}")
}

/// Sorts `nanos` and returns (p50, p99) in microseconds.
fn percentiles_us(nanos: &mut [u64]) -> (f64, f64) {
    if nanos.is_empty() {
        return (0.0, 0.0);
    }
    nanos.sort_unstable();
    let at = |q: f64| nanos[((nanos.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
    (at(0.50), at(0.99))
}

fn elapsed_ns(since: Instant) -> u64 {
    since.elapsed().as_nanos() as u64
}

// ---------------------------------------------------------------- workloads

fn ours_append(log: &Log, pool: &[Vec<u8>], n: u64) -> Result<Duration> {
    let start = Instant::now();
    for i in 0..n {
        log.append(&pool[i as usize % POOL])?;
    }
    log.flush()?;
    let elapsed = start.elapsed();
    ensure!(log.next_offset() == n, "proglog appended {} records, not {n}", log.next_offset());
    Ok(elapsed)
}

fn peer_append(log: &mut CommitLog, pool: &[Vec<u8>], n: u64) -> Result<Duration> {
    let start = Instant::now();
    for i in 0..n {
        log.append_msg(pool[i as usize % POOL].as_slice()).map_err(peer_error)?;
    }
    let elapsed = start.elapsed();
    ensure!(log.next_offset() == n, "commitlog appended {} records, not {n}", log.next_offset());
    Ok(elapsed)
}

fn ours_append_batch(log: &Log, pool: &[Vec<u8>], n: u64) -> Result<Duration> {
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let count = BATCH.min((n - done) as usize);
        let from = done as usize % POOL;
        let range = log.append_batch(&pool[from..from + count])?;
        done += range.end - range.start;
    }
    log.flush()?;
    let elapsed = start.elapsed();
    ensure!(log.next_offset() == n, "proglog appended {} records, not {n}", log.next_offset());
    Ok(elapsed)
}

fn peer_append_batch(log: &mut CommitLog, pool: &[Vec<u8>], n: u64) -> Result<Duration> {
    let start = Instant::now();
    let mut buf = MessageBuf::default();
    let mut done = 0;
    while done < n {
        let count = BATCH.min((n - done) as usize);
        let from = done as usize % POOL;
        buf.clear();
        for value in &pool[from..from + count] {
            buf.push(value).map_err(|error| anyhow::anyhow!("MessageBuf::push: {error:?}"))?;
        }
        done += log.append(&mut buf).map_err(peer_error)?.len() as u64;
    }
    let elapsed = start.elapsed();
    ensure!(log.next_offset() == n, "commitlog appended {} records, not {n}", log.next_offset());
    Ok(elapsed)
}

fn ours_seq_read(log: &Log, n: u64, size: usize) -> Result<Duration> {
    let start = Instant::now();
    let (mut offset, mut count, mut bytes, mut sum) = (0u64, 0u64, 0u64, 0u64);
    while offset < n {
        let records = log.read_batch(offset, READ_CHUNK)?;
        for record in &records {
            sum += u64::from(record.value[0]);
            bytes += record.value.len() as u64;
        }
        count += records.len() as u64;
        offset = records.last().context("read_batch returned nothing")?.offset + 1;
    }
    let elapsed = start.elapsed();
    black_box(sum);
    ensure!(count == n && bytes == n * size as u64, "proglog read {count} records / {bytes} bytes");
    Ok(elapsed)
}

fn peer_seq_read(log: &CommitLog, n: u64, size: usize) -> Result<Duration> {
    let start = Instant::now();
    let (mut offset, mut count, mut bytes, mut sum) = (0u64, 0u64, 0u64, 0u64);
    while offset < n {
        let messages = log.read(offset, ReadLimit::max_bytes(READ_CHUNK as usize)).map_err(peer_error)?;
        let mut last = None;
        for message in messages.iter() {
            let payload = message.payload();
            sum += u64::from(payload[0]);
            bytes += payload.len() as u64;
            count += 1;
            last = Some(message.offset());
        }
        offset = last.context("commitlog read returned nothing")? + 1;
    }
    let elapsed = start.elapsed();
    black_box(sum);
    ensure!(count == n && bytes == n * size as u64, "commitlog read {count} records / {bytes} bytes");
    Ok(elapsed)
}

fn random_offsets(n: u64, count: usize) -> Vec<u64> {
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    (0..count).map(|_| rng.next() % n).collect()
}

/// Returns the elapsed time and per-read latencies in ns.
fn ours_random_read(log: &Log, offsets: &[u64], size: usize) -> Result<(Duration, Vec<u64>)> {
    let mut latencies = Vec::with_capacity(offsets.len());
    let mut sum = 0u64;
    let start = Instant::now();
    for &offset in offsets {
        let t = Instant::now();
        let record = log.read(offset)?;
        sum += u64::from(record.value[0]);
        latencies.push(elapsed_ns(t));
        ensure!(record.offset == offset && record.value.len() == size, "proglog read the wrong record");
    }
    let elapsed = start.elapsed();
    black_box(sum);
    Ok((elapsed, latencies))
}

fn peer_random_read(log: &CommitLog, offsets: &[u64], size: usize) -> Result<(Duration, Vec<u64>)> {
    let mut latencies = Vec::with_capacity(offsets.len());
    let mut sum = 0u64;
    // One message is `HEADER_SIZE + size` bytes; commitlog needs one byte more to
    // return the last message of a segment (with exactly that limit it fails with
    // "Message exceeded max byte size"). Only the first message is used anyway.
    let limit = ReadLimit::max_bytes(size + HEADER_SIZE + 1);
    let start = Instant::now();
    for &offset in offsets {
        let t = Instant::now();
        let messages = log.read(offset, limit).map_err(peer_error)?;
        let message = messages.iter().next().context("commitlog read returned nothing")?;
        sum += u64::from(message.payload()[0]);
        latencies.push(elapsed_ns(t));
        ensure!(
            message.offset() == offset && message.payload().len() == size,
            "commitlog read the wrong record"
        );
    }
    let elapsed = start.elapsed();
    black_box(sum);
    Ok((elapsed, latencies))
}

struct GroupRun {
    records: u64,
    elapsed: Duration,
    fsyncs: u64,
    latencies: Vec<u64>,
}

/// `GROUP_THREADS` threads share one log, each looping `append` + `sync` until
/// `duration` has passed.
fn ours_group_commit(dir: &Path, pool: &[Vec<u8>], duration: Duration) -> Result<GroupRun> {
    let log = Log::open(dir, ours_config())?;
    let syncs_before = log.sync_count();
    let barrier = Barrier::new(GROUP_THREADS + 1);
    let deadline = OnceLock::new();
    let (start, results) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..GROUP_THREADS)
            .map(|thread| {
                let (log, barrier, deadline) = (&log, &barrier, &deadline);
                scope.spawn(move || -> Result<Vec<u64>> {
                    barrier.wait();
                    let deadline: Instant = *deadline.get().context("deadline not set")?;
                    let mut latencies = Vec::with_capacity(1 << 14);
                    let mut i = thread;
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        log.append(&pool[i % POOL])?;
                        log.sync()?;
                        latencies.push(elapsed_ns(t));
                        i += GROUP_THREADS;
                    }
                    Ok(latencies)
                })
            })
            .collect();
        let start = Instant::now();
        let _ = deadline.set(start + duration);
        barrier.wait();
        let results: Vec<_> =
            handles.into_iter().map(|handle| handle.join().expect("group commit thread panicked")).collect();
        (start, results)
    });
    let elapsed = start.elapsed();
    let mut latencies = Vec::new();
    for result in results {
        latencies.extend(result?);
    }
    let records = latencies.len() as u64;
    ensure!(log.next_offset() == records, "proglog holds {} records, acked {records}", log.next_offset());
    let fsyncs = log.sync_count() - syncs_before;
    Ok(GroupRun { records, elapsed, fsyncs, latencies })
}

struct PlainRun {
    records: u64,
    fsyncs: u64,
    elapsed: Duration,
    latencies: Vec<u64>,
}

/// One thread: `write` + `fdatasync` of batches of `frame_bytes` frames on a fresh
/// append-only file until `duration` has passed. Batches hold `per_fsync` frames on
/// average (alternating between the neighbouring whole numbers when it is
/// fractional), so the loop writes and syncs exactly what the group commit did.
fn plain_fsync_loop(dir: &Path, frame_bytes: usize, per_fsync: f64, duration: Duration) -> Result<PlainRun> {
    let path = dir.join("plain.data");
    let mut file = OpenOptions::new().create_new(true).append(true).open(&path)?;
    let per_fsync = per_fsync.max(1.0);
    let batch = vec![0xA5u8; (per_fsync.ceil() as usize + 1) * frame_bytes];
    let mut latencies = Vec::with_capacity(1 << 14);
    let mut records = 0u64;
    let start = Instant::now();
    let deadline = start + duration;
    while Instant::now() < deadline {
        let owed = ((latencies.len() + 1) as f64 * per_fsync).round() as u64;
        let count = owed.saturating_sub(records).max(1);
        let t = Instant::now();
        file.write_all(&batch[..count as usize * frame_bytes])?;
        file.sync_data()?;
        latencies.push(elapsed_ns(t));
        records += count;
    }
    Ok(PlainRun { records, fsyncs: latencies.len() as u64, elapsed: start.elapsed(), latencies })
}

// ---------------------------------------------------------------- driver

/// Results of one workload at one value size over all repetitions.
struct Row {
    workload: &'static str,
    size: usize,
    durability: &'static str,
    peer_name: &'static str,
    /// Target for median(ours) / median(peer), if any.
    target: Option<f64>,
    ours: Vec<f64>,
    peer: Vec<f64>,
    /// Extra figures per repetition, summarised by their median in the details column.
    metrics: Vec<(&'static str, Vec<f64>)>,
}

impl Row {
    fn new(
        workload: &'static str,
        size: usize,
        durability: &'static str,
        peer_name: &'static str,
        target: Option<f64>,
    ) -> Self {
        Self { workload, size, durability, peer_name, target, ours: vec![], peer: vec![], metrics: vec![] }
    }

    fn metric(&mut self, name: &'static str, value: f64) {
        match self.metrics.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => self.metrics.push((name, vec![value])),
        }
    }

    fn median_metric(&self, name: &str) -> f64 {
        self.metrics.iter().find(|(n, _)| *n == name).map_or(f64::NAN, |(_, values)| stats(values).0)
    }
}

fn bench_size(settings: &Settings, size: usize) -> Result<Vec<Row>> {
    let pool = value_pool(size);
    let n = settings.records(size);
    let offsets = random_offsets(n, settings.random_reads);
    let none = "none (OS page cache)";
    let reads = "n/a (warm page cache)";
    let mut append = Row::new("append (1 at a time)", size, none, "commitlog append_msg", Some(1.5));
    let mut batch =
        Row::new("append_batch (64/call)", size, none, "commitlog append(MessageBuf of 64)", None);
    let mut seq =
        Row::new("sequential read (1 MiB batches)", size, reads, "commitlog read(1 MiB)", Some(1.0));
    let mut random = Row::new("random read (1 record)", size, reads, "commitlog read(1 message)", None);
    let mut group = Row::new(
        "durable group commit (8 threads append+sync)",
        size,
        "fdatasync before ack (both)",
        "plain write+fdatasync loop, 1 thread, same batches",
        Some(0.7),
    );

    for rep in 1..=settings.reps {
        let tag = format!("[{size} B, rep {rep}/{}]", settings.reps);

        // proglog: append, then read the same log.
        {
            let dir = settings.tempdir()?;
            let log = Log::open(dir.path(), ours_config())?;
            let t = ours_append(&log, &pool, n)?;
            append.ours.push(rate(n, t));
            let t = ours_seq_read(&log, n, size)?;
            seq.ours.push(rate(n, t));
            let (t, mut latencies) = ours_random_read(&log, &offsets, size)?;
            random.ours.push(rate(offsets.len() as u64, t));
            let (p50, p99) = percentiles_us(&mut latencies);
            random.metric("ours p50", p50);
            random.metric("ours p99", p99);
            drop(log);
            dir.close()?;
        }
        // commitlog: the same.
        {
            let dir = settings.tempdir()?;
            let mut log = peer_open(dir.path())?;
            let t = peer_append(&mut log, &pool, n)?;
            append.peer.push(rate(n, t));
            let t = peer_seq_read(&log, n, size)?;
            seq.peer.push(rate(n, t));
            let (t, mut latencies) = peer_random_read(&log, &offsets, size)?;
            random.peer.push(rate(offsets.len() as u64, t));
            let (p50, p99) = percentiles_us(&mut latencies);
            random.metric("peer p50", p50);
            random.metric("peer p99", p99);
            drop(log);
            dir.close()?;
        }
        eprintln!(
            "{tag} append {:.0} vs {:.0} rec/s; seq read {:.0} vs {:.0}; random read {:.0} vs {:.0}",
            append.ours[rep - 1],
            append.peer[rep - 1],
            seq.ours[rep - 1],
            seq.peer[rep - 1],
            random.ours[rep - 1],
            random.peer[rep - 1],
        );

        // append_batch
        {
            let dir = settings.tempdir()?;
            let log = Log::open(dir.path(), ours_config())?;
            batch.ours.push(rate(n, ours_append_batch(&log, &pool, n)?));
            drop(log);
            dir.close()?;
        }
        {
            let dir = settings.tempdir()?;
            let mut log = peer_open(dir.path())?;
            batch.peer.push(rate(n, peer_append_batch(&mut log, &pool, n)?));
            drop(log);
            dir.close()?;
        }
        eprintln!("{tag} append_batch {:.0} vs {:.0} rec/s", batch.ours[rep - 1], batch.peer[rep - 1]);

        // durable group commit, then the plain loop at the batch size it achieved.
        {
            let dir = settings.tempdir()?;
            let mut run = ours_group_commit(dir.path(), &pool, settings.timed)?;
            dir.close()?;
            let per_fsync = run.records as f64 / run.fsyncs.max(1) as f64;
            group.ours.push(rate(run.records, run.elapsed));
            let (ack_p50, ack_p99) = percentiles_us(&mut run.latencies);
            group.metric("records/fsync", per_fsync);
            group.metric("ack p50", ack_p50);
            group.metric("ack p99", ack_p99);
            group.metric("ours fsync/s", rate(run.fsyncs, run.elapsed));

            let dir = settings.tempdir()?;
            let frame_bytes = size + OURS_FRAME_BYTES;
            let mut plain = plain_fsync_loop(dir.path(), frame_bytes, per_fsync, settings.timed)?;
            dir.close()?;
            group.peer.push(rate(plain.records, plain.elapsed));
            let (plain_p50, _) = percentiles_us(&mut plain.latencies);
            group.metric("plain p50", plain_p50);
            group.metric("plain fsync/s", rate(plain.fsyncs, plain.elapsed));
            eprintln!(
                "{tag} group commit {:.0} rec/s ({per_fsync:.2} rec/fsync, {} fsyncs, ack p50 {ack_p50:.0} µs) \
                 vs plain {:.0} rec/s ({} rec in {} fsyncs, p50 {plain_p50:.0} µs)",
                group.ours[rep - 1],
                run.fsyncs,
                group.peer[rep - 1],
                plain.records,
                plain.fsyncs,
            );
        }
    }
    Ok(vec![append, batch, seq, random, group])
}

// ---------------------------------------------------------------- output

fn details(row: &Row) -> String {
    let m = |name| row.median_metric(name);
    if row.workload.starts_with("append (") {
        "proglog buffers 256 KiB and flushes at the end; commitlog does one write(2) per message".to_string()
    } else if row.workload.starts_with("append_batch") {
        "proglog writes each batch to the OS before returning; no target set".to_string()
    } else if row.workload.starts_with("random") {
        format!(
            "latency p50/p99: proglog {:.2}/{:.2} µs, commitlog {:.2}/{:.2} µs",
            m("ours p50"),
            m("ours p99"),
            m("peer p50"),
            m("peer p99")
        )
    } else if row.workload.starts_with("durable") {
        format!(
            "{:.2} records/fsync, {:.0} fsync/s; ack latency p50/p99 {:.2}/{:.2} ms; plain loop \
             (same records per write+fdatasync, ~{:.0} B): {:.0} fsync/s, p50 {:.2} ms",
            m("records/fsync"),
            m("ours fsync/s"),
            m("ack p50") / 1e3,
            m("ack p99") / 1e3,
            m("records/fsync") * (row.size + OURS_FRAME_BYTES) as f64,
            m("plain fsync/s"),
            m("plain p50") / 1e3,
        )
    } else {
        String::new()
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "| workload | value | durability | proglog rec/s | proglog MB/s | compared with | \
         peer rec/s | peer MB/s | proglog/peer | target | details |"
    );
    println!("|---|---:|---|---:|---:|---|---:|---:|---:|---|---|");
    for row in rows {
        let ratio = stats(&row.ours).0 / stats(&row.peer).0;
        // Each repetition ran both sides back to back: their ratios show the noise.
        let paired: Vec<f64> = row.ours.iter().zip(&row.peer).map(|(ours, peer)| ours / peer).collect();
        let (_, low, high) = stats(&paired);
        let ratio_text = if paired.len() > 1 {
            format!("{ratio:.2}× ({low:.2}–{high:.2})")
        } else {
            format!("{ratio:.2}×")
        };
        let verdict = match row.target {
            Some(target) if ratio >= target => format!("≥ {target}×: pass"),
            Some(target) => format!("≥ {target}×: **FAIL**"),
            None => "–".to_string(),
        };
        let size =
            if row.size >= 1024 { format!("{} KiB", row.size / 1024) } else { format!("{} B", row.size) };
        println!(
            "| {} | {size} | {} | {} | {} | {} | {} | {} | {ratio_text} | {verdict} | {} |",
            row.workload,
            row.durability,
            spread(&row.ours),
            mb_per_s(&row.ours, row.size),
            row.peer_name,
            spread(&row.peer),
            mb_per_s(&row.peer, row.size),
            details(row),
        );
    }
}
