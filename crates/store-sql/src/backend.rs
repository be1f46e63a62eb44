//! What the two SQL dialects share: the write plan (compare-and-swap decisions), rows to
//! events, key ranges, and the trait each dialect implements.

use rk3s_store::{Event, EventKind, KeyValue, ListResult, Revision, StoreError};

/// One write request.
#[derive(Debug)]
pub(crate) enum Write {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
}

impl Write {
    pub(crate) fn key(&self) -> &str {
        match self {
            Write::Create { key, .. } | Write::Update { key, .. } | Write::Delete { key, .. } => {
                key
            }
        }
    }
}

/// The newest row of a key, as the writer reads it.
pub(crate) struct LatestRow {
    pub id: Revision,
    pub deleted: bool,
    pub create_revision: Revision,
    pub value: Vec<u8>,
}

/// A row to insert, and the entry the write returns.
pub(crate) struct NewRow {
    pub id: Revision,
    pub created: bool,
    pub deleted: bool,
    pub create_revision: Revision,
    /// The id of the key's previous row (its tombstone for a re-creation), 0 if none.
    /// `(name, prev_revision)` is unique: two writers can never both extend one row.
    pub prev_revision: Revision,
    /// The stored value: the new value, or for a tombstone the last value.
    pub value: Vec<u8>,
    pub kv: KeyValue,
}

/// Decides `write` against the key's newest row; `revision` is the revision it gets.
pub(crate) fn plan(
    write: &Write,
    latest: Option<&LatestRow>,
    revision: Revision,
) -> Result<NewRow, StoreError> {
    let key = write.key().to_string();
    let live = latest.filter(|row| !row.deleted);
    match write {
        Write::Create { value, .. } => {
            if live.is_some() {
                return Err(StoreError::AlreadyExists(key));
            }
            Ok(NewRow {
                id: revision,
                created: true,
                deleted: false,
                create_revision: revision,
                prev_revision: latest.map_or(0, |row| row.id),
                value: value.clone(),
                kv: KeyValue {
                    key,
                    value: value.clone(),
                    create_revision: revision,
                    mod_revision: revision,
                },
            })
        }
        Write::Update {
            value, expected, ..
        } => {
            let Some(row) = live else {
                return Err(StoreError::NotFound(key));
            };
            if row.id != *expected {
                return Err(StoreError::Conflict {
                    key,
                    expected: *expected,
                    current: row.id,
                });
            }
            Ok(NewRow {
                id: revision,
                created: false,
                deleted: false,
                create_revision: row.create_revision,
                prev_revision: row.id,
                value: value.clone(),
                kv: KeyValue {
                    key,
                    value: value.clone(),
                    create_revision: row.create_revision,
                    mod_revision: revision,
                },
            })
        }
        Write::Delete { expected, .. } => {
            let Some(row) = live else {
                return Err(StoreError::NotFound(key));
            };
            if let Some(expected) = expected {
                if row.id != *expected {
                    return Err(StoreError::Conflict {
                        key,
                        expected: *expected,
                        current: row.id,
                    });
                }
            }
            Ok(NewRow {
                id: revision,
                created: false,
                deleted: true,
                create_revision: row.create_revision,
                prev_revision: row.id,
                value: row.value.clone(),
                kv: KeyValue {
                    key,
                    value: row.value.clone(),
                    create_revision: row.create_revision,
                    mod_revision: revision,
                },
            })
        }
    }
}

/// Plans a batch of writes in order, numbering successful ones from `first_revision`.
/// `latest` holds the newest row of each key the batch touches (read under the revision
/// lock) and is updated as the plan goes, so later writes in the batch see earlier ones.
/// Returns each write's outcome and the rows to insert, in revision order.
pub(crate) fn plan_batch(
    writes: &[Write],
    latest: &mut std::collections::HashMap<String, LatestRow>,
    first_revision: Revision,
) -> (Vec<Result<KeyValue, StoreError>>, Vec<NewRow>) {
    let mut revision = first_revision;
    let mut outcomes = Vec::with_capacity(writes.len());
    let mut rows = Vec::with_capacity(writes.len());
    for write in writes {
        match plan(write, latest.get(write.key()), revision) {
            Ok(new) => {
                latest.insert(
                    write.key().to_string(),
                    LatestRow {
                        id: new.id,
                        deleted: new.deleted,
                        create_revision: new.create_revision,
                        value: new.value.clone(),
                    },
                );
                revision += 1;
                outcomes.push(Ok(new.kv.clone()));
                rows.push(new);
            }
            Err(e) => outcomes.push(Err(e)),
        }
    }
    (outcomes, rows)
}

