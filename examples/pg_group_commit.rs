//! Group commit on PostgreSQL, measured: writes per second and latency (p50,
//! p99) of fenced, exactly-once writes (`PgState::apply`) at 1, 16 and 64
//! concurrent writers, group-committed (one transaction per drained batch)
//! beside one transaction per write (`max_batch(1)`) on the same kind of
//! connection, run side by side, alternating, in one run. Medians over the
//! rounds; the ratio is the median of each round's paired ratio.
//!
//! Needs the PostgreSQL server at `CUSTODY_PG_URL` (a URL without a database
//! name; default `postgres://postgres@127.0.0.1:5432`); makes a database of
//! its own and drops it. `--full` measures (11 rounds of 1,000 writes each);
//! without it, a short run checks that everything works. `--writers 1,16`
//! measures only those writer counts.
//!
//! ```text
//! cargo run --release --features postgres --example pg_group_commit -- --full
//! ```

use std::time::{Duration, Instant};

use custody::Runtime;
use custody::resources::postgres::client::{Client, NoTls};
use custody::resources::postgres::{PgState, PgStateHandle};

fn server() -> String {
    std::env::var("CUSTODY_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// A database of the run's own, dropped at the end.
struct Db(String);

impl Db {
    fn create() -> Db {
        let name = format!("custody_bench_{}", std::process::id());
        let mut admin = Client::connect(&format!("{}/postgres", server()), NoTls)
            .expect("PostgreSQL cannot be reached (CUSTODY_PG_URL)");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("creating the benchmark's database");
        Db(name)
    }

    fn url(&self) -> String {
        format!("{}/{}", server(), self.0)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&format!("{}/postgres", server()), NoTls) {
            let _ =
                admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
        }
    }
}

/// One measurement: writes per second, p50 and p99 latency.
#[derive(Clone, Copy)]
struct Sample {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// `total` writes spread over `writers` threads, each a fenced apply with a
/// fresh message id.
fn measure(state: &PgStateHandle, round: &str, writers: usize, total: usize) -> Sample {
    let per_writer = total / writers;
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let state = state.clone();
            let round = round.to_owned();
            std::thread::spawn(move || {
                let mut latencies = Vec::with_capacity(per_writer);
                for i in 0..per_writer {
                    let id = format!("{round}-{w}-{i}");
                    let t = Instant::now();
                    state
                        .apply("p", id, move |c| {
                            c.execute(
                                "INSERT INTO events (writer, n) VALUES ($1, $2)",
                                &[&(w as i32), &(i as i32)],
                            )
                        })
                        .expect("a benchmark write failed");
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("a writer panicked"))
        .collect();
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Sample {
        per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--full");
    // `--writers 1,16`: only those writer counts.
    let writer_counts: Vec<usize> = args
        .iter()
        .position(|a| a == "--writers")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 64]);
    let (rounds, total) = if full { (11, 1000) } else { (1, 128) };
    let db = Db::create();
    let rt = Runtime::new();
    let grouped = PgState::builder(db.url())
        .owner("grouped")
        .spawn(&rt, "grouped")?;
    let single = PgState::builder(db.url())
        .owner("single")
        .max_batch(1)
        .spawn(&rt, "single")?;
    grouped.execute("CREATE TABLE events (id bigserial PRIMARY KEY, writer int, n int)")?;
    grouped.claim("p")?;

    println!(
        "PostgreSQL, fenced exactly-once writes; median of {rounds} round(s) of {total} writes \
         (ratio: the median of each round's pair)\n"
    );
    println!(
        "{:>7}  {:<22} {:>10} {:>10} {:>10} {:>8} {:>9}",
        "writers", "design", "writes/s", "p50", "p99", "ratio", "w/commit"
    );
    for writers in writer_counts {
        let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
        let before = grouped.stats()?;
        for round in 0..rounds {
            // Alternate the designs, each owning the partition while it runs.
            for (which, state) in [&grouped, &single].into_iter().enumerate() {
                state.claim("p")?;
                let tag = format!("w{writers}-r{round}-d{which}");
                samples[which].push(measure(state, &tag, writers, total));
            }
        }
        let after = grouped.stats()?;
        let per_commit = (after.committed_writes - before.committed_writes) as f64
            / (after.commits - before.commits).max(1) as f64;
        let rate = |s: &Vec<Sample>| median(s.iter().map(|x| x.per_sec).collect());
        let p = |s: &Vec<Sample>, f: fn(&Sample) -> Duration| {
            Duration::from_secs_f64(median(s.iter().map(|x| f(x).as_secs_f64()).collect()))
        };
        // Paired: each round's two runs are next to each other in time, so
        // their ratio is steadier than the ratio of the medians on a host
        // whose load (and disk flush time) changes.
        let ratio = median(
            samples[0]
                .iter()
                .zip(&samples[1])
                .map(|(g, s)| g.per_sec / s.per_sec)
                .collect(),
        );
        for (which, name) in ["group commit", "one transaction/write"]
            .into_iter()
            .enumerate()
        {
            let s = &samples[which];
            println!(
                "{:>7}  {:<22} {:>10.0} {:>10.2?} {:>10.2?} {:>7.1}x {:>9.1}",
                writers,
                name,
                rate(s),
                p(s, |x| x.p50),
                p(s, |x| x.p99),
                if which == 0 { ratio } else { 1.0 },
                if which == 0 { per_commit } else { 1.0 }
            );
        }
    }
    grouped.stop();
    single.stop();
    grouped.join()?;
    single.join()?;
    Ok(())
}
