//! Per-worker wake-up timers with 1 ms ticks (a hashed timing wheel).
//!
//! Used by traffic shaping: a connection that must wait before its next record arms a timer
//! and the worker runs it again when the tick comes. Each connection slot has at most one
//! timer; the wheel's lists are intrusive (indexed by slot), so arming, re-arming and
//! disarming are O(1) and allocate nothing once the arrays cover the slab.
//!
//! Ticks are rounded to the nearest millisecond, so a timer fires within ±0.5 ms of its
//! deadline plus the loop's own latency (epoll's timeout has 1 ms resolution); callers
//! accept "now is within a tick of the deadline" as due.

use std::time::{Duration, Instant};

/// Wheel size in ticks (ms). Longer timers sit in their slot for several rounds.
const SLOTS: usize = 256;
const NIL: u32 = u32::MAX;
const UNARMED: u64 = u64::MAX;

pub(crate) struct Timers {
    origin: Instant,
    heads: Vec<u32>,
    next: Vec<u32>,
    prev: Vec<u32>,
    at: Vec<u64>,
    /// First tick not yet expired.
    cursor: u64,
    armed: usize,
    /// No armed timer is due before this tick (may be early: a disarmed timer leaves it).
    earliest: u64,
}

impl Timers {
    /// Timers for slots `0..slots` (grown on demand beyond that).
    pub(crate) fn new(origin: Instant, slots: usize) -> Timers {
        Timers {
            origin,
            heads: vec![NIL; SLOTS],
            next: vec![NIL; slots],
            prev: vec![NIL; slots],
            at: vec![UNARMED; slots],
            cursor: 0,
            armed: 0,
            earliest: UNARMED,
        }
    }

    fn tick(&self, t: Instant) -> u64 {
        let ns = t.saturating_duration_since(self.origin).as_nanos();
        ((ns + 500_000) / 1_000_000) as u64
    }

    /// Number of armed timers.
    #[cfg(test)]
    pub(crate) fn armed(&self) -> usize {
        self.armed
    }

    /// Arms (or moves) slot `id`'s timer to fire at `at`.
    pub(crate) fn arm(&mut self, id: usize, at: Instant) {
        if id >= self.at.len() {
            let n = (id + 1).max(self.at.len() * 2);
            self.next.resize(n, NIL);
            self.prev.resize(n, NIL);
            self.at.resize(n, UNARMED);
        }
        let tick = self.tick(at).max(self.cursor);
        if self.at[id] == tick {
            return;
        }
        self.disarm(id);
        let head = &mut self.heads[(tick % SLOTS as u64) as usize];
        self.next[id] = *head;
        self.prev[id] = NIL;
        if *head != NIL {
            self.prev[*head as usize] = id as u32;
        }
        *head = id as u32;
        self.at[id] = tick;
        self.armed += 1;
        self.earliest = self.earliest.min(tick);
    }

    /// Disarms slot `id`'s timer, if armed.
    pub(crate) fn disarm(&mut self, id: usize) {
        let Some(&tick) = self.at.get(id) else {
            return;
        };
        if tick == UNARMED {
            return;
        }
        let (p, n) = (self.prev[id], self.next[id]);
        if p == NIL {
            self.heads[(tick % SLOTS as u64) as usize] = n;
        } else {
            self.next[p as usize] = n;
        }
        if n != NIL {
            self.prev[n as usize] = p;
        }
        self.at[id] = UNARMED;
        self.armed -= 1;
    }

