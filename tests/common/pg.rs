//! A PostgreSQL database of a test's own, for the test binaries that need
//! one (`postgres`, `broker_sharded`): made on the server at
//! `CUSTODY_PG_URL` (a URL without a database name; default
//! `postgres://postgres@127.0.0.1:5432`) and dropped, even on failure. No
//! server is a failed test, never a skipped one.

// Each test binary uses its own subset of these.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use custody::resources::postgres::client::{Client, NoTls};

/// `CUSTODY_PG_URL`, or the machine's server, without a trailing slash.
pub fn server() -> String {
    std::env::var("CUSTODY_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// A database of the test's own, dropped when this is.
pub struct TestDb {
    name: String,
}

impl TestDb {
    pub fn new() -> TestDb {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "custody_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = Client::connect(&format!("{}/postgres", server()), NoTls)
            .unwrap_or_else(|e| panic!("PostgreSQL at {} cannot be reached: {e}", server()));
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        TestDb { name }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", server(), self.name)
    }

    /// A connection of the test's own, apart from any manager's.
    pub fn client(&self) -> Client {
        Client::connect(&self.url(), NoTls).unwrap()
    }

    /// The one bigint `sql` selects.
    pub fn count(&self, sql: &str) -> i64 {
        self.client().query_one(sql, &[]).unwrap().get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&format!("{}/postgres", server()), NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}
