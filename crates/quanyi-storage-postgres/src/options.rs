//! How to reach the database: URL, schema, pool size and timeouts.

use std::fmt;
use std::time::Duration;

use quanyi_storage::{Error, Result};
use tokio_postgres::config::Host;

/// The schema a store uses when none is given.
pub const DEFAULT_SCHEMA: &str = "quanyi";

/// Cards a store allocates between two vacuums of its free-card queue, unless
/// The planner settings of every pooled connection.
///
/// - `plan_cache_mode=force_generic_plan`: every statement is written for a generic plan, made
///   once per connection.
/// - `enable_seqscan=off`: every statement reaches the rows it needs through an index or their
///   tuple ids, and a generic plan is made from whatever statistics the tables have then; with
///   thin ones (a new store, a server without autovacuum) the planner took a sequential scan of a
///   queue for the cheaper way to delete the few rows a pick had locked by tuple id, and kept it
///   as the queue grew. With this setting a sequential scan is the plan only where there is no
///   other; the plan tests check there always is one.
pub(crate) const SESSION_SETTINGS: &str =
    "-c plan_cache_mode=force_generic_plan -c enable_seqscan=off";

/// [`PgOptions::card_queue_vacuum_every`] says otherwise.
pub const DEFAULT_CARD_QUEUE_VACUUM_EVERY: u64 = 2_000;

/// Options of a [`PgStore`](crate::PgStore): the server, the schema every object lives in, the
/// pool size and the timeouts.
///
/// ```
/// use std::time::Duration;
/// use quanyi_storage_postgres::PgOptions;
///
/// let options = PgOptions::new("postgres://shop:secret@db.internal:5432/shop")
///     .schema("quanyi_shop")
///     .max_connections(32)
///     .acquire_timeout(Duration::from_secs(5));
/// // Debug names the server and the database, never the password.
/// assert!(!format!("{options:?}").contains("secret"));
/// ```
#[derive(Clone)]
pub struct PgOptions {
    pub(crate) url: String,
    pub(crate) schema: String,
    pub(crate) max_connections: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) acquire_timeout: Duration,
    pub(crate) write_batches: usize,
    pub(crate) card_queue_vacuum_every: u64,
}

impl PgOptions {
    /// Options for a server URL (`postgres://user:password@host:port/database?...`) or a
    /// `key=value` connection string, with the default schema (`quanyi`), 16 connections, a
    /// 10 second connect timeout and a 30 second wait for a free connection.
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_owned(),
            max_connections: 16,
            connect_timeout: Duration::from_secs(10),
            acquire_timeout: Duration::from_secs(30),
            write_batches: 1,
            card_queue_vacuum_every: DEFAULT_CARD_QUEUE_VACUUM_EVERY,
        }
    }

    /// The schema that holds every table (created by [`migrate`](crate::PgStore::migrate) if
    /// missing): 1 to 63 lowercase ASCII letters, digits and `_`, not starting with a digit or
    /// `pg_`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The most connections the pool opens (at least 1).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// How long opening one connection may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a call waits for a free pooled connection before it is `Unavailable`.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// How many combined writes of one kind (order placements; payment records) run at once
    /// (default 1, at least 1). Concurrent `place_order` calls of one store share one statement
    /// and one commit, as do concurrent `record_payment` calls: while these batches run, new
    /// calls gather into the next ones. A lone caller never waits for company. More batches at
    /// once let more server cores work; fewer make larger batches, which cost the server less
    /// per order. See the crate documentation.
    pub fn write_batches(mut self, n: usize) -> Self {
        self.write_batches = n;
        self
    }

    /// After how many allocated cards the store vacuums its free-card queue (default
    /// 2,000; 0 never, for hosts that call
    /// [`PgStore::vacuum_card_queue`](crate::PgStore::vacuum_card_queue) on a schedule of their
    /// own or tune autovacuum for the table). Allocation deletes the oldest rows of the queue,
    /// and every allocation walks past the index entries of the rows deleted since the last
    /// vacuum; autovacuum comes at most once a minute. The vacuum runs in the background, one
    /// at a time per store, and reads the queue's whole index: a larger value suits a queue of
    /// millions of cards. The store also vacuums the queue after every import that adds cards
    /// (so the planner never keeps the size of a sold-out queue); 0 turns that off too. See the
    /// crate documentation.
    pub fn card_queue_vacuum_every(mut self, cards: u64) -> Self {
        self.card_queue_vacuum_every = cards;
        self
    }

    /// The driver configuration, with `search_path` set to the schema and
    /// [`SESSION_SETTINGS`] before the URL's own options.
    pub(crate) fn pg_config(&self) -> Result<tokio_postgres::Config> {
        check_schema(&self.schema)?;
        if self.max_connections == 0 {
            return Err(Error::Invalid("max_connections must be at least 1".into()));
        }
        if self.write_batches == 0 {
            return Err(Error::Invalid("write_batches must be at least 1".into()));
        }
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| Error::Invalid(format!("bad PostgreSQL URL: {e}")))?;
        // Every statement is written for a generic plan (all access by index, on parameters),
        // and re-planning the larger ones on each call would cost more than running them. A
        // host's own options come after (they may override that), the schema last.
        let mut options = String::from(SESSION_SETTINGS);
        if let Some(existing) = config.get_options().filter(|o| !o.trim().is_empty()) {
            options.push(' ');
            options.push_str(existing);
        }
        options.push_str(" -c search_path=");
        options.push_str(&self.schema);
        config.options(options);
        if config.get_application_name().is_none() {
            config.application_name("quanyi");
        }
        config.connect_timeout(self.connect_timeout);
        Ok(config)
    }
}

impl fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = self
            .url
            .parse::<tokio_postgres::Config>()
            .map(|c| describe(&c))
            .unwrap_or_else(|_| "<unparsable url>".to_owned());
        f.debug_struct("PgOptions")
            .field("target", &target)
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("write_batches", &self.write_batches)
            .field("card_queue_vacuum_every", &self.card_queue_vacuum_every)
            .finish()
    }
}

/// `host:port,.../database`, without user or password.
pub(crate) fn describe(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    format!(
        "{}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or("<default>")
    )
}

/// A schema name that needs no quoting anywhere.
pub(crate) fn check_schema(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with("pg_")
        && !name.as_bytes()[0].is_ascii_digit()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "schema name {name:?} is not a plain lowercase identifier"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        for (name, ok) in [
            ("quanyi", true),
            ("qt_0123abcd", true),
            ("_x", true),
            ("", false),
            ("1abc", false),
            ("pg_temp", false),
            ("Quanyi", false),
            ("a-b", false),
            ("a;drop", false),
            ("a b", false),
        ] {
            assert_eq!(check_schema(name).is_ok(), ok, "{name}");
        }
        assert!(check_schema(&"a".repeat(63)).is_ok());
        assert!(check_schema(&"a".repeat(64)).is_err());
    }

    #[test]
    fn debug_hides_the_password() {
        let o = PgOptions::new("postgres://u:hunter2@example.invalid:6543/shop").schema("s1");
        let text = format!("{o:?}");
        assert!(text.contains("example.invalid:6543/shop"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn search_path_is_added_to_existing_options() {
        let o = PgOptions::new("postgres://u@h/db?options=-c%20statement_timeout%3D5000");
        let c = o.pg_config().unwrap();
        assert_eq!(
            c.get_options(),
            Some(
                "-c plan_cache_mode=force_generic_plan -c enable_seqscan=off \
                 -c statement_timeout=5000 -c search_path=quanyi"
            )
        );
    }
}
