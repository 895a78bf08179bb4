//! The cluster commands against a real two-node cluster (dqlite-demo: the second node joins as
//! a spare): `atoll cluster` in table and JSON, `assign`, `transfer` both ways, `add` and
//! `remove`, and the errors for node ids the cluster does not have.

mod support;

use support::{atoll, free_address, shell, Cluster, ServerKind};

/// One node of `atoll cluster --format json`, read with string matching (the format is ours and
/// fixed: one object per line, keys in this order).
#[derive(Debug, PartialEq, Eq)]
struct Listed {
    id: u64,
    address: String,
    role: String,
    leader: bool,
    reachable: bool,
}

fn field<'a>(object: &'a str, key: &str) -> &'a str {
    let start = object
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {object}"))
        + key.len()
        + 3;
    let rest = &object[start..];
    let end = rest.find([',', '}']).expect("a value ends");
    rest[..end].trim_matches('"')
}

fn list(cluster: &str) -> Vec<Listed> {
    let out = atoll(&["cluster", "--cluster", cluster, "--format", "json"]);
    let text = out.ok().trim();
    assert!(text.starts_with('[') && text.ends_with(']'), "{text}");
    text[1..text.len() - 1]
        .split(",\n")
        .map(|object| {
            // dqlite nodes do not say (null); atoll nodes report a number.
            let applied = field(object, "applied_index");
            assert!(
                applied == "null" || applied.parse::<u64>().is_ok(),
                "{object}"
            );
            Listed {
                id: field(object, "id").parse().unwrap(),
                address: field(object, "address").to_owned(),
                role: field(object, "role").to_owned(),
                leader: field(object, "leader") == "true",
                reachable: field(object, "reachable") == "true",
            }
        })
        .collect()
}

fn node<'a>(listed: &'a [Listed], address: &str) -> &'a Listed {
    listed
        .iter()
        .find(|n| n.address == address)
        .unwrap_or_else(|| panic!("{address} not in {listed:?}"))
}

/// The cells of each line of an aligned table (rules left out).
fn table_rows(text: &str) -> Vec<Vec<&str>> {
    text.lines()
        .filter(|line| line.starts_with('|'))
        .map(|line| line.trim_matches('|').split('|').map(str::trim).collect())
        .collect()
}

/// The listing, then leadership moved to the second node and back, with a shell working
/// through it; then the second node removed.
fn scenario_membership(cluster: &Cluster) {
    let (first, second) = (cluster.address(0), cluster.address(1));
    let both = cluster.addresses();

    let listed = list(&both);
    assert_eq!(listed.len(), 2);
    let one = node(&listed, first);
    assert!(one.leader && one.reachable);
    assert_eq!(one.role, "voter");
    let two = node(&listed, second);
    assert!(!two.leader && two.reachable);
    let (first_id, second_id) = (one.id, two.id);

    let table = atoll(&["cluster", "--cluster", first]);
    let rows = table_rows(table.ok());
    assert_eq!(
        rows[0],
        [
            "id",
            "address",
            "role",
            "leader",
            "reachable",
            "applied",
            "corrupt",
            "repairing"
        ]
    );
    let first_id_text = first_id.to_string();
    assert!(
        rows.iter().any(
            |row| row[..5] == [&first_id_text, first, "voter", "yes", "yes"]
                && (row[5] == "-" || row[5].parse::<u64>().is_ok())
                && (row[7] == "-" || row[7] == "no")
        ),
        "{rows:?}"
    );

    // Only voters can lead: a transfer to the joined node must wait for its promotion.
    let second_id_text = second_id.to_string();
    if two.role != "voter" {
        let refused = atoll(&["transfer", "--cluster", &both, "--id", &second_id_text]);
        assert!(
            refused.failed().contains("only voters can lead"),
            "{refused:?}"
        );
    }
    let promoted = atoll(&[
        "assign",
        "--cluster",
        &both,
        "--id",
        &second_id_text,
        "--role",
        "voter",
    ]);
    // (atoll's automatic roles may have promoted it already.)
    let out = promoted.ok();
    assert!(
        out.contains("-> voter") || out.contains("already a voter"),
        "{out}"
    );
    assert_eq!(node(&list(&both), second).role, "voter");

    let moved = atoll(&["transfer", "--cluster", first, "--id", &second_id_text]);
    assert!(
        moved
            .ok()
            .contains(&format!("to node {second_id} ({second})")),
        "{}",
        moved.stdout
    );
    let listed = list(first);
    assert!(node(&listed, second).leader && !node(&listed, first).leader);

    // A client given only the first (now follower) address finds the leader.
    let out = shell(
        first,
        "m",
        &["-f", "csv", "CREATE TABLE t (x); SELECT 42 AS x"],
    );
    assert_eq!(out.ok(), "x\n42\n");

    // Without --id the leader picks: the only other voter is the first node.
    let back = atoll(&["transfer", "--cluster", &both]);
    assert!(
        back.ok().contains(&format!("to node {first_id} ({first})")),
        "{}",
        back.stdout
    );

    let removed = atoll(&["remove", "--cluster", &both, "--id", &second_id_text]);
    assert!(
        removed.ok().starts_with("removed node"),
        "{}",
        removed.stdout
    );
    let listed = list(first);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, first_id);
    assert_eq!(
        shell(first, "m", &["-f", "csv", "SELECT 1 AS x"]).ok(),
        "x\n1\n"
    );
}

