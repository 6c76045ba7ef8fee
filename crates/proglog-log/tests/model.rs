//! Model-based tests: random sequences of operations against the log and against
//! a plain `Vec` model, with rolls forced by tiny segments and reopens (clean and
//! unclean) in between. After every step the whole log must equal the model.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use proglog_log::{Config, Error, Log};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<u8>),
    AppendBatch(Vec<Vec<u8>>),
    Read(u64),
    ReadBatch(u64, u64),
    TruncateBefore(u64),
    TruncateFrom(u64),
    Flush,
    Sync,
    Reopen { clean: bool },
    Reset(u64),
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => value().prop_map(Op::Append),
        2 => prop::collection::vec(value(), 0..6).prop_map(Op::AppendBatch),
        2 => (0u64..64).prop_map(Op::Read),
        1 => (0u64..64, 1u64..200).prop_map(|(offset, bytes)| Op::ReadBatch(offset, bytes)),
        1 => (0u64..64).prop_map(Op::TruncateBefore),
        1 => (0u64..64).prop_map(Op::TruncateFrom),
        1 => Just(Op::Flush),
        1 => Just(Op::Sync),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        1 => (0u64..64).prop_map(Op::Reset),
    ]
}

/// The model: values at offsets `lowest..lowest + values.len()`.
#[derive(Debug, Default)]
struct Model {
    lowest: u64,
    values: Vec<Vec<u8>>,
}

impl Model {
    fn next(&self) -> u64 {
        self.lowest + self.values.len() as u64
    }

    fn get(&self, offset: u64) -> Option<&Vec<u8>> {
        offset.checked_sub(self.lowest).and_then(|i| self.values.get(i as usize))
    }
}

fn config() -> Config {
    Config { max_store_bytes: 96, max_index_bytes: 4 * 8, write_buffer_bytes: 64, ..Config::default() }
}

fn check_whole_log(log: &Log, model: &Model) {
    assert_eq!(log.lowest_offset(), model.lowest);
    assert_eq!(log.next_offset(), model.next());
    assert_eq!(log.highest_offset(), model.next().checked_sub(1).filter(|&h| h >= model.lowest));
    let records: Vec<_> = log.iter(model.lowest).map(|record| record.unwrap()).collect();
    assert_eq!(records.len(), model.values.len());
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.offset, model.lowest + i as u64);
        assert_eq!(record.value.as_ref(), model.values[i].as_slice());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn log_behaves_like_a_vec(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Some(Log::open(dir.path(), config()).unwrap());
        let mut model = Model::default();
        for op in ops {
            let current = log.as_ref().unwrap();
            match op {
                Op::Append(value) => {
                    prop_assert_eq!(current.append(&value).unwrap(), model.next());
                    model.values.push(value);
                }
                Op::AppendBatch(values) => {
                    let range = current.append_batch(&values).unwrap();
                    prop_assert_eq!(range, model.next()..model.next() + values.len() as u64);
                    model.values.extend(values);
                }
                Op::Read(offset) => match (current.read(offset), model.get(offset)) {
                    (Ok(record), Some(value)) => prop_assert_eq!(record.value.as_ref(), value.as_slice()),
                    (Err(Error::OffsetOutOfRange { .. }), None) => {}
                    (got, want) => prop_assert!(false, "read {offset}: got {got:?}, want {want:?}"),
                },
                Op::ReadBatch(offset, max_bytes) => match (current.read_batch(offset, max_bytes), model.get(offset)) {
                    (Ok(records), Some(_)) => {
                        prop_assert!(!records.is_empty());
                        for (i, record) in records.iter().enumerate() {
                            prop_assert_eq!(record.offset, offset + i as u64);
                            prop_assert_eq!(Some(&record.value.to_vec()), model.get(record.offset));
                        }
                    }
                    (Err(Error::OffsetOutOfRange { .. }), None) => {}
                    (got, want) => prop_assert!(false, "read batch {offset}: got {got:?}, want {want:?}"),
                },
                Op::TruncateBefore(offset) => {
                    current.truncate_before(offset).unwrap();
                    let lowest = current.lowest_offset();
                    prop_assert!(lowest >= model.lowest);
                    prop_assert!(lowest <= offset.max(model.lowest), "removed too much");
                    model.values.drain(..(lowest - model.lowest) as usize);
                    model.lowest = lowest;
                }
                Op::TruncateFrom(offset) => {
                    let result = current.truncate_from(offset);
                    if (model.lowest..=model.next()).contains(&offset) {
                        result.unwrap();
                        model.values.truncate((offset - model.lowest) as usize);
                    } else {
                        let is_out_of_range = matches!(result, Err(Error::OffsetOutOfRange { .. }));
                        prop_assert!(is_out_of_range);
                    }
                }
                Op::Flush => current.flush().unwrap(),
                Op::Sync => current.sync().unwrap(),
                Op::Reopen { clean } => {
                    let old = log.take().unwrap();
                    if clean { old.close().unwrap() } else { drop(old) }
                    let reopened = Log::open(dir.path(), config()).unwrap();
                    prop_assert_eq!(reopened.recovery().clean_shutdown, clean);
                    prop_assert_eq!(reopened.recovery().truncated_bytes, 0);
                    log = Some(reopened);
                }
                Op::Reset(next) => {
                    current.reset(next).unwrap();
                    model = Model { lowest: next, values: Vec::new() };
                }
            }
            check_whole_log(log.as_ref().unwrap(), &model);
        }
    }
}
