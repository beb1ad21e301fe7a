//! How many rows a CPU run should hold at each length, measured once at load.
//!
//! A run's cost per padded token falls as rows amortise its fixed part, then, for long
//! inputs, rises again once the activations (attention is rows × heads × length² floats)
//! outgrow the caches: on the development VM 256-token passages ran faster per token in
//! runs of 8 than of 16 or 32. The token budget (`max_batch_tokens`) cannot know that, so
//! at load a few runs of synthetic inputs find, at each of a few lengths, the rows past which
//! the cost per token rises; the batcher keeps runs within them (`Engine::max_rows`). The
//! runs also warm the session, so the first request does not pay for its first allocations.

use std::time::{Duration, Instant};

/// The lengths measured, each only up to the model's own maximum: short inputs never reach
/// the caches' limits, and longer ones are rare enough to extrapolate.
const LENGTHS: [usize; 3] = [128, 256, 512];
/// Calibration stops once it has run this long: a large model measures fewer shapes.
const BUDGET: Duration = Duration::from_millis(1000);
/// More rows are not tried after a run that took this long (the next takes about twice as
/// long): past it a run's fixed part is long amortised.
const LONGEST_RUN: Duration = Duration::from_millis(120);
/// Rows whose cost per token is within this of the cheapest are as cheap: the VM's noise
/// between two runs is a few percent. Past it, the cost has risen.
const AS_CHEAP: f64 = 1.06;

/// The most rows per run from each measured length on; no entry means no limit but the
/// batch limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunShapes {
    /// (from this many columns, at most this many rows), by increasing columns.
    caps: Vec<(usize, usize)>,
}

impl RunShapes {
    pub fn max_rows(&self, columns: usize) -> usize {
        self.caps
            .iter()
            .rev()
            .find(|(from, _)| columns >= *from)
            .map_or(usize::MAX, |&(_, rows)| rows)
    }

    /// Measures with `run(rows, columns)`, which returns how long one run of that shape
    /// took, within the batch limits and the model's `max_length`. Rows double from one
    /// until the cost per token rises, the runs grow long or the budget is spent; the most
    /// rows as cheap as the cheapest is the length's cap. Only where the limits came first
    /// is there no cap.
    pub fn measure(
        mut run: impl FnMut(usize, usize) -> anyhow::Result<Duration>,
        max_length: usize,
        max_rows: usize,
        max_tokens: usize,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let mut caps = Vec::new();
        for columns in LENGTHS.into_iter().filter(|&l| l <= max_length) {
            // The first run of a shape allocates; the warm-up keeps that out of the figures.
            run(1, columns)?;
            let mut cheapest = f64::INFINITY;
            let mut cap = None;
            let mut rows = 1;
            while rows <= max_rows && rows * columns <= max_tokens {
                let mut took = run(rows, columns)?;
                let per_token = |took: Duration| took.as_secs_f64() / (rows * columns) as f64;
                if per_token(took) > cheapest * AS_CHEAP {
                    // Once more before a rise decides: one preempted run should not.
                    took = took.min(run(rows, columns)?);
                }
                tracing::debug!(rows, columns, ?took, "run shape");
                let per_token = per_token(took);
                if per_token > cheapest * AS_CHEAP {
                    break;
                }
                cheapest = cheapest.min(per_token);
                cap = Some(rows);
                if took > LONGEST_RUN || started.elapsed() > BUDGET {
                    break;
                }
                rows *= 2;
            }
            let limited = rows > max_rows || rows * columns > max_tokens;
            if let (Some(cap), false) = (cap, limited) {
                caps.push((columns, cap));
            }
            if started.elapsed() > BUDGET {
                break;
            }
        }
        Ok(Self { caps })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cost model like the VM's: a fixed part, then per token cheaper with rows until
    /// `knee` rows × 256 tokens, dearer past it.
    fn fake(knee_tokens: usize) -> impl FnMut(usize, usize) -> anyhow::Result<Duration> {
        move |rows, columns| {
            let tokens = (rows * columns) as f64;
            let penalty = if rows * columns > knee_tokens {
                1.5
            } else {
                1.0
            };
            Ok(Duration::from_secs_f64(
                (200.0 + tokens * 2.0 * penalty) * 1e-7,
            ))
        }
    }

    #[test]
    fn finds_the_rows_past_which_a_token_costs_more() {
        let shapes = RunShapes::measure(fake(2048), 512, 32, 16_384).unwrap();
        assert_eq!(shapes.caps, [(128, 16), (256, 8), (512, 4)]);
        // Nearly flat costs: the most rows within the noise of the cheapest.
        let flat = |rows: usize, columns: usize| {
            let per_token = match rows {
                1 => 1.0,
                2 => 0.98,
                4 => 0.99,
                8 => 1.01,
                _ => 1.2,
            };
            Ok(Duration::from_secs_f64(
                per_token * (rows * columns) as f64 * 1e-7,
            ))
        };
        let flat_shapes = RunShapes::measure(flat, 128, 32, 16_384).unwrap();
        assert_eq!(flat_shapes.caps, [(128, 8)]);
        assert_eq!(shapes.max_rows(20), usize::MAX);
        assert_eq!(shapes.max_rows(200), 16);
        assert_eq!(shapes.max_rows(300), 8);
        assert_eq!(shapes.max_rows(4096), 4);
    }

    #[test]
    fn no_knee_within_the_limits_means_no_cap() {
        let shapes = RunShapes::measure(fake(usize::MAX), 256, 32, 16_384).unwrap();
        assert_eq!(shapes, RunShapes::default());
        assert_eq!(shapes.max_rows(256), usize::MAX);
    }

    #[test]
    fn a_failing_run_fails_the_measurement() {
        let failing = |_: usize, _: usize| -> anyhow::Result<Duration> { anyhow::bail!("no") };
        assert!(RunShapes::measure(failing, 512, 32, 16_384).is_err());
    }
}