#[test]
fn test_membership_changes_on_two_nodes() {
    scenario_membership(&Cluster::start(2));
}

#[test]
fn test_membership_changes_on_two_atoll_nodes() {
    scenario_membership(&Cluster::start_kind(ServerKind::Atoll, 2));
}

/// `add` puts an entry in the configuration (a spare nobody runs: unreachable), `assign`
/// changes its role, `remove` takes it out. Ids the cluster does not have are refused by every
/// command with the list of ids it does have; a duplicate id or address is refused by `add`.
fn scenario_add_and_unknown_ids(cluster: &Cluster) {
    let address = cluster.address(0);
    let ghost = free_address();
    let added = atoll(&[
        "add",
        "--cluster",
        address,
        "--id",
        "777",
        "--address",
        &ghost,
    ]);
    assert!(added.ok().contains("added node 777"), "{}", added.stdout);
    let listed = list(address);
    let entry = node(&listed, &ghost);
    assert_eq!((entry.id, entry.role.as_str()), (777, "spare"));
    assert!(!entry.reachable && !entry.leader);
    let table = atoll(&["cluster", "--cluster", address]);
    assert!(
        table.ok().contains("no (connection refused)"),
        "{}",
        table.stdout
    );

    let again = atoll(&[
        "add",
        "--cluster",
        address,
        "--id",
        "777",
        "--address",
        "h:1",
    ]);
    assert!(
        again.failed().contains("already in the cluster"),
        "{:?}",
        again
    );
    let same = atoll(&[
        "add",
        "--cluster",
        address,
        "--id",
        "778",
        "--address",
        &ghost,
    ]);
    assert!(same.failed().contains("already node 777's"), "{:?}", same);

    let standby = atoll(&[
        "assign",
        "--cluster",
        address,
        "--id",
        "777",
        "--role",
        "standby",
    ]);
    standby.ok();
    assert_eq!(node(&list(address), &ghost).role, "standby");
    let unchanged = atoll(&[
        "assign",
        "--cluster",
        address,
        "--id",
        "777",
        "--role",
        "standby",
    ]);
    assert!(
        unchanged.ok().contains("already a standby"),
        "{}",
        unchanged.stdout
    );
    atoll(&[
        "assign",
        "--cluster",
        address,
        "--id",
        "777",
        "--role",
        "spare",
    ])
    .ok();
    atoll(&["remove", "--cluster", address, "--id", "0x309"]).ok();
    assert!(list(address).iter().all(|n| n.id != 777));

    for args in [
        vec!["remove", "--id", "12345"],
        vec!["assign", "--id", "12345", "--role", "voter"],
        vec!["transfer", "--id", "12345"],
    ] {
        let mut full = vec![args[0], "--cluster", address];
        full.extend_from_slice(&args[1..]);
        let out = atoll(&full);
        let stderr = out.failed();
        assert!(
            stderr.contains("no node with id 12345"),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains("atoll cluster --cluster"),
            "{args:?}: {stderr}"
        );
    }
    let only = atoll(&[
        "remove",
        "--cluster",
        address,
        "--id",
        &list(address)[0].id.to_string(),
    ]);
    assert!(only.failed().contains("only node"), "{:?}", only);
}

#[test]
fn test_add_assign_remove_and_unknown_ids() {
    scenario_add_and_unknown_ids(&Cluster::start(1));
}

/// The same scenario against `atoll start`.
#[test]
fn test_atoll_add_assign_remove_and_unknown_ids() {
    scenario_add_and_unknown_ids(&Cluster::start_kind(ServerKind::Atoll, 1));
}
