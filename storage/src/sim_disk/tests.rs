//! Tests of [`SimDisk`]: what a power cut keeps, names, space, injected errors, latency.

use super::*;

fn disk() -> (SimDisk, Arc<dyn Disk>) {
    let disk = SimDisk::new(7);
    let shared = disk.shared();
    shared.create_dir(Path::new("/d")).unwrap();
    shared.sync_dir(Path::new("/")).unwrap();
    (disk, shared)
}

fn read(shared: &Arc<dyn Disk>, path: &str) -> io::Result<Vec<u8>> {
    shared.read(Path::new(path), u64::MAX)
}

#[test]
fn test_power_loss_keeps_only_what_was_synced() {
    // Written and synced bytes survive a power cut; bytes written after the sync, and a length
    // change, do not. A process crash (no power cut) keeps everything: nothing to do here.
    let (disk, shared) = disk();
    let file = shared.open(Path::new("/d/f"), OpenMode::CreateNew).unwrap();
    file.write_all_at(b"hello", 0).unwrap();
    file.sync().unwrap();
    shared.sync_dir(Path::new("/d")).unwrap();
    file.write_all_at(b" world", 5).unwrap();
    file.write_all_at(b"J", 0).unwrap();
    assert_eq!(read(&shared, "/d/f").unwrap(), b"Jello world");
    assert_eq!(disk.unsynced_writes(), 2);
    drop(file);
    disk.power_loss(PowerLoss::DropUnsynced);
    assert_eq!(read(&shared, "/d/f").unwrap(), b"hello");
    assert_eq!(disk.stats().writes_lost, 2);
    assert_eq!(disk.unsynced_writes(), 0);
    assert_eq!(disk.used_bytes(), 5);
}

#[test]
fn test_names_are_durable_only_after_a_directory_sync() {
    // A new file synced but not its directory is gone after a power cut; a rename not synced is
    // undone (the old name comes back); a removal not synced is undone, and the file comes back
    // with its synced bytes.
    let (disk, shared) = disk();
    let create = |name: &str, bytes: &[u8]| {
        let file = shared.open(Path::new(name), OpenMode::CreateNew).unwrap();
        file.write_all_at(bytes, 0).unwrap();
        file.sync().unwrap();
    };
    create("/d/kept", b"k");
    create("/d/moved", b"m");
    create("/d/removed", b"r");
    shared.sync_dir(Path::new("/d")).unwrap();
    create("/d/new", b"n");
    shared
        .rename(Path::new("/d/moved"), Path::new("/d/renamed"))
        .unwrap();
    shared.remove_file(Path::new("/d/removed")).unwrap();
    let mut names = shared.read_dir(Path::new("/d")).unwrap();
    names.sort();
    assert_eq!(names, ["kept", "new", "renamed"]);
    disk.power_loss(PowerLoss::DropUnsynced);
    let mut names = shared.read_dir(Path::new("/d")).unwrap();
    names.sort();
    assert_eq!(names, ["kept", "moved", "removed"]);
    assert_eq!(read(&shared, "/d/removed").unwrap(), b"r");
    // Synced, the same changes stay.
    shared
        .rename(Path::new("/d/moved"), Path::new("/d/renamed"))
        .unwrap();
    shared.remove_file(Path::new("/d/removed")).unwrap();
    shared.sync_dir(Path::new("/d")).unwrap();
    disk.power_loss(PowerLoss::DropUnsynced);
    let mut names = shared.read_dir(Path::new("/d")).unwrap();
    names.sort();
    assert_eq!(names, ["kept", "renamed"]);
    assert_eq!(read(&shared, "/d/renamed").unwrap(), b"m");
}

