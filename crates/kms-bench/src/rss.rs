//! Resident memory of a process (kmsd), sampled every second from /proc/PID/status.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// A thread that samples VmRSS until [`Sampler::report`].
pub struct Sampler {
    samples: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
    pid: u32,
}

fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Sampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (samples, stop) = (Arc::clone(&samples), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kib) = rss_kib(pid) {
                        samples
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(kib);
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
        };
        Sampler {
            samples,
            stop,
            thread,
            pid,
        }
    }

    /// Stops sampling and prints the first, highest and last resident set size.
    pub fn report(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let mib = |kib: u64| kib as f64 / 1024.0;
        match (samples.first(), samples.iter().max(), samples.last()) {
            (Some(first), Some(max), Some(last)) => {
                println!(
                    "\nRSS of pid {}: first {:.1} MiB, highest {:.1} MiB, last {:.1} MiB ({} \
                     samples, 1 s apart)",
                    self.pid,
                    mib(*first),
                    mib(*max),
                    mib(*last),
                    samples.len()
                );
                let minutes: Vec<String> = samples
                    .iter()
                    .step_by(60)
                    .map(|kib| format!("{:.1}", mib(*kib)))
                    .collect();
                println!("RSS each minute, MiB: {}", minutes.join(", "));
            }
            _ => println!("\nRSS of pid {}: no samples (is it running?)", self.pid),
        }
    }
}