    /// When the worker should wake next for a timer, if any is armed.
    pub(crate) fn next_wake(&mut self) -> Option<Instant> {
        if self.armed == 0 {
            return None;
        }
        if self.earliest < self.cursor {
            // Stale (an expiry or a disarm passed it): find the first slot with a due timer.
            self.earliest = self.cursor + SLOTS as u64;
            'scan: for t in self.cursor..self.cursor + SLOTS as u64 {
                let mut i = self.heads[(t % SLOTS as u64) as usize];
                while i != NIL {
                    if self.at[i as usize] == t {
                        self.earliest = t;
                        break 'scan;
                    }
                    i = self.next[i as usize];
                }
            }
        }
        // The tick's start (rounding put deadlines up to 0.5 ms before it in this tick).
        let ms = Duration::from_millis(self.earliest);
        Some(self.origin + ms.saturating_sub(Duration::from_micros(500)))
    }

    /// Fires every timer due by `now`, calling `fire(slot)` for each (already disarmed).
    pub(crate) fn expire(&mut self, now: Instant, mut fire: impl FnMut(usize)) {
        let now_tick = self.tick(now);
        if self.armed == 0 || now_tick < self.cursor {
            self.cursor = self.cursor.max(now_tick + 1);
            return;
        }
        let last = now_tick.min(self.cursor + SLOTS as u64 - 1);
        for t in self.cursor..=last {
            let mut i = self.heads[(t % SLOTS as u64) as usize];
            while i != NIL {
                let id = i as usize;
                i = self.next[id];
                if self.at[id] <= now_tick {
                    self.disarm(id);
                    fire(id);
                }
            }
        }
        self.cursor = now_tick + 1;
        if self.earliest <= now_tick {
            // Recomputed lazily by next_wake.
            self.earliest = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fired(t: &mut Timers, now: Instant) -> Vec<usize> {
        let mut v = Vec::new();
        t.expire(now, |id| v.push(id));
        v.sort_unstable();
        v
    }

    #[test]
    fn timers_fire_at_their_tick_and_once() {
        let o = Instant::now();
        let ms = |n: u64| o + Duration::from_millis(n);
        let mut t = Timers::new(o, 4);
        assert_eq!(t.next_wake(), None);
        t.arm(0, ms(5));
        t.arm(1, ms(3));
        t.arm(2, ms(3));
        t.arm(3, ms(700)); // several rounds of the wheel away
        assert_eq!(t.armed(), 4);
        assert_eq!(t.next_wake(), Some(ms(3) - Duration::from_micros(500)));
        assert_eq!(fired(&mut t, ms(2)), Vec::<usize>::new());
        assert_eq!(fired(&mut t, ms(3)), [1, 2]);
        assert_eq!(t.next_wake(), Some(ms(5) - Duration::from_micros(500)));
        assert_eq!(fired(&mut t, ms(4)), Vec::<usize>::new());
        assert_eq!(fired(&mut t, ms(6)), [0]);
        // Slot 3's timer shares wheel slots with ticks 188 and 444 but is not due there.
        assert_eq!(fired(&mut t, ms(188)), Vec::<usize>::new());
        assert_eq!(fired(&mut t, ms(444)), Vec::<usize>::new());
        assert_eq!(t.armed(), 1);
        assert_eq!(fired(&mut t, ms(701)), [3]);
        assert_eq!(t.armed(), 0);
        assert_eq!(t.next_wake(), None);
    }

    #[test]
    fn rearm_disarm_and_late_wakeups() {
        let o = Instant::now();
        let ms = |n: u64| o + Duration::from_millis(n);
        let mut t = Timers::new(o, 2);
        t.arm(0, ms(10));
        t.arm(0, ms(20)); // moved, not duplicated
        assert_eq!(t.armed(), 1);
        assert_eq!(fired(&mut t, ms(15)), Vec::<usize>::new());
        t.arm(1, ms(30));
        t.disarm(1);
        t.disarm(1);
        assert_eq!(t.armed(), 1);
        // A worker that slept long past several rounds fires everything due, once.
        assert_eq!(fired(&mut t, ms(5000)), [0]);
        assert_eq!(t.armed(), 0);
        // A deadline in the past fires at the next expiry.
        t.arm(1, ms(100));
        assert_eq!(fired(&mut t, ms(5001)), [1]);
        // Slots beyond the initial size grow the arrays.
        t.arm(9, ms(5003));
        assert_eq!(fired(&mut t, ms(5003)), [9]);
    }

    #[test]
    fn rounding_is_to_the_nearest_millisecond() {
        let o = Instant::now();
        let us = |n: u64| o + Duration::from_micros(n);
        let mut t = Timers::new(o, 1);
        t.arm(0, us(2_400)); // tick 2
        assert_eq!(fired(&mut t, us(1_400)), Vec::<usize>::new()); // tick 1
        assert_eq!(fired(&mut t, us(1_600)), [0]); // tick 2
        t.arm(0, us(2_600)); // tick 3
        assert_eq!(fired(&mut t, us(2_400)), Vec::<usize>::new());
        assert_eq!(fired(&mut t, us(2_500)), [0]);
    }

    #[test]
    fn many_timers_never_lose_one() {
        let o = Instant::now();
        let mut t = Timers::new(o, 1000);
        let mut x = 12345u64;
        let mut due = vec![0u64; 1000];
        for (id, d) in due.iter_mut().enumerate() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *d = x % 2000;
            t.arm(id, o + Duration::from_millis(*d));
        }
        let mut seen = vec![false; 1000];
        for now in (0..2100).step_by(7) {
            t.expire(o + Duration::from_millis(now), |id| {
                assert!(!seen[id], "fired twice");
                assert!(due[id] <= now, "early: {} at {now}", due[id]);
                assert!(now - due[id] < 7, "late: {} at {now}", due[id]);
                seen[id] = true;
            });
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(t.armed(), 0);
    }
}
