//! Work ahead of a consumer through a bounded queue: the stages' decode-ahead.
//!
//! [`run`] cuts the items into chunks; a producer thread maps each chunk on rayon's pool
//! (decoding photos, say) and sends it down a queue of `depth` chunks, while the calling
//! thread consumes chunks in order (runs the backbone, writes). Neither waits on the other
//! while the queue is neither empty nor full, and memory is bounded: at most
//! [`Ahead::bound`] items are mapped and not yet consumed (one chunk being mapped, `depth`
//! in the queue, one being consumed), whatever the speeds. The order of the consumed items
//! is the order of the input, whatever the thread timing.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The shape of a decode-ahead: items per chunk and chunks queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ahead {
    /// Items mapped together on rayon's pool (the unit of parallel work).
    pub chunk: usize,
    /// Chunks that may wait in the queue for the consumer.
    pub depth: usize,
}

impl Ahead {
    /// The most items ever mapped and not yet consumed: `(depth + 2) * chunk`.
    pub fn bound(&self) -> usize {
        (self.depth.max(1) + 2) * self.chunk.max(1)
    }

    /// Maps `items` chunk by chunk with `map` on rayon's pool, ahead of `consume`, which
    /// receives each chunk's results in input order on the calling thread. The first error
    /// of `consume` stops the producer and is returned.
    pub fn run<T, U, E>(
        &self,
        items: &[T],
        map: impl Fn(&T) -> U + Sync,
        mut consume: impl FnMut(Vec<U>) -> Result<(), E>,
    ) -> Result<(), E>
    where
        T: Sync,
        U: Send,
    {
        use rayon::prelude::*;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<U>>(self.depth.max(1));
        std::thread::scope(|s| {
            let map = &map;
            let chunk = self.chunk.max(1);
            s.spawn(move || {
                for c in items.chunks(chunk) {
                    let out: Vec<U> = c.par_iter().map(map).collect();
                    if tx.send(out).is_err() {
                        return; // the consumer stopped
                    }
                }
            });
            // The receiver lives in this closure: on an error it is dropped before the scope
            // joins the producer, whose blocked send then fails and ends it.
            let rx = rx;
            for out in rx.iter() {
                consume(out)?;
            }
            Ok(())
        })
    }
}

/// Counts items in flight and remembers the most at once: tests and benchmarks wrap a
/// decode-ahead's map (`enter`) and consumer (`leave`) with it to check [`Ahead::bound`].
#[derive(Debug, Default)]
pub struct InFlight {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl InFlight {
    /// One more item mapped.
    pub fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
    }

    /// `n` items consumed.
    pub fn leave(&self, n: usize) {
        self.now.fetch_sub(n, Ordering::SeqCst);
    }

    /// The most items in flight at once so far.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Runs 2,000 items through a decode-ahead whose map sleeps `map_us` per item and whose
    /// consumer sleeps `consume_us` per item; returns the peak in flight and the order seen.
    fn pipeline(ahead: Ahead, map_us: u64, consume_us: u64) -> (usize, Vec<u32>) {
        let items: Vec<u32> = (0..2000).collect();
        let flight = InFlight::default();
        let mut seen = Vec::new();
        ahead
            .run(
                &items,
                |&i| {
                    flight.enter();
                    std::thread::sleep(Duration::from_micros(map_us));
                    i
                },
                |chunk| -> Result<(), ()> {
                    std::thread::sleep(Duration::from_micros(consume_us * chunk.len() as u64));
                    flight.leave(chunk.len());
                    seen.extend(chunk);
                    Ok(())
                },
            )
            .unwrap();
        (flight.peak(), seen)
    }

    #[test]
    fn a_slow_consumer_holds_at_most_the_bound_in_flight() {
        let ahead = Ahead {
            chunk: 16,
            depth: 2,
        };
        let (peak, seen) = pipeline(ahead, 0, 200);
        assert_eq!(seen, (0..2000).collect::<Vec<_>>());
        // The producer is far faster, so it fills the queue: the peak reaches the bound
        // (give or take the chunk being mapped) and never passes it.
        assert!(peak <= ahead.bound(), "{peak} > {}", ahead.bound());
        assert!(peak > ahead.bound() - 2 * ahead.chunk, "peak {peak}");
    }

    #[test]
    fn a_slow_producer_keeps_little_in_flight() {
        let ahead = Ahead {
            chunk: 16,
            depth: 4,
        };
        let (peak, seen) = pipeline(ahead, 300, 0);
        assert_eq!(seen, (0..2000).collect::<Vec<_>>());
        // The consumer takes each chunk soon after it is mapped: the queue never fills
        // (about two chunks in flight on a quiet machine; a loaded one delays the consumer
        // by a chunk or two, never by the four the queue holds).
        assert!(peak <= ahead.bound() - ahead.chunk, "peak {peak}");
    }

    #[test]
    fn a_consumer_error_stops_the_producer() {
        let items: Vec<u32> = (0..100_000).collect();
        let mapped = AtomicUsize::new(0);
        let ahead = Ahead {
            chunk: 10,
            depth: 1,
        };
        let r = ahead.run(
            &items,
            |&i| {
                mapped.fetch_add(1, Ordering::SeqCst);
                i
            },
            |c| if c[0] >= 30 { Err(c[0]) } else { Ok(()) },
        );
        assert_eq!(r, Err(30));
        assert!(mapped.load(Ordering::SeqCst) <= ahead.bound() + 30);
    }
}
