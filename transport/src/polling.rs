//! Adaptive polling: how long an end that ran dry (ring empty, or full)
//! keeps checking the shared indexes before it asks the peer for an event
//! and sleeps. Sans-IO: no clock inside; the async ends pass the time in.
//!
//! A cross-process wake-up through an event channel costs tens of
//! microseconds; a peer that answers within a few microseconds is cheaper
//! to wait for by looking at its producer index again. While an end polls
//! it does not ask for events (ring.h's `req_event`/`rsp_event` stay where
//! they were, vchan's notify bits stay clear), so a busy pair exchanges
//! almost no events. When the budget is spent, the end asks for an event,
//! checks once more, and sleeps as before.
//!
//! ```text
//!  ran dry at t0 ---> round(now)? --Some--> look again (yield; every
//!                       |                   YIELD_EVERY rounds give the
//!                       |                   core up), call round() again
//!                       None: now - t0 >= budget
//!                       v
//!                     ask for an event, final check, sleep
//!  work found at t1 --> found_work(t1), waited = t1 - t0:
//!     waited <= budget          polling caught it: keep the budget
//!     budget < waited <= max    a longer poll would have: double it
//!                               (from GROW_START)
//!     waited > max              the peer was idle: budget 0
//! ```
//!
//! This is the rule of Linux's adaptive halt-polling (KVM's
//! `halt_poll_ns`): the budget grows while work comes back soon after the
//! end ran dry, and falls to zero as soon as the peer stays idle longer than
//! the ceiling. An idle connected pair therefore polls at most once, for at
//! most the ceiling, when it goes idle, and then sleeps on its event channel
//! at no CPU cost; after the first late wake-up it does not poll at all
//! until a quick exchange makes the budget grow again.
//!
//! Two processes sharing one core cannot starve each other: a poll never
//! lasts longer than the budget (a spin that found nothing ends and the end
//! sleeps), and every [`YIELD_EVERY`] rounds the end gives its core up
//! ([`Round::YieldCore`]) so that a peer waiting for the same core runs.

use std::time::{Duration, Instant};

/// The default ceiling of an adaptive budget.
pub const DEFAULT_MAX: Duration = Duration::from_micros(50);
/// The budget an adaptive end grows to first (from 0).
pub const GROW_START: Duration = Duration::from_micros(4);
/// An end gives its core up (`sched_yield`) every this many rounds, so a
/// peer on the same core gets to run. Every round: on the 2-core bench
/// machine with other builds running (load 7), polling without yielding
/// made the transport bench's one-in-flight round trip 2.2x a Unix
/// socket's in both placements; yielding every round, 0.5-1.0x.
pub const YIELD_EVERY: u32 = 1;

/// How an end waits when it runs dry; set per endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polling {
    /// Never poll: ask for an event and sleep at once (the behaviour
    /// before polling existed).
    Off,
    /// Poll this long every dry spell, without adapting.
    Fixed(Duration),
    /// Poll for an adaptive time, at most `max` (the default, with
    /// [`DEFAULT_MAX`]).
    Adaptive {
        /// The ceiling.
        max: Duration,
    },
}

impl Default for Polling {
    fn default() -> Polling {
        Polling::Adaptive { max: DEFAULT_MAX }
    }
}

/// Counters of one end's polling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollStats {
    /// Rounds polled.
    pub rounds: u64,
    /// Dry spells that polling ended (work found without sleeping).
    pub hits: u64,
    /// Dry spells whose budget ran out (the end then slept).
    pub sleeps: u64,
    /// Times an adaptive budget grew.
    pub grown: u64,
    /// Times an adaptive budget fell to zero.
    pub reset: u64,
}

/// What one polling round should do besides looking again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Look again after letting the other tasks of this thread run.
    Look,
    /// Also give the core up (`sched_yield`) first: a peer on the same
    /// core may be the one that has to move.
    YieldCore,
}

/// The adaptive polling state of one end (sans-IO).
#[derive(Debug, Clone)]
pub struct PollBudget {
    policy: Polling,
    budget: Duration,
    /// When the current dry spell began.
    spell: Option<Instant>,
    /// Rounds polled in the current dry spell.
    rounds: u32,
    /// The current dry spell's budget ran out: the end sleeps.
    slept: bool,
    /// Rounds between two [`Round::YieldCore`] ([`YIELD_EVERY`]).
    yield_every: u32,
    stats: PollStats,
}

impl PollBudget {
    /// A fresh budget for `policy`: adaptive starts at 0 and grows once the
    /// peer shows it answers quickly.
    pub fn new(policy: Polling) -> PollBudget {
        PollBudget {
            budget: match policy {
                Polling::Fixed(d) => d,
                Polling::Off | Polling::Adaptive { .. } => Duration::ZERO,
            },
            policy,
            spell: None,
            rounds: 0,
            slept: false,
            yield_every: YIELD_EVERY.max(1),
            stats: PollStats::default(),
        }
    }

    /// Changes the policy; the budget starts again from the policy's
    /// initial value. Counters are kept.
    pub fn set_policy(&mut self, policy: Polling) {
        *self = PollBudget {
            stats: self.stats,
            ..PollBudget::new(policy)
        };
    }

    /// The policy.
    pub fn policy(&self) -> Polling {
        self.policy
    }

    /// How long the next dry spell may poll.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Counters so far.
    pub fn stats(&self) -> PollStats {
        self.stats
    }

    /// Whether a dry spell is under way (polling or asleep): only then does
    /// [`PollBudget::found_work`] need the time.
    pub fn is_dry(&self) -> bool {
        self.spell.is_some()
    }

