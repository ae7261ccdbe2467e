//! Progress of long setup work (`--populate`) on stderr, so that stdout stays the report:
//! a progress bar (indicatif) when stderr is a terminal, else a plain line every
//! [`LINE_EVERY`] items.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// When stderr is not a terminal, a line every this many items.
const LINE_EVERY: usize = 10_000;

/// Counts the finished items of a known total and shows the count on stderr. Shared by the
/// workers (`&self` everywhere).
pub struct Progress {
    /// What is being done, e.g. `populate`.
    label: &'static str,
    /// What is counted, e.g. `keys`.
    unit: &'static str,
    started: Instant,
    done: AtomicUsize,
    /// `None` when stderr is not a terminal.
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Starts showing the progress of `total` items.
    pub fn start(label: &'static str, unit: &'static str, total: usize) -> anyhow::Result<Self> {
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(
                Some(u64::try_from(total).unwrap_or(u64::MAX)),
                ProgressDrawTarget::stderr(),
            );
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{label}: [{{bar:30}}] {{pos}}/{{len}} {unit}, {{per_sec}}, {{elapsed}} \
                     (ETA {{eta}})"
                ))?
                .progress_chars("=> "),
            );
            bar.tick();
            Some(bar)
        } else {
            None
        };
        Ok(Progress {
            label,
            unit,
            started: Instant::now(),
            done: AtomicUsize::new(0),
            bar,
        })
    }

    /// Counts one finished item.
    pub fn inc(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        match &self.bar {
            Some(bar) => bar.inc(1),
            None => {
                if let Some(line) = self.line(done) {
                    eprintln!("{line}");
                }
            }
        }
    }

    /// Removes the bar (a plain line needs no ending).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// The plain line to print once `done` items are finished, if any.
    fn line(&self, done: usize) -> Option<String> {
        done.is_multiple_of(LINE_EVERY).then(|| {
            format!(
                "{}: {done} {}, {:.0} s",
                self.label,
                self.unit,
                self.started.elapsed().as_secs_f64()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_line_comes_every_ten_thousand_items() -> anyhow::Result<()> {
        let progress = Progress::start("populate", "keys", 30_000)?;
        assert_eq!(progress.line(1), None);
        assert_eq!(progress.line(9_999), None);
        assert_eq!(
            progress.line(10_000).as_deref(),
            Some("populate: 10000 keys, 0 s")
        );
        assert!(progress.line(20_000).is_some());
        progress.finish();
        Ok(())
    }
}
