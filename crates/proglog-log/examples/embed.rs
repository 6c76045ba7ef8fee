//! Embedding `proglog-log`: open a log, append, make it durable, read it back.
//!
//! ```text
//! cargo run --release --example embed -- [DIR] [VALUE...]
//! ```
//! Run it twice with the same DIR: the second run finds the first run's records.

use proglog_log::{Config, Log};

fn main() -> Result<(), proglog_log::Error> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "proglog-example".to_string());
    let mut values: Vec<String> = args.collect();
    if values.is_empty() {
        values = vec!["hello".into(), "embedded".into(), "world".into()];
    }

    let log = Log::open(&dir, Config::default())?;
    let recovery = log.recovery();
    println!(
        "opened {dir}: offsets {}..{} (clean shutdown: {}, bytes cut from a torn tail: {})",
        log.lowest_offset(),
        log.next_offset(),
        recovery.clean_shutdown,
        recovery.truncated_bytes
    );

    let offsets = log.append_batch(&values)?;
    log.sync()?; // acknowledged records are durable from here on
    println!("appended offsets {}..{}", offsets.start, offsets.end);

    for record in log.iter(log.lowest_offset()) {
        let record = record?;
        println!("{:>6}  {}", record.offset, String::from_utf8_lossy(&record.value));
    }
    log.close()
}
