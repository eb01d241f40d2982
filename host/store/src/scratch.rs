//! Throw-away PostgreSQL databases for tests and rigs: [`ScratchDatabase`] creates a
//! database with a unique name on a server (through a role that may create databases) and
//! drops it when dropped, so that parallel tests never see each other's rows.

use crate::{Error, Result};
use postgres::{Client, NoTls};

/// A database of its own, dropped (with its connections) on drop. `Debug` shows its name
/// only: the URLs may hold a password.
pub struct ScratchDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl std::fmt::Debug for ScratchDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScratchDatabase")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ScratchDatabase {
    /// Creates `etee_t_<random>` through `admin_url`.
    pub fn create(admin_url: &str) -> Result<Self> {
        let mut random = [0u8; 8];
        getrandom(&mut random);
        let name = format!("etee_t_{}", hex::encode(random));
        let (admin, sql) = (admin_url.to_owned(), format!("CREATE DATABASE {name}"));
        on_plain_thread(move || {
            Client::connect(&admin, NoTls).and_then(|mut c| c.batch_execute(&sql))
        })
        .map_err(|e| Error::Backend(e.to_string()))?;
        let url = with_database(admin_url, &name);
        Ok(Self {
            admin_url: admin_url.to_owned(),
            name,
            url,
        })
    }

    /// A scratch database on the test server at `server` (the URL the tests' skip rule
    /// gives, `etee_testpki::skip::postgres_url`), or `None` when there is none. Creating
    /// it on a server that is there but refuses fails the test.
    pub fn for_tests(server: Option<String>) -> Option<Self> {
        server.map(|url| Self::create(&url).expect("creating a scratch database"))
    }

    /// The URL of the scratch database.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = on_plain_thread(move || {
            Client::connect(&admin, NoTls).and_then(|mut c| c.batch_execute(&sql))
        });
    }
}

/// Runs `f` on a thread of its own: the synchronous `postgres` client starts a runtime of
/// its own, which tokio forbids on a thread that is driving async tasks (an async test).
fn on_plain_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f)
        .join()
        .expect("scratch database thread")
}

fn getrandom(out: &mut [u8]) {
    use std::hash::{BuildHasher, Hasher};
    // Unique enough for names: the std hasher's random keys, the time and a counter.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u32(std::process::id());
    out.copy_from_slice(&h.finish().to_le_bytes()[..out.len().min(8)]);
}

/// `url` with its database replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let authority = url.find("://").map_or(0, |i| i + 3);
    let (head, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let base = match head[authority..].find('/') {
        Some(slash) => &head[..authority + slash],
        None => head,
    };
    format!("{base}/{name}{query}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_rewriting() {
        use super::with_database;
        assert_eq!(
            with_database("postgres://u@h:1/db?sslmode=disable", "x"),
            "postgres://u@h:1/x?sslmode=disable"
        );
        assert_eq!(with_database("postgresql://u@h", "x"), "postgresql://u@h/x");
    }
}
