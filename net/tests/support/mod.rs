//! Shared test support: a real dqlite node (Debian's `dqlite-demo`, go-dqlite 1.11.5 on
//! libdqlite 1.11.1) on loopback.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use atoll_net::client::{ClientConfig, Connection};

/// A free loopback port (bound and released; the node binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `dqlite-demo` node, killed on drop.
pub struct DqliteNode {
    pub address: String,
    child: Child,
    joined: bool,
    _dir: tempfile::TempDir,
}

impl DqliteNode {
    /// Starts a node bootstrapping a new cluster (or joining `join`) and waits until it
    /// answers LEADER naming a leader.
    pub fn start(join: Option<&str>) -> DqliteNode {
        Self::start_at(&format!("127.0.0.1:{}", free_port()), join)
    }

    /// Like `start`, at a given address.
    pub fn start_at(address: &str, join: Option<&str>) -> DqliteNode {
        let binary = "dqlite-demo";
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|p| p.join(binary).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "`dqlite-demo` is not installed: run scripts/setup-test-deps (it installs Debian's \
             go-dqlite) before these tests"
        );
        let dir = tempfile::tempdir().unwrap();
        let api = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new(binary);
        command
            .args(["--db", address, "--api", &api, "-D"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(join) = join {
            command.args(["--join", join]);
        }
        let child = command.spawn().expect("dqlite-demo starts");
        let node = DqliteNode {
            address: address.to_owned(),
            child,
            joined: join.is_some(),
            _dir: dir,
        };
        node.wait_ready();
        node
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let config = ClientConfig {
            connect_timeout: Duration::from_millis(200),
            request_timeout: Duration::from_secs(2),
            ..ClientConfig::default()
        };
        loop {
            assert!(
                Instant::now() < deadline,
                "dqlite-demo at {} did not come up",
                self.address
            );
            if let Ok(mut connection) = Connection::connect(&self.address, &config) {
                // A joining node answers LEADER with "" until it votes: being able to answer is
                // enough for it; a bootstrapping node must know a leader (itself).
                match connection.leader() {
                    Ok(Some(_)) => return,
                    Ok(None) if self.joined => return,
                    _ => {}
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn socket_addr(&self) -> SocketAddr {
        self.address.parse().unwrap()
    }

    pub fn data_dir(&self) -> &Path {
        self._dir.path()
    }
}

impl Drop for DqliteNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
