//! The request-log writer: a bounded queue drained by a dedicated thread.
//!
//! The observer hands each finished request to [`LogWriter::submit`], which never blocks: when the
//! queue is full the record is dropped and `gateway_log_dropped_total` counts it. The thread
//! (SQLite is blocking, so it is not a runtime task) takes what is queued, up to [`MAX_BATCH`]
//! records, turns them into [`LogEntry`]s, writes them in one transaction, prints one JSON line per
//! request on stdout when asked, rests [`BATCH_PAUSE`] unless the batch was full, and applies
//! retention every [`RETENTION_EVERY`]. It also runs the Prometheus recorder's upkeep every
//! [`UPKEEP_EVERY`] (histogram samples are buffered until drained, and nothing else drains them
//! when nobody scrapes `/metrics`). It stops when the last sender is dropped, after writing what is
//! left. By default it runs at `SCHED_IDLE` ([`WriterPriority`]), so its bursts of SQLite work
//! never hold a core that request work is waiting for.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway_core::observe::RequestRecord;
use metrics::Counter;
use metrics_exporter_prometheus::PrometheusHandle;
use rusqlite::Connection;
use tokio::sync::watch;

use crate::record::LogEntry;
use crate::store;
use crate::time::now_ms;
use crate::WriterPriority;

/// Most records written in one transaction.
pub const MAX_BATCH: usize = 512;
/// How often retention runs.
pub const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// How often the metrics recorder's histogram buffers are drained.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// How long the thread rests after a batch that did not fill [`MAX_BATCH`].
///
/// While it rests it is not blocked on the queue, so [`LogWriter::submit`] is a plain enqueue
/// with no thread to wake (a futex wake on the request path otherwise, and a transaction per
/// request at low rates); what arrives meanwhile is written together in the next batch.
pub const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// What the writer thread needs.
pub(crate) struct WriterSettings {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
    pub(crate) capacity: usize,
    /// The priority asked for (and, on the thread, the one it got).
    pub(crate) priority: WriterPriority,
    /// Where JSON lines go (stdout with `[logging] stdout = "json"`), if anywhere.
    pub(crate) json_lines: Option<Box<dyn std::io::Write + Send>>,
    pub(crate) log_content: bool,
    pub(crate) max_age_ms: Option<u64>,
    pub(crate) max_rows: Option<u64>,
    pub(crate) dropped: Counter,
    pub(crate) write_errors: Counter,
    /// The recorder whose upkeep this thread runs.
    pub(crate) metrics: PrometheusHandle,
    /// Held by a test to stop the thread before it takes anything from the queue.
    pub(crate) gate: Option<Arc<Mutex<()>>>,
}

/// The sending side.
pub(crate) struct LogWriter {
    tx: SyncSender<Arc<RequestRecord>>,
    accepted: AtomicU64,
    dropped_n: AtomicU64,
    dropped: Counter,
    written: watch::Receiver<u64>,
    priority: WriterPriority,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("accepted", &self.accepted)
            .field("dropped", &self.dropped_n)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

impl LogWriter {
    /// Spawns the writer thread, and waits until it has set its own priority.
    pub(crate) fn start(s: WriterSettings) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(s.capacity.max(1));
        let (written_tx, written) = watch::channel(0u64);
        let (ready_tx, ready) = sync_channel(1);
        let dropped = s.dropped.clone();
        let asked = s.priority;
        std::thread::Builder::new()
            .name("gateway-log-writer".to_owned())
            .spawn(move || {
                let mut s = s;
                s.priority = set_own_priority(asked);
                let _ = ready_tx.send(s.priority);
                run(s, rx, written_tx)
            })?;
        // The thread sends before anything else; a closed channel means it died at once.
        let priority = ready.recv().unwrap_or(WriterPriority::Normal);
        if priority != asked {
            tracing::warn!(
                asked = ?asked,
                "the request-log writer could not lower its priority and runs at the process's own"
            );
        }
        Ok(LogWriter {
            tx,
            accepted: AtomicU64::new(0),
            dropped_n: AtomicU64::new(0),
            dropped,
            written,
            priority,
        })
    }

