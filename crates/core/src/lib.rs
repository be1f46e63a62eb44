//! The basic value types of Kubernetes, implemented once for every rk3s crate.
//!
//! - [`quantity`]: `resource.Quantity` (`100m`, `1Gi`, `1e9`): parse, compare, canonical
//!   format, whole and milli values.
//! - [`selector`]: label selectors (string form and `metav1.LabelSelector`), node
//!   selectors (node affinity) and field selectors, parsed and matched as upstream, with
//!   upstream's messages.
//! - [`cron`]: CronJob schedules as the robfig/cron v3 standard parser reads them, and
//!   their next fire times.
//! - [`cidr`]: IPv4/IPv6 CIDRs: parse, contain, first/last address, split into subnets.
//! - [`quote`]: Go's `strconv.Quote` (`%q`), for upstream-identical messages.
//! - [`hostport`]: pods' host ports and upstream's conflict rule between them.
//!
//! Invariants: no I/O, no async, no global state, no panics on any input; this crate
//! depends on no other rk3s crate (every rk3s crate may depend on it). Behaviour follows
//! upstream (`k8s.io/apimachinery`, `robfig/cron/v3`, Go's `net`); where it deviates the
//! item's documentation says so.

#![warn(missing_docs)]

pub mod cidr;
pub mod cron;
pub mod hostport;
pub mod quantity;
pub mod quote;
pub mod selector;

pub use cidr::{Cidr, CidrError};
pub use cron::{Schedule, ScheduleError};
pub use quantity::{Quantity, QuantityError};
pub use quote::{go_quote, go_quote_list};
pub use selector::{FieldSelector, LabelSelector, SelectorError};

#[cfg(test)]
mod tests {
    /// Every parser on every short string over an alphabet of the characters their
    /// grammars care about: none may panic (the crate's invariant).
    #[test]
    fn no_panics_on_any_short_input() {
        let alphabet: Vec<char> = "09.+-eEkKiMm/*?,@TZ=:!() aé".chars().collect();
        let mut inputs = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..3 {
            let mut next = Vec::new();
            for p in &frontier {
                for c in &alphabet {
                    let mut s = p.clone();
                    s.push(*c);
                    next.push(s);
                }
            }
            inputs.extend(next.iter().cloned());
            frontier = next;
        }
        for s in &inputs {
            let _ = crate::Quantity::parse(s).map(|q| q.to_string());
            let _ = crate::Cidr::parse(s).map(|c| (c.last(), c.subnet_count(30)));
            let _ = crate::Schedule::parse(s);
            let _ = crate::Schedule::parse(&format!("@every {s}"));
            let _ = crate::Schedule::parse(&format!("{s} * * * *"));
            let _ = crate::LabelSelector::parse(s);
            let _ = crate::FieldSelector::parse(s);
            let _ = crate::go_quote(s);
        }
    }
}
