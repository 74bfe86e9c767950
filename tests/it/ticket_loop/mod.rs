//! The ticket loop and what rides on it: CEM tickets, follow-up plans, the CEM's unsubscribes.

mod followups;
mod opt_outs;
mod tickets;
