//! Counts the JA4 fingerprints of arriving ClientHellos ([`crate::proto::ja4`]), separately for
//! valid clients and for connections fronted to the site: which apps connect, what probes
//! arrive.
//!
//! Each class keeps a table of at most `top` fingerprints (`[stats] ja4-top`) by the
//! Space-Saving algorithm (Metwally et al.): a new fingerprint when the table is full takes the
//! place of the least counted one, so any fingerprint with more than 1/`top` of the hellos is
//! always in the table, and a flood of random hellos changes only the least counted slots.
//! Memory is fixed at start; reported counts are lower bounds (hellos seen since the
//! fingerprint entered its slot), the rest of the class is "other". One short lock per hello.

use std::sync::Mutex;

use crate::log::Level;
use crate::proto::ja4::Ja4;

/// The classes, in report order: valid clients, fronted connections.
pub(crate) const CLASSES: [&str; 2] = ["client", "fronted"];

#[derive(Clone, Copy)]
struct Slot {
    fp: Ja4,
    count: u64,
    /// The count inherited from the slot's previous fingerprint (an over-estimate bound).
    err: u64,
}

struct Table {
    slots: Vec<Slot>,
    total: u64,
}

impl Table {
    fn record(&mut self, fp: Option<&Ja4>, cap: usize) {
        self.total += 1;
        let Some(fp) = fp else { return };
        if let Some(s) = self.slots.iter_mut().find(|s| s.fp == *fp) {
            s.count += 1;
        } else if self.slots.len() < cap {
            self.slots.push(Slot {
                fp: *fp,
                count: 1,
                err: 0,
            });
        } else if let Some(min) = self.slots.iter_mut().min_by_key(|s| s.count) {
            *min = Slot {
                fp: *fp,
                count: min.count + 1,
                err: min.count,
            };
        }
    }
}

/// The fingerprint tables of both classes.
pub(crate) struct Ja4Stats {
    top: usize,
    tables: Mutex<[Table; 2]>,
}

/// One row of a report: class index, fingerprint (`None` = "other"), count.
pub(crate) type Row = (usize, Option<Ja4>, u64);

impl Ja4Stats {
    /// Tables of `top` fingerprints per class (0: nothing counted).
    pub(crate) fn new(top: usize) -> Ja4Stats {
        let table = || Table {
            slots: Vec::with_capacity(top),
            total: 0,
        };
        Ja4Stats {
            top,
            tables: Mutex::new([table(), table()]),
        }
    }

    /// Counts a ClientHello: `valid` (a client of ours) or fronted; `fp` its fingerprint
    /// (`None`: none could be computed). Logged at debug level.
    pub(crate) fn record(&self, valid: bool, fp: Option<&Ja4>) {
        let class = usize::from(!valid);
        crate::log_event!(
            Level::Debug,
            "client-hello",
            class = CLASSES[class],
            ja4 = fp.map_or("-", |f| std::str::from_utf8(f).unwrap_or("-")),
        );
        if self.top == 0 {
            return;
        }
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        t[class].record(fp, self.top);
    }

    /// Both classes' rows, most counted first, each class ending with its "other" row (only
    /// for a class that saw a hello).
    pub(crate) fn rows(&self) -> Vec<Row> {
        let t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(2 * self.top + 2);
        for (class, table) in t.iter().enumerate() {
            let start = out.len();
            let mut counted = 0;
            for s in &table.slots {
                let n = s.count - s.err;
                counted += n;
                out.push((class, Some(s.fp), n));
            }
            crate::proto::sort_small_by_key(&mut out[start..], |r| u64::MAX - r.2);
            if table.total > 0 {
                out.push((class, None, table.total - counted));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(i: u32) -> Ja4 {
        let mut f = [b'a'; 36];
        f[..10].copy_from_slice(format!("{i:010}").as_bytes());
        f
    }

    #[test]
    fn counts_per_class_with_other() {
        let s = Ja4Stats::new(2);
        for _ in 0..5 {
            s.record(true, Some(&fp(1)));
        }
        s.record(true, Some(&fp(2)));
        s.record(true, None);
        s.record(false, Some(&fp(3)));
        let r = s.rows();
        assert_eq!(
            r,
            vec![
                (0, Some(fp(1)), 5),
                (0, Some(fp(2)), 1),
                (0, None, 1),
                (1, Some(fp(3)), 1),
                (1, None, 0)
            ]
        );
    }

    #[test]
    fn a_flood_of_random_hellos_keeps_the_heavy_hitters_and_bounded_memory() {
        let s = Ja4Stats::new(4);
        for i in 0..10_000u32 {
            // Every third hello is TDLib's; the rest are all different.
            let f = if i % 3 == 0 { fp(0) } else { fp(i + 1) };
            s.record(false, Some(&f));
        }
        let r = s.rows();
        assert_eq!(r.len(), 5, "{} rows", r.len());
        assert_eq!(r[0].1, Some(fp(0)));
        assert!(r[0].2 >= 3334 / 2, "{}", r[0].2);
        let total: u64 = r.iter().map(|x| x.2).sum();
        assert_eq!(total, 10_000);
        let t = s.tables.lock().unwrap();
        assert!(t[1].slots.capacity() <= 4 && t[1].slots.len() == 4);
    }

    #[test]
    fn zero_top_counts_nothing() {
        let s = Ja4Stats::new(0);
        s.record(true, Some(&fp(1)));
        assert!(s.rows().is_empty());
    }
}
