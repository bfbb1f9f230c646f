//! Where a message's time goes inside the server, from two scrapes of its `/metrics` around a
//! run: its group commits (how many, how long, how many messages each) and the time from a
//! message accepted to it pushed to the recipient's socket queue. The bench's own clocks give
//! the rest: send → ack at the sender, send → delivered at the recipient.

use std::collections::BTreeMap;

/// One histogram's series, keyed by the bucket's upper bound (as written), with sum and count.
#[derive(Default)]
struct Histogram {
    buckets: BTreeMap<String, f64>,
    sum: f64,
    count: f64,
}

impl Histogram {
    /// The series of histogram `name` whose labels contain `labels` (e.g. `kind="direct"`).
    fn read(text: &str, name: &str, labels: &str) -> Self {
        let mut histogram = Self::default();
        for line in text.lines().filter(|line| line.starts_with(name)) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if !series.contains(labels) {
                continue;
            }
            let rest = &series[name.len()..];
            if rest.starts_with("_sum") {
                histogram.sum = value;
            } else if rest.starts_with("_count") {
                histogram.count = value;
            } else if let Some(le) = rest
                .split("le=\"")
                .nth(1)
                .and_then(|tail| tail.split('"').next())
            {
                histogram.buckets.insert(le.to_owned(), value);
            }
        }
        histogram
    }

    /// What was recorded between `before` and `self`.
    fn since(mut self, before: &Self) -> Self {
        for (le, value) in &mut self.buckets {
            *value -= before.buckets.get(le).copied().unwrap_or(0.0);
        }
        self.sum -= before.sum;
        self.count -= before.count;
        self
    }

    fn mean(&self) -> f64 {
        self.sum / self.count.max(1.0)
    }

    /// The smallest bucket bound below which at least `q` of the observations fall.
    fn bound(&self, q: f64) -> String {
        let mut bounds: Vec<(f64, &str, f64)> = self
            .buckets
            .iter()
            .map(|(le, n)| (le.parse().unwrap_or(f64::INFINITY), le.as_str(), *n))
            .collect();
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        bounds
            .iter()
            .find(|(_, _, n)| *n >= q * self.count)
            .map_or("?".into(), |(_, le, _)| (*le).to_owned())
    }
}

/// Prints the server's stages between the two scrapes `before` and `after`.
pub fn print(before: &str, after: &str) {
    let histogram = |name, labels| {
        Histogram::read(after, name, labels).since(&Histogram::read(before, name, labels))
    };
    let commits = histogram("kisse_store_group_commit_seconds", "");
    let messages = histogram("kisse_store_group_rows", "kind=\"messages\"");
    let marks = histogram("kisse_store_group_rows", "kind=\"delivery_marks\"");
    let routed = histogram("kisse_message_delivery_seconds", "kind=\"direct\"");
    let batches = histogram("kisse_ws_write_batch_frames", "");
    println!(
        "  server: {:.0} group commits, {:.3} ms each (p99 ≤ {} s), {:.1} messages and {:.1} delivery marks per group",
        commits.count,
        commits.mean() * 1e3,
        commits.bound(0.99),
        messages.mean(),
        marks.mean(),
    );
    println!(
        "  server: accepted → pushed to the recipient's queue {:.3} ms mean (p99 ≤ {} s); {:.1} frames per socket write",
        routed.mean() * 1e3,
        routed.bound(0.99),
        batches.mean(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "kisse_store_group_commit_seconds_bucket{le=\"0.001\"} 1\n\
kisse_store_group_commit_seconds_bucket{le=\"0.005\"} 2\n\
kisse_store_group_commit_seconds_bucket{le=\"+Inf\"} 2\n\
kisse_store_group_commit_seconds_sum 0.004\n\
kisse_store_group_commit_seconds_count 2\n";
    const AFTER: &str = "kisse_store_group_commit_seconds_bucket{le=\"0.001\"} 9\n\
kisse_store_group_commit_seconds_bucket{le=\"0.005\"} 11\n\
kisse_store_group_commit_seconds_bucket{le=\"+Inf\"} 12\n\
kisse_store_group_commit_seconds_sum 0.024\n\
kisse_store_group_commit_seconds_count 12\n";

    #[test]
    fn a_histogram_between_two_scrapes() {
        let name = "kisse_store_group_commit_seconds";
        let h = Histogram::read(AFTER, name, "").since(&Histogram::read(BEFORE, name, ""));
        assert_eq!(h.count, 10.0);
        assert!((h.mean() - 0.002).abs() < 1e-9);
        assert_eq!(h.bound(0.5), "0.001");
        assert_eq!(h.bound(0.9), "0.005");
        assert_eq!(h.bound(0.99), "+Inf");
    }
}