    /// The priority the writer thread runs at.
    pub(crate) fn priority(&self) -> WriterPriority {
        self.priority
    }

    /// Queues a record, or drops and counts it when the queue is full. Never blocks.
    pub(crate) fn submit(&self, record: Arc<RequestRecord>) {
        match self.tx.try_send(record) {
            Ok(()) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped_n.fetch_add(1, Ordering::Relaxed);
                self.dropped.increment(1);
            }
        }
    }

    /// Records dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped_n.load(Ordering::Relaxed)
    }

    /// Waits until everything queued before the call is written (or the writer is gone).
    pub(crate) async fn flush(&self) {
        let target = self.accepted.load(Ordering::Relaxed);
        let mut rx = self.written.clone();
        let _ = rx.wait_for(|w| *w >= target).await;
    }
}

/// Puts the calling thread at `asked` and returns the priority it ended up at.
#[cfg(target_os = "linux")]
fn set_own_priority(asked: WriterPriority) -> WriterPriority {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, thread_schedule_policy,
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
    };
    if asked == WriterPriority::Normal {
        return WriterPriority::Normal;
    }
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    // This also sets the thread's nice value to 0, which SCHED_IDLE ignores; that step fails
    // without privilege when the process runs above 0, after the policy has changed. So the
    // policy is read back rather than the result trusted.
    let _ = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle);
    if thread_schedule_policy().is_ok_and(|p| p == idle) {
        WriterPriority::Idle
    } else {
        WriterPriority::Normal
    }
}

#[cfg(not(target_os = "linux"))]
fn set_own_priority(_asked: WriterPriority) -> WriterPriority {
    WriterPriority::Normal
}

fn run(mut s: WriterSettings, rx: Receiver<Arc<RequestRecord>>, written: watch::Sender<u64>) {
    let mut done = 0u64;
    let mut last_retention: Option<Instant> = None;
    let retention = s.max_age_ms.is_some() || s.max_rows.is_some();
    let mut last_upkeep = Instant::now();
    let mut batch: Vec<LogEntry> = Vec::with_capacity(64);
    let mut warned_behind: Option<Instant> = None;
    loop {
        if let Some(g) = &s.gate {
            drop(g.lock());
        }
        if last_upkeep.elapsed() >= UPKEEP_EVERY {
            last_upkeep = Instant::now();
            s.metrics.run_upkeep();
        }
        if retention && last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY) {
            last_retention = Some(Instant::now());
            match store::apply_retention(&mut s.conn, now_ms(), s.max_age_ms, s.max_rows) {
                Ok(n) if n > 0 => tracing::debug!(deleted = n, "request log retention"),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, path = %s.path.display(), "request log retention failed")
                }
            }
        }
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        batch.clear();
        batch.push(LogEntry::from_record(&first, s.log_content));
        drop(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(LogEntry::from_record(&r, s.log_content)),
                Err(_) => break,
            }
        }
        if batch.len() == MAX_BATCH
            && s.priority == WriterPriority::Idle
            && warned_behind.is_none_or(|t| t.elapsed() >= RETENTION_EVERY)
        {
            warned_behind = Some(Instant::now());
            tracing::warn!(
                "the request-log writer is behind: at idle priority it only gets CPU time nothing \
                 else wants; records are dropped once the queue is full \
                 ([logging] writer_priority = \"normal\" trades tail latency for keeping up)"
            );
        }
        if let Err(e) = store::insert_batch(&mut s.conn, &batch) {
            s.write_errors.increment(1);
            tracing::warn!(error = %e, records = batch.len(), path = %s.path.display(), "request log write failed");
        }
        if let Some(out) = &mut s.json_lines {
            let mut buf = Vec::with_capacity(batch.len() * 512);
            for e in &batch {
                if serde_json::to_writer(&mut buf, e).is_ok() {
                    buf.push(b'\n');
                }
            }
            let _ = out.write_all(&buf);
            let _ = out.flush();
        }
        done += batch.len() as u64;
        written.send_replace(done);
        if batch.len() < MAX_BATCH {
            std::thread::sleep(BATCH_PAUSE);
        }
    }
}