/// One row of the log as read for a watch, with the previous row's value for updates.
pub(crate) struct LogRow {
    pub id: Revision,
    pub name: Vec<u8>,
    pub created: bool,
    pub deleted: bool,
    pub create_revision: Revision,
    pub prev_revision: Revision,
    pub value: Vec<u8>,
    pub prev_value: Option<Vec<u8>>,
}

pub(crate) fn key_from_bytes(bytes: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|_| StoreError::Backend("stored key is not UTF-8".into()))
}

impl LogRow {
    pub(crate) fn into_event(self) -> Result<Event, StoreError> {
        let key = key_from_bytes(self.name)?;
        if self.deleted {
            let prev = KeyValue {
                key: key.clone(),
                value: self.value.clone(),
                create_revision: self.create_revision,
                mod_revision: self.prev_revision,
            };
            return Ok(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    mod_revision: self.id,
                    ..prev.clone()
                },
                prev: Some(prev),
            });
        }
        let prev = match self.prev_value {
            Some(value) if !self.created && self.prev_revision > 0 => Some(KeyValue {
                key: key.clone(),
                value,
                create_revision: self.create_revision,
                mod_revision: self.prev_revision,
            }),
            _ => None,
        };
        Ok(Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key,
                value: self.value,
                create_revision: self.create_revision,
                mod_revision: self.id,
            },
            prev,
        })
    }
}

/// The `[lower, upper)` byte range of keys.
#[derive(Clone, Debug)]
pub(crate) struct KeyRange {
    pub lower: Vec<u8>,
    pub upper: Vec<u8>,
}

impl KeyRange {
    /// Keys starting with `prefix`. Keys are UTF-8, which never contains the byte 0xFF,
    /// so `[0xFF]` bounds every key when the prefix has no successor.
    pub(crate) fn prefix(prefix: &str) -> KeyRange {
        let lower = prefix.as_bytes().to_vec();
        let mut upper = lower.clone();
        loop {
            match upper.pop() {
                Some(last) if last < u8::MAX => {
                    upper.push(last + 1);
                    break;
                }
                Some(_) => continue,
                None => {
                    upper = vec![u8::MAX];
                    break;
                }
            }
        }
        KeyRange { lower, upper }
    }

    /// Every key.
    pub(crate) fn all() -> KeyRange {
        KeyRange::prefix("")
    }

    /// Narrows the range to keys strictly greater than `key`.
    pub(crate) fn after(mut self, key: &str) -> KeyRange {
        // The smallest key strictly greater than `key` is `key + "\0"`.
        let mut successor = key.as_bytes().to_vec();
        successor.push(0);
        if successor > self.lower {
            self.lower = successor;
        }
        self
    }
}

/// A page of changes.
pub(crate) struct Changes {
    /// Events in revision order.
    pub events: Vec<Event>,
    /// Every change with a revision <= `through` in the range has been returned (by this
    /// or an earlier page).
    pub through: Revision,
}

/// The revision a list reads at, checked against the current and compacted revisions.
pub(crate) fn read_revision(
    requested: Option<Revision>,
    current: Revision,
    compacted: Revision,
) -> Result<Revision, StoreError> {
    match requested {
        Some(requested) if requested > 0 => {
            if requested < compacted {
                Err(StoreError::Compacted {
                    requested,
                    compacted,
                })
            } else if requested > current {
                Err(StoreError::FutureRevision { requested, current })
            } else {
                Ok(requested)
            }
        }
        _ => Ok(current),
    }
}

