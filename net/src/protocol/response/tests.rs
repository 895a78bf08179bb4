use super::*;
use crate::protocol::request::ClusterFormat;

fn round_trip_with(response: Response, context: &ResponseContext) {
    let mut out = Vec::new();
    response.encode(&mut out, context.version);
    assert_eq!(out.len() % 8, 0);
    assert_eq!(Response::decode_message(&out, context).unwrap(), response);
}

fn round_trip(response: Response) {
    round_trip_with(response, &ResponseContext::default());
}

#[test]
fn test_every_response_round_trips() {
    round_trip(Response::failure(10250, "not leader"));
    round_trip(Response::Server {
        id: 0x2dc1_7185_8c31_55be,
        address: "127.0.0.1:9001".into(),
    });
    round_trip(Response::Welcome {
        heartbeat_timeout_ms: 15000,
    });
    round_trip(Response::Servers {
        nodes: vec![
            NodeInfo {
                id: 1,
                address: "127.0.0.1:9001".into(),
                role: Some(Role::Voter),
            },
            NodeInfo {
                id: 2,
                address: "127.0.0.1:9002".into(),
                role: Some(Role::Spare),
            },
        ],
    });
    round_trip(Response::Db { id: 0 });
    round_trip(Response::Stmt {
        db_id: 0,
        stmt_id: 1,
        params_count: 4,
        tail_offset: None,
    });
    round_trip(Response::Stmt {
        db_id: 0,
        stmt_id: 1,
        params_count: 4,
        tail_offset: Some(9),
    });
    round_trip(Response::Result {
        last_insert_id: 3,
        rows_affected: 1,
    });
    round_trip(Response::Rows(Rows {
        columns: vec!["a".into(), "b".into()],
        rows: vec![
            vec![Value::Integer(1), Value::UnixTime(1_700_000_000)],
            vec![Value::Null, Value::Boolean(false)],
        ],
        end: RowsEnd::Done,
    }));
    round_trip(Response::Empty);
    round_trip(Response::Files(vec![
        File {
            name: "db".into(),
            data: vec![7; 4096],
        },
        File {
            name: "db-wal".into(),
            data: Vec::new(),
        },
    ]));
    round_trip(Response::MetadataV1(NodeMetadata {
        failure_domain: 1,
        weight: 2,
        id: 3,
        cluster_id: u64::MAX,
        term: 5,
        state: 3,
        leader_id: 3,
        commit_index: 7,
        applied_index: 6,
        last_index: 8,
        corrupt_databases: 1,
    }));
    round_trip(Response::Metadata {
        failure_domain: 0,
        weight: 3,
    });
    round_trip(Response::Checksums(Checksums {
        index: 40,
        node_id: 2,
        applied_index: 41,
        state: VerifyState::Done,
        databases: vec![
            DatabaseChecksum {
                name: "app".into(),
                pages: 12,
                checksum: 0xdead_beef,
            },
            DatabaseChecksum {
                name: "other".into(),
                pages: 1,
                checksum: 7,
            },
        ],
    }));
    round_trip(Response::Checksums(Checksums {
        index: 40,
        node_id: 2,
        applied_index: 3,
        state: VerifyState::Pending,
        databases: vec![],
    }));
    round_trip(Response::Status(Box::new(NodeStatus {
        metadata: NodeMetadata {
            id: 3,
            term: 9,
            ..NodeMetadata::default()
        },
        last_contact_ms: 12,
        disk_free_bytes: 1 << 40,
        databases: 2,
        rss_bytes: 9 << 20,
        repairing: true,
        version: "0.1.0".into(),
    })));
}

#[test]
fn test_checksums_refuse_an_unknown_state_and_a_huge_count() {
    let mut out = Vec::new();
    Response::Checksums(Checksums {
        index: 1,
        node_id: 1,
        applied_index: 1,
        state: VerifyState::Done,
        databases: vec![],
    })
    .encode(&mut out, ProtocolVersion::V1);
    let mut bad_state = out.clone();
    bad_state[8 + 24] = 9;
    assert!(Response::decode_message(&bad_state, &ResponseContext::default()).is_err());
    let mut huge = out;
    huge[8 + 32..8 + 40].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(Response::decode_message(&huge, &ResponseContext::default()).is_err());
}

