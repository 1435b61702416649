//! Cluster-wide rate limits through Redis (`KEYWARD_REDIS_URL`): one counter per key and fixed
//! window, `INCR` + `PEXPIRE` pipelined on a pooled connection. A small hand-written RESP client
//! (these two commands, `AUTH`, `SELECT` and `DECR`) keeps the dependency tree lean.
//!
//! When Redis cannot be reached the verifier falls back to this node's own counters (the limit
//! then holds per node, as without Redis) and logs it.
//!
//! A node holds at most [`MAX_CONNS`] connections: a burst of verifications waits for one
//! (within the same [`TIMEOUT`]) instead of opening a connection each. Hundreds of connections
//! opened at once overflow Redis's accept queue; a connection whose opening packet is dropped
//! there is retried by the kernel only after a second, past the timeout, and the verification
//! falls back to this node's counters: a cluster-wide limit then grants more than it says.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

const TIMEOUT: Duration = Duration::from_millis(500);
/// Connections a node holds at most, idle or in use.
const MAX_CONNS: usize = 16;

type Conn = BufReader<TcpStream>;

pub struct RedisLimiter {
    addr: String,
    password: Option<String>,
    db: Option<u32>,
    idle: Mutex<Vec<Conn>>,
    /// One permit per connection, idle or in use.
    conns: tokio::sync::Semaphore,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("addr", &self.addr)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn io_err(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::other(msg.into())
}

/// Reads one simple reply (`+`, `-` or `:`); returns the integer of `:` replies, 0 for `+`.
async fn reply(conn: &mut Conn) -> std::io::Result<i64> {
    let mut line = String::new();
    if conn.read_line(&mut line).await? == 0 {
        return Err(io_err("redis closed the connection"));
    }
    let line = line.trim_end();
    match line.as_bytes().first() {
        Some(b':') => line[1..].parse().map_err(|_| io_err("bad integer reply")),
        Some(b'+') => Ok(0),
        Some(b'-') => Err(io_err(format!("redis error: {}", &line[1..]))),
        _ => Err(io_err("unexpected redis reply")),
    }
}

impl RedisLimiter {
    /// `redis://[:password@]host[:port][/db]`.
    /// A limiter for a Redis checked when the settings were read (it connects on first use).
    pub(crate) fn new(url: &crate::config::RedisUrl) -> Self {
        RedisLimiter {
            addr: url.addr.clone(),
            password: url.password.clone(),
            db: url.db,
            idle: Mutex::new(Vec::new()),
            conns: tokio::sync::Semaphore::new(MAX_CONNS),
        }
    }

    async fn connect(&self) -> std::io::Result<Conn> {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| io_err("connect timed out"))??;
        stream.set_nodelay(true)?;
        let mut conn = BufReader::new(stream);
        if let Some(p) = &self.password {
            conn.get_mut()
                .write_all(&command(&[b"AUTH", p.as_bytes()]))
                .await?;
            reply(&mut conn).await?;
        }
        if let Some(db) = self.db {
            conn.get_mut()
                .write_all(&command(&[b"SELECT", db.to_string().as_bytes()]))
                .await?;
            reply(&mut conn).await?;
        }
        Ok(conn)
    }

    async fn with_conn<T, F, Fut>(&self, f: F) -> std::io::Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = (Conn, std::io::Result<T>)>,
    {
        // The wait for a connection, opening it and the call share one deadline.
        tokio::time::timeout(TIMEOUT, async {
            let _permit = self
                .conns
                .acquire()
                .await
                .map_err(|_| io_err("redis limiter closed"))?;
            let conn = match self.idle.lock().await.pop() {
                Some(c) => c,
                None => self.connect().await?,
            };
            let (conn, result) = f(conn).await;
            // A connection that failed (or is dropped here by the deadline) is closed; its
            // permit lets the next caller open another.
            if result.is_ok() {
                self.idle.lock().await.push(conn);
            }
            result
        })
        .await
        .map_err(|_| io_err("redis timed out"))?
    }

    /// The counter of a key's limit in the window starting at `window_start_ms`: the limit
    /// named `default` keeps the name it had when a key had one limit; the others name their
    /// window's length too (a changed window counts anew); an identity's limits are counted
    /// apart from every key's (key ids never start with `i:`; limit names hold no `:`).
    pub(crate) fn counter(
        owner: CounterOf<'_>,
        limit: &str,
        window_ms: i64,
        window_start_ms: i64,
    ) -> String {
        match owner {
            CounterOf::Key(id) if limit == keyward_core::limits::DEFAULT_LIMIT => {
                format!("keyward:rl:{id}:{window_start_ms}")
            }
            CounterOf::Key(id) => {
                format!("keyward:rl:{id}:{limit}:{window_ms}:{window_start_ms}")
            }
            CounterOf::Identity(id) => {
                format!("keyward:rl:i:{id}:{limit}:{window_ms}:{window_start_ms}")
            }
        }
    }

    /// Counts one verification in each counter (name, window length), in one round trip;
    /// returns each count including it.
    pub(crate) async fn hit(&self, counters: &[(String, i64)]) -> std::io::Result<Vec<i64>> {
        let mut req = Vec::new();
        for (k, window_ms) in counters {
            req.extend(command(&[b"INCR", k.as_bytes()]));
            req.extend(command(&[
                b"PEXPIRE",
                k.as_bytes(),
                (window_ms * 2).to_string().as_bytes(),
            ]));
        }
        let n = counters.len();
        self.with_conn(|mut c| async move {
            let r = async {
                c.get_mut().write_all(&req).await?;
                let mut counts = Vec::with_capacity(n);
                for _ in 0..n {
                    counts.push(reply(&mut c).await?);
                    reply(&mut c).await?;
                }
                Ok(counts)
            }
            .await;
            (c, r)
        })
        .await
    }

    /// Gives back the slots taken by [`RedisLimiter::hit`] for a verification that was then
    /// denied.
    pub(crate) async fn undo(&self, counters: &[(String, i64)]) -> std::io::Result<()> {
        let mut req = Vec::new();
        for (k, _) in counters {
            req.extend(command(&[b"DECR", k.as_bytes()]));
        }
        let n = counters.len();
        self.with_conn(|mut c| async move {
            let r = async {
                c.get_mut().write_all(&req).await?;
                for _ in 0..n {
                    reply(&mut c).await?;
                }
                Ok(())
            }
            .await;
            (c, r)
        })
        .await
    }
}

/// Whose limit a counter counts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CounterOf<'a> {
    Key(&'a str),
    Identity(&'a str),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedisUrl;

    #[test]
    fn urls_parse() {
        let r = RedisLimiter::new(&RedisUrl::parse("redis://127.0.0.1:6379").unwrap());
        assert_eq!(
            (r.addr.as_str(), r.password.as_deref(), r.db),
            ("127.0.0.1:6379", None, None)
        );
        let r = RedisLimiter::new(&RedisUrl::parse("redis://:s3cret@cache/2").unwrap());
        assert_eq!(
            (r.addr.as_str(), r.password.as_deref(), r.db),
            ("cache:6379", Some("s3cret"), Some(2))
        );
        assert!(!format!("{r:?}").contains("s3cret"));
        assert!(RedisUrl::parse("http://x").is_err());
    }

    #[test]
    fn commands_are_resp_arrays() {
        assert_eq!(
            command(&[b"INCR", b"k"]),
            b"*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n".to_vec()
        );
    }
}