/// The end of a page of changes: a full page ends at its last event, a short one at the
/// bound the query was limited to.
pub(crate) fn page_end(
    events: &[Event],
    limit: usize,
    after: Revision,
    bound: Revision,
) -> Revision {
    match events.last() {
        Some(last) if events.len() >= limit => last.revision(),
        _ => bound.max(after),
    }
}

/// A write transaction that failed.
#[derive(Debug)]
pub(crate) struct ApplyError {
    pub error: StoreError,
    /// The commit itself failed: the writes may or may not have been applied.
    pub at_commit: bool,
}

impl From<StoreError> for ApplyError {
    fn from(error: StoreError) -> ApplyError {
        ApplyError {
            error,
            at_commit: false,
        }
    }
}

/// One SQL dialect's implementation of the log operations.
#[async_trait::async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    /// "postgres" or "mysql".
    fn kind(&self) -> &'static str;

    /// Applies `writes` in one transaction that holds the revision counter's row lock:
    /// each gets the next revision if it succeeds. The outer error fails them all.
    async fn apply(
        &self,
        writes: &[Write],
    ) -> Result<Vec<Result<KeyValue, StoreError>>, ApplyError>;

    /// The newest live row of `key`.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Keys in `range` as of `revision` (see [`read_revision`]), at most `limit`.
    async fn list(
        &self,
        range: &KeyRange,
        revision: Option<Revision>,
        limit: Option<usize>,
    ) -> Result<ListResult, StoreError>;

    /// Up to `limit` changes in `range` with `after < revision <= upto` (and <= current),
    /// read in one snapshot; `Compacted` if `after` is below the compacted revision.
    async fn changes(
        &self,
        range: &KeyRange,
        after: Revision,
        upto: Option<Revision>,
        limit: usize,
    ) -> Result<Changes, StoreError>;

    /// The current and compacted revisions.
    async fn revisions(&self) -> Result<(Revision, Revision), StoreError>;

    /// Records `revision` as compacted. `FutureRevision` above the current revision;
    /// `None` if already compacted that far, else the smallest row id in the log.
    async fn mark_compacted(&self, revision: Revision) -> Result<Option<Revision>, StoreError>;

    /// How many rows the log holds (for tests).
    async fn log_len(&self) -> Result<i64, StoreError>;

    /// Deletes rows with `from < id <= to` that are tombstones or superseded by a row at
    /// or below `target`. Returns how many rows went.
    async fn compact_range(
        &self,
        from: Revision,
        to: Revision,
        target: Revision,
    ) -> Result<u64, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: Revision, deleted: bool, create_revision: Revision) -> LatestRow {
        LatestRow {
            id,
            deleted,
            create_revision,
            value: b"old".to_vec(),
        }
    }

    #[test]
    fn plan_create_after_delete_points_at_tombstone() {
        let write = Write::Create {
            key: "/a".into(),
            value: b"v".to_vec(),
        };
        let new = plan(&write, Some(&row(7, true, 3)), 9).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((new.prev_revision, new.create_revision), (7, 9));
        assert!(new.created);
        assert!(matches!(
            plan(&write, Some(&row(7, false, 3)), 9),
            Err(StoreError::AlreadyExists(_))
        ));
    }

    #[test]
    fn plan_update_and_delete_check_revision() {
        let update = Write::Update {
            key: "/a".into(),
            value: b"new".to_vec(),
            expected: 6,
        };
        assert!(matches!(
            plan(&update, Some(&row(7, false, 3)), 9),
            Err(StoreError::Conflict {
                expected: 6,
                current: 7,
                ..
            })
        ));
        assert!(matches!(
            plan(&update, Some(&row(6, true, 3)), 9),
            Err(StoreError::NotFound(_))
        ));
        let ok = plan(&update, Some(&row(6, false, 3)), 9).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (ok.prev_revision, ok.create_revision, ok.kv.mod_revision),
            (6, 3, 9)
        );
        let delete = Write::Delete {
            key: "/a".into(),
            expected: None,
        };
        let gone = plan(&delete, Some(&row(6, false, 3)), 9).unwrap_or_else(|e| panic!("{e}"));
        assert!(gone.deleted);
        assert_eq!(gone.value, b"old");
        assert!(matches!(
            plan(&delete, None, 9),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn ranges() {
        let r = KeyRange::prefix("/a/");
        assert_eq!(
            (r.lower.as_slice(), r.upper.as_slice()),
            (&b"/a/"[..], &b"/a0"[..])
        );
        assert_eq!(KeyRange::all().upper, vec![0xFF]);
        let r = KeyRange::prefix("/a/").after("/a/b");
        assert_eq!(r.lower, b"/a/b\0");
        let r = KeyRange::prefix("/b/").after("/a/z");
        assert_eq!(r.lower, b"/b/");
    }

    #[test]
    fn revisions_for_reads() {
        assert_eq!(read_revision(None, 10, 4).ok(), Some(10));
        assert_eq!(read_revision(Some(0), 10, 4).ok(), Some(10));
        assert_eq!(read_revision(Some(4), 10, 4).ok(), Some(4));
        assert!(matches!(
            read_revision(Some(3), 10, 4),
            Err(StoreError::Compacted { .. })
        ));
        assert!(matches!(
            read_revision(Some(11), 10, 4),
            Err(StoreError::FutureRevision { .. })
        ));
    }

    #[test]
    fn log_rows_to_events() {
        let update = LogRow {
            id: 5,
            name: b"/k".to_vec(),
            created: false,
            deleted: false,
            create_revision: 2,
            prev_revision: 4,
            value: b"new".to_vec(),
            prev_value: Some(b"old".to_vec()),
        };
        let event = update.into_event().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(event.kind, EventKind::Put);
        let prev = event.prev.unwrap_or_else(|| panic!("no prev"));
        assert_eq!((prev.mod_revision, prev.value.as_slice()), (4, &b"old"[..]));
        let recreate = LogRow {
            id: 9,
            name: b"/k".to_vec(),
            created: true,
            deleted: false,
            create_revision: 9,
            prev_revision: 6,
            value: b"v".to_vec(),
            prev_value: None,
        };
        assert!(recreate
            .into_event()
            .map(|e| e.prev)
            .ok()
            .flatten()
            .is_none());
        let tomb = LogRow {
            id: 6,
            name: b"/k".to_vec(),
            created: false,
            deleted: true,
            create_revision: 2,
            prev_revision: 5,
            value: b"new".to_vec(),
            prev_value: None,
        };
        let event = tomb.into_event().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(event.kind, EventKind::Delete);
        assert_eq!(event.kv.mod_revision, 6);
        assert_eq!(event.prev.map(|p| p.mod_revision), Some(5));
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    #[test]
    fn batch_writes_see_earlier_writes_of_the_batch() {
        let writes = [
            Write::Create {
                key: "/k".into(),
                value: b"1".to_vec(),
            },
            Write::Create {
                key: "/k".into(),
                value: b"dup".to_vec(),
            },
            Write::Update {
                key: "/k".into(),
                value: b"2".to_vec(),
                expected: 10,
            },
            Write::Update {
                key: "/k".into(),
                value: b"stale".to_vec(),
                expected: 10,
            },
            Write::Delete {
                key: "/k".into(),
                expected: Some(11),
            },
            Write::Create {
                key: "/k".into(),
                value: b"3".to_vec(),
            },
        ];
        let mut latest = std::collections::HashMap::new();
        let (outcomes, rows) = plan_batch(&writes, &mut latest, 10);
        let revisions: Vec<Option<Revision>> = outcomes
            .iter()
            .map(|o| o.as_ref().ok().map(|kv| kv.mod_revision))
            .collect();
        assert_eq!(
            revisions,
            [Some(10), None, Some(11), None, Some(12), Some(13)]
        );
        assert!(matches!(outcomes[1], Err(StoreError::AlreadyExists(_))));
        assert!(matches!(
            outcomes[3],
            Err(StoreError::Conflict { current: 11, .. })
        ));
        let prevs: Vec<Revision> = rows.iter().map(|r| r.prev_revision).collect();
        assert_eq!(prevs, [0, 10, 11, 12]);
        assert_eq!(latest.get("/k").map(|r| r.id), Some(13));
    }
}