#[test]
fn test_a_torn_power_loss_keeps_a_prefix_of_the_writes_in_order() {
    // Twelve unsynced writes of distinct bytes, each at its own offset, over two files. A torn
    // power cut keeps writes 1..k whole, a prefix of write k + 1 that ends on a sector
    // boundary, and nothing after: for many seeds, every outcome has that shape, and the
    // outcomes cover "nothing", "everything" and a tear inside a write.
    let mut kept_counts = std::collections::BTreeSet::new();
    let mut tears_inside = 0;
    for seed in 0..200 {
        let disk = SimDisk::new(seed);
        let shared = disk.shared();
        let files: Vec<_> = ["/a", "/b"]
            .iter()
            .map(|name| shared.open(Path::new(name), OpenMode::CreateNew).unwrap())
            .collect();
        for file in &files {
            file.sync().unwrap();
        }
        shared.sync_dir(Path::new("/")).unwrap();
        let writes: Vec<(usize, u64, Vec<u8>)> = (0..12u8)
            .map(|k| {
                (
                    usize::from(k % 2),
                    u64::from(k / 2) * 1500,
                    vec![k + 1; 1500],
                )
            })
            .collect();
        for (file, offset, bytes) in &writes {
            files[*file].write_all_at(bytes, *offset).unwrap();
        }
        drop(files);
        disk.power_loss(PowerLoss::TornPrefix);
        let contents = [read(&shared, "/a").unwrap(), read(&shared, "/b").unwrap()];
        // Each write's surviving bytes: all, a prefix, or none; and in write order.
        let mut survived = Vec::new();
        for (file, offset, bytes) in &writes {
            let content = &contents[*file];
            let start = *offset as usize;
            let got = content.get(start..).unwrap_or(&[]);
            let count = got.iter().zip(bytes).take_while(|(a, b)| a == b).count();
            survived.push(count);
        }
        let whole = survived.iter().take_while(|&&count| count == 1500).count();
        assert!(
            survived.iter().skip(whole + 1).all(|&count| count == 0),
            "seed {seed}: {survived:?}"
        );
        if whole < 12 && survived[whole] > 0 {
            let (_, offset, _) = &writes[whole];
            assert_eq!(
                (offset + survived[whole] as u64) % SECTOR_BYTES,
                0,
                "seed {seed}"
            );
            tears_inside += 1;
        }
        kept_counts.insert(whole);
    }
    assert!(kept_counts.contains(&0), "{kept_counts:?}");
    assert!(kept_counts.contains(&12), "{kept_counts:?}");
    assert!(kept_counts.len() > 8, "{kept_counts:?}");
    assert!(tears_inside > 50, "{tears_inside}");
}

#[test]
fn test_a_full_disk_refuses_growth_and_changes_nothing() {
    // With a budget, a write or a preallocation past it fails with ENOSPC (StorageFull) and
    // leaves the file as it was; overwrites in place still work; lifting the budget lets the
    // same write through. The free space reported follows.
    let (disk, shared) = disk();
    let file = shared.open(Path::new("/d/f"), OpenMode::Create).unwrap();
    file.write_all_at(&[1; 100], 0).unwrap();
    disk.set_budget(Some(150));
    assert_eq!(shared.available_bytes(Path::new("/d")).unwrap(), 50);
    let error = file.write_all_at(&[2; 100], 100).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::StorageFull);
    assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(
        file.allocate(1000).unwrap_err().raw_os_error(),
        Some(libc::ENOSPC)
    );
    assert_eq!(file.size().unwrap(), 100);
    file.write_all_at(&[3; 100], 0).unwrap();
    file.write_all_at(&[4; 50], 100).unwrap();
    assert_eq!(shared.available_bytes(Path::new("/d")).unwrap(), 0);
    disk.set_budget(None);
    file.write_all_at(&[2; 100], 150).unwrap();
    assert_eq!(file.size().unwrap(), 250);
    assert_eq!(disk.stats().enospc, 2);
    assert!(shared.available_bytes(Path::new("/d")).unwrap() > 1 << 30);
    file.set_len(10).unwrap();
    assert_eq!(disk.used_bytes(), 10);
}

#[test]
fn test_injected_eio_fails_one_operation_and_changes_nothing() {
    // `fail_after(Sync, 1)`: the first sync works, the second fails with EIO and leaves its
    // writes unsynced (a power cut loses them), the third works again.
    let (disk, shared) = disk();
    let file = shared.open(Path::new("/d/f"), OpenMode::Create).unwrap();
    shared.sync_dir(Path::new("/d")).unwrap();
    disk.fail_after(SimOp::Sync, 1);
    file.write_all_at(b"one", 0).unwrap();
    file.sync().unwrap();
    file.write_all_at(b"two", 3).unwrap();
    let error = file.sync().unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EIO));
    assert_eq!(disk.synced_bytes(Path::new("/d/f")).unwrap(), b"one");
    assert_eq!(disk.stats().eio, 1);
    file.write_all_at(b"!", 6).unwrap();
    disk.fail_after(SimOp::Write, 0);
    assert!(file.write_all_at(b"?", 7).is_err());
    assert_eq!(read(&shared, "/d/f").unwrap(), b"onetwo!");
    file.sync().unwrap();
    assert_eq!(disk.synced_bytes(Path::new("/d/f")).unwrap(), b"onetwo!");
    // Drawn faults: every sync fails at a million per million.
    disk.set_faults(SimFaults {
        eio_ppm: 1_000_000,
        eio_ops: vec![SimOp::Sync],
        ..SimFaults::default()
    });
    assert!(file.sync().is_err());
    assert!(file.write_all_at(b"x", 0).is_ok());
}

