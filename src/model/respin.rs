//! `Spinning::Adaptive` across processes: a CPU session is rebuilt without spinning while
//! other processes take the cores its runs need (`contention`), and with spinning inside
//! runs once they are free again. ONNX Runtime fixes a session's spinning when it is built,
//! so the session is built again, between two runs, on the thread that runs it: the old one
//! goes first, so the model's memory never doubles, and the runs wait for one load of the
//! graph at each change (`contention` holds each change for five rebuilds' time).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use ort::session::Session;

use crate::contention;
use crate::metrics::METRICS;
use crate::runtime::{Device, Runtime, Spinning};

/// How long the worker of a session that spins inside its runs busy-waits for the next
/// request after a run that emptied its queue (`batcher::Engine::idle_spin`): longer than
/// a local client's turn-around between requests at concurrency 1 (0.3 to 0.5 ms on the
/// development VM), short enough to cost little when no request comes.
const IDLE_SPIN: Duration = Duration::from_millis(1);

/// A model's session, and how to build it again for another spinning mode.
pub struct AdaptiveSession {
    /// None only after a rebuild failed; the next run tries again.
    session: Option<Session>,
    rebuild: Option<Rebuild>,
}

struct Rebuild {
    runtime: Runtime,
    onnx: PathBuf,
    current: Spinning,
}

impl AdaptiveSession {
    /// Follows the load for a CPU session of an adaptive runtime; any other stays as built.
    pub fn new(session: Session, runtime: &Runtime, device: Device, onnx: PathBuf) -> Self {
        let follows = runtime.spinning() == Spinning::Adaptive && device == Device::Cpu;
        Self {
            session: Some(session),
            rebuild: follows.then(|| Rebuild {
                runtime: runtime.clone(),
                onnx,
                current: Spinning::Adaptive,
            }),
        }
    }

    /// How long its worker may busy-wait for the next request: as long as the session spins
    /// inside its runs (a CPU session of an adaptive runtime on a quiet machine), else not
    /// at all, so that a busy machine's cores go to the processes that want them.
    pub fn idle_spin(&self) -> Duration {
        if self.rebuild.is_some() && !contention::contended() {
            IDLE_SPIN
        } else {
            Duration::ZERO
        }
    }

    /// Runs `run` on the session, rebuilt first if the machine's load changed since it was
    /// (or if the last rebuild failed). For a session that follows the load, the run's time
    /// and how much of it its thread waited for a core go to `contention`.
    pub fn run<'s, R>(&'s mut self, run: impl FnOnce(&'s mut Session) -> R) -> anyhow::Result<R> {
        let follows = self.rebuild.is_some();
        let session = self.get()?;
        if !follows {
            return Ok(run(session));
        }
        let waited = contention::thread_waited();
        let started = Instant::now();
        let result = run(session);
        if let (Some(before), Some(after)) = (waited, contention::thread_waited()) {
            contention::record_run(started.elapsed(), after.saturating_sub(before));
        }
        Ok(result)
    }

    fn get(&mut self) -> anyhow::Result<&mut Session> {
        if let Some(rebuild) = &mut self.rebuild {
            let wanted = if contention::contended() {
                Spinning::Never
            } else {
                Spinning::Adaptive
            };
            let lost = self.session.is_none();
            if wanted != rebuild.current || lost {
                if !lost && !rebuild.onnx.is_file() {
                    // A cleared cache or a moved folder: keep the session there is rather
                    // than drop it for a rebuild that cannot succeed.
                    tracing::warn!(
                        onnx = %rebuild.onnx.display(),
                        "the model file is gone: its session keeps its spinning"
                    );
                    self.rebuild = None;
                } else {
                    self.session = None;
                    rebuild.current = wanted;
                    let started = Instant::now();
                    self.session = Some(rebuild.build(wanted)?);
                    contention::rebuilt(started.elapsed());
                    METRICS
                        .session_respins
                        .with_label_values(&[&wanted.to_string()])
                        .inc();
                }
            }
        }
        self.session
            .as_mut()
            .context("the session was lost in a rebuild that failed")
    }
}

impl Rebuild {
    fn build(&self, spinning: Spinning) -> anyhow::Result<Session> {
        let (mut builder, _) = self
            .runtime
            .with_own_pool(spinning)
            .session_builder(Device::Cpu, None)
            .map_err(anyhow::Error::msg)?;
        builder.commit_from_file(&self.onnx).with_context(|| {
            format!(
                "cannot rebuild the session of {} with spinning {spinning}",
                self.onnx.display()
            )
        })
    }
}