    /// The end found its ring dry at `now`. `Some(round)`: look once more
    /// (without asking for an event) and call again; `None`: the budget of
    /// this dry spell is spent: ask for an event and sleep (and every later
    /// call until work is found says `None` at once).
    pub fn round(&mut self, now: Instant) -> Option<Round> {
        let start = *self.spell.get_or_insert(now);
        if self.slept {
            return None;
        }
        if now.saturating_duration_since(start) < self.budget {
            self.rounds += 1;
            self.stats.rounds += 1;
            return Some(if self.rounds % self.yield_every == 0 {
                Round::YieldCore
            } else {
                Round::Look
            });
        }
        self.slept = true;
        self.stats.sleeps += 1;
        None
    }

    /// The end found work at `now`; adapts the budget to how long it
    /// waited since it ran dry (see the module docs).
    pub fn found_work(&mut self, now: Instant) {
        let Some(start) = self.spell.take() else {
            return;
        };
        let waited = now.saturating_duration_since(start);
        if !self.slept {
            self.stats.hits += 1;
        }
        self.slept = false;
        self.rounds = 0;
        let Polling::Adaptive { max } = self.policy else {
            return;
        };
        if waited <= self.budget {
            // Polling caught it, or would have: keep.
        } else if waited > max {
            if self.budget > Duration::ZERO {
                self.stats.reset += 1;
            }
            self.budget = Duration::ZERO;
        } else {
            self.budget = (self.budget * 2).clamp(GROW_START.min(max), max);
            self.stats.grown += 1;
        }
    }
}

impl Default for PollBudget {
    fn default() -> PollBudget {
        PollBudget::new(Polling::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    /// Polls a dry spell that begins at `t0` with the clock advancing one
    /// microsecond a round; returns the rounds polled.
    fn spell(b: &mut PollBudget, t0: Instant) -> u32 {
        let mut n = 0;
        while b.round(t0 + US * n).is_some() {
            n += 1;
        }
        n
    }

    #[test]
    fn off_never_polls_nor_adapts() {
        let t = Instant::now();
        let mut b = PollBudget::new(Polling::Off);
        assert_eq!(b.round(t), None);
        b.found_work(t + US * 10);
        assert_eq!(b.budget(), Duration::ZERO);
        assert_eq!(b.round(t), None);
        assert_eq!(b.stats().rounds, 0);
    }

    #[test]
    fn fixed_polls_the_same_every_spell() {
        let t = Instant::now();
        let mut b = PollBudget::new(Polling::Fixed(US * 5));
        assert_eq!(spell(&mut b, t), 5);
        // Still asleep until work is found: no second spell.
        assert_eq!(b.round(t + US * 100), None);
        b.found_work(t + US * 1000);
        assert_eq!(spell(&mut b, t), 5);
        assert_eq!(b.budget(), US * 5);
        assert_eq!(b.stats().sleeps, 2);
    }

    #[test]
    fn adaptive_grows_while_work_comes_back_soon_up_to_the_ceiling() {
        let t = Instant::now();
        let max = US * 50;
        let mut b = PollBudget::new(Polling::Adaptive { max });
        assert_eq!(b.budget(), Duration::ZERO);
        // The peer answers 20 us after we ran dry, every time.
        let mut budgets = Vec::new();
        for _ in 0..6 {
            spell(&mut b, t);
            b.found_work(t + US * 20);
            budgets.push(b.budget().as_micros());
        }
        assert_eq!(budgets, vec![4, 8, 16, 32, 32, 32]);
        // From 32 us on, polling catches the answer: hits, no sleep.
        assert!(b.round(t).is_some());
        b.found_work(t + US * 20);
        assert_eq!(b.stats().hits, 1);
        // Slower answers grow it to the ceiling, never beyond.
        for _ in 0..4 {
            spell(&mut b, t);
            b.found_work(t + US * 45);
        }
        assert_eq!(b.budget(), max);
    }

    #[test]
    fn adaptive_falls_to_zero_when_the_peer_is_idle() {
        let t = Instant::now();
        let mut b = PollBudget::new(Polling::Adaptive { max: US * 50 });
        for _ in 0..5 {
            spell(&mut b, t);
            b.found_work(t + US * 40);
        }
        assert_eq!(b.budget(), US * 50);
        // The peer goes idle: one last spell of at most the ceiling, then
        // sleep; the next work comes much later.
        assert_eq!(spell(&mut b, t), 50);
        b.found_work(t + Duration::from_secs(10));
        assert_eq!(b.budget(), Duration::ZERO);
        assert_eq!(b.stats().reset, 1);
        // With a zero budget the end sleeps at once: no polling at all.
        assert_eq!(spell(&mut b, t), 0);
    }

    #[test]
    fn every_few_rounds_give_the_core_up() {
        let t = Instant::now();
        let mut b = PollBudget::new(Polling::Fixed(Duration::from_secs(1)));
        let rounds: Vec<Round> = (0..8).filter_map(|_| b.round(t)).collect();
        assert_eq!(rounds.len(), 8);
        let yields = rounds.iter().filter(|r| **r == Round::YieldCore).count();
        assert_eq!(yields, 8 / YIELD_EVERY as usize);
    }

    #[test]
    fn a_new_policy_restarts_the_budget() {
        let t = Instant::now();
        let mut b = PollBudget::default();
        b.set_policy(Polling::Fixed(US * 3));
        assert_eq!(spell(&mut b, t), 3);
        b.set_policy(Polling::Off);
        assert_eq!(spell(&mut b, t), 0);
        assert_eq!(b.stats().rounds, 3);
    }
}