#[test]
fn test_latency_is_owed_and_taken() {
    // Syncs owe their drawn latency (and a stall when drawn), other operations theirs; taking
    // it resets the account. Two disks with one seed draw the same.
    let run = |seed| {
        let disk = SimDisk::new(seed);
        disk.set_faults(SimFaults {
            sync_latency_us: (100, 200),
            op_latency_us: (1, 2),
            stall_ppm: 500_000,
            stall_ms: (50, 60),
            ..SimFaults::default()
        });
        let shared = disk.shared();
        let file = shared.open(Path::new("/f"), OpenMode::Create).unwrap();
        let mut owed = Vec::new();
        for _ in 0..20 {
            file.write_all_at(b"x", 0).unwrap();
            file.sync().unwrap();
            owed.push(disk.take_latency());
        }
        assert_eq!(disk.take_latency(), Duration::ZERO);
        owed
    };
    let owed = run(3);
    assert_eq!(owed, run(3));
    assert!(owed.iter().all(|d| *d >= Duration::from_micros(101)));
    assert!(owed.iter().any(|d| *d >= Duration::from_millis(50)));
    assert!(owed.iter().any(|d| *d < Duration::from_millis(1)));
}

#[test]
fn test_locks_belong_to_an_open_and_handles_die_with_the_power() {
    // A lock is held by one open until its handles are dropped; a handle from before a power
    // cut fails afterwards (EBADF) and its drop changes nothing.
    let (disk, shared) = disk();
    let first = shared.open(Path::new("/d/LOCK"), OpenMode::Create).unwrap();
    let second = shared.open(Path::new("/d/LOCK"), OpenMode::Create).unwrap();
    assert!(first.try_lock().unwrap());
    assert!(first.try_lock().unwrap());
    assert!(!second.try_lock().unwrap());
    drop(first);
    assert!(second.try_lock().unwrap());
    disk.power_loss(PowerLoss::DropUnsynced);
    assert_eq!(second.size().unwrap_err().raw_os_error(), Some(libc::EBADF));
    drop(second);
    let third = shared.open(Path::new("/d/LOCK"), OpenMode::Create).unwrap();
    assert!(third.try_lock().unwrap());
}

#[test]
fn test_old_unsynced_writes_are_written_back_by_themselves() {
    // Past the limit of unsynced writes, the oldest become durable without a sync (as the
    // kernel writes dirty pages back): a power cut keeps them.
    let (disk, shared) = disk();
    let file = shared.open(Path::new("/d/wal"), OpenMode::Create).unwrap();
    shared.sync_dir(Path::new("/d")).unwrap();
    for k in 0..UNSYNCED_WRITES_MAX + 10 {
        file.write_all_at(&[1], k as u64).unwrap();
    }
    assert_eq!(disk.unsynced_writes(), UNSYNCED_WRITES_MAX);
    drop(file);
    disk.power_loss(PowerLoss::DropUnsynced);
    assert_eq!(read(&shared, "/d/wal").unwrap(), vec![1; 10]);
}

#[test]
fn test_a_removed_file_lives_while_open_and_directories_move_whole() {
    // A removed file keeps serving its open handles; renaming a directory moves everything in
    // it, and syncing both parents makes the move durable.
    let (disk, shared) = disk();
    let file = shared.open(Path::new("/d/f"), OpenMode::Create).unwrap();
    file.write_all_at(b"data", 0).unwrap();
    file.sync().unwrap();
    shared.sync_dir(Path::new("/d")).unwrap();
    shared.remove_file(Path::new("/d/f")).unwrap();
    assert!(!shared.exists(Path::new("/d/f")));
    let mut buf = [0u8; 4];
    file.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"data");
    drop(file);
    shared.sync_dir(Path::new("/d")).unwrap();
    shared.create_dir(Path::new("/q")).unwrap();
    shared.rename(Path::new("/d"), Path::new("/q/d")).unwrap();
    assert!(shared.is_dir(Path::new("/q/d")));
    assert!(!shared.exists(Path::new("/d")));
    assert!(shared.rename(Path::new("/q"), Path::new("/q/d/q")).is_err());
    shared.sync_dir(Path::new("/")).unwrap();
    shared.sync_dir(Path::new("/q")).unwrap();
    disk.power_loss(PowerLoss::DropUnsynced);
    assert!(shared.is_dir(Path::new("/q/d")));
    // The removal of f was synced before the move, so it stays removed.
    assert!(shared.read_dir(Path::new("/q/d")).unwrap().is_empty());
    assert_eq!(
        shared.canonicalize(Path::new("/q/./d/../d")).unwrap(),
        Path::new("/q/d")
    );
    assert_eq!(disk.used_bytes(), 0);
}
