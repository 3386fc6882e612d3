//! Section **Config**: the warnings from loading the file.
use super::{Check, Status};
use crate::config::{Warning, WarningKind};

pub(super) fn config_checks(warnings: &[Warning]) -> Vec<Check> {
    const S: &str = "Config";
    if warnings.is_empty() {
        return vec![Check::new(
            S,
            "config",
            Status::Ok,
            "no deprecated, unknown or not yet implemented keys",
            None,
        )];
    }
    warnings
        .iter()
        .map(|w| {
            let hint = match w.kind {
                WarningKind::Deprecated => "mtg v2.3 drops it: move the value to the new key",
                WarningKind::UnknownKey => {
                    "ignored: a typo? config.example lists every key mtpx knows"
                }
                WarningKind::NotImplemented => {
                    "accepted so that mtg configs keep working, but mtpx does nothing with it yet"
                }
                WarningKind::Ignored => "ignored by mtg too: remove it",
                WarningKind::Fallback => "mtpx does what the message says instead",
            };
            let at = match (&w.file, w.line) {
                (Some(f), Some(l)) => format!(" ({f}:{l})"),
                (Some(f), None) => format!(" ({f})"),
                (None, Some(l)) => format!(" (line {l})"),
                (None, None) => String::new(),
            };
            Check::new(
                S,
                w.key.clone(),
                Status::Warn,
                format!("{}{at}", w.msg),
                Some(hint.to_string()),
            )
        })
        .collect()
}