#[test]
fn test_context_selects_legacy_server_and_cluster_format0() {
    // The legacy version word makes SERVER carry only the address; format 0 drops the role.
    let legacy = ResponseContext {
        version: ProtocolVersion::Legacy,
        cluster_format: ClusterFormat::V0,
    };
    let server = Response::Server {
        id: 0,
        address: "127.0.0.1:9001".into(),
    };
    let mut out = Vec::new();
    server.encode(&mut out, ProtocolVersion::Legacy);
    assert_eq!(out.len(), 8 + 16);
    round_trip_with(server, &legacy);
    round_trip_with(
        Response::Servers {
            nodes: vec![NodeInfo {
                id: 1,
                address: "a".into(),
                role: None,
            }],
        },
        &legacy,
    );
}

#[test]
fn test_rows_with_zero_columns_is_just_the_marker() {
    // Newer dqlite answers a statement without result columns with ncols = 0 and DONE.
    let rows = Response::Rows(Rows {
        columns: Vec::new(),
        rows: Vec::new(),
        end: RowsEnd::Done,
    });
    let mut out = Vec::new();
    rows.encode(&mut out, ProtocolVersion::V1);
    assert_eq!(out.len(), 8 + 16);
    round_trip(rows);
}

#[test]
fn test_rows_invalid_marker_and_missing_marker_are_errors() {
    let mut body = Vec::new();
    put_u64(&mut body, 1);
    put_text(&mut body, "x");
    put_u64(&mut body, 0x0000_0000_ffff_ffff);
    let header = Header {
        words: (body.len() / 8) as u32,
        kind: 7,
        schema: 0,
        extra: 0,
    };
    let context = ResponseContext::default();
    assert_eq!(
        Response::decode(header, &body, &context),
        Err(DecodeError::InvalidRowsMarker(0x0000_0000_ffff_ffff))
    );
    body.truncate(16);
    assert!(matches!(
        Response::decode(header, &body, &context),
        Err(DecodeError::Truncated {
            field: "rows end marker",
            ..
        })
    ));
}

#[test]
fn test_rows_batches_stream_10000_rows_in_bounded_memory() {
    // A server producing 10,000 rows starts a batch, fills it until it is full, finishes it
    // with PART and sends it; the buffer is then reused for the next batch. No batch may exceed
    // the target by more than one row, every batch repeats the column names, and only the last
    // one ends with DONE.
    let columns = ["id", "name"];
    let text = "x".repeat(20);
    let mut out = Vec::new();
    let mut received: Vec<Vec<Value>> = Vec::new();
    let mut next = 0i64;
    let mut batches = 0;
    let mut buffer_capacity_max = 0;
    loop {
        out.clear();
        let mut batch = RowsBatch::begin(&mut out, &columns, ROWS_BATCH_BYTES_TARGET);
        while next < 10_000 && !batch.is_full() {
            batch.push_row(&[ValueRef::Integer(next), ValueRef::Text(&text)]);
            next += 1;
        }
        let end = if next == 10_000 {
            RowsEnd::Done
        } else {
            RowsEnd::Part
        };
        let bytes = batch.finish(end);
        // One row is 8 (types) + 8 (integer) + 24 (text) = 40 bytes, the marker 8.
        assert!(bytes <= ROWS_BATCH_BYTES_TARGET + 40 + 8, "{bytes}");
        buffer_capacity_max = buffer_capacity_max.max(out.capacity());
        batches += 1;
        let Response::Rows(rows) =
            Response::decode_message(&out, &ResponseContext::default()).unwrap()
        else {
            panic!("not ROWS");
        };
        assert_eq!(rows.columns, columns);
        assert_eq!(rows.end, end);
        received.extend(rows.rows);
        if end == RowsEnd::Done {
            break;
        }
    }
    assert_eq!(received.len(), 10_000);
    assert!(batches > 90, "{batches}");
    assert!(buffer_capacity_max <= 2 * ROWS_BATCH_BYTES_TARGET);
    for (i, row) in received.iter().enumerate() {
        assert_eq!(row[0], Value::Integer(i as i64));
    }
}

#[test]
fn test_rows_batch_dropped_unfinished_leaves_the_buffer_as_it_was() {
    let mut out = vec![1, 2, 3];
    {
        let mut batch = RowsBatch::begin(&mut out, &["a"], ROWS_BATCH_BYTES_TARGET);
        batch.push_row(&[ValueRef::Null]);
    }
    assert_eq!(out, vec![1, 2, 3]);
}

#[test]
fn test_files_and_servers_counts_are_checked_before_allocating() {
    let context = ResponseContext::default();
    for kind in [3u8, 9] {
        let mut body = Vec::new();
        put_u64(&mut body, u64::MAX / 2);
        let header = Header {
            words: 1,
            kind,
            schema: 0,
            extra: 0,
        };
        assert!(matches!(
            Response::decode(header, &body, &context),
            Err(DecodeError::CountTooLarge { .. })
        ));
    }
}
