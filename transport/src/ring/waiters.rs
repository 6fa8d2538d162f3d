//! [`Waiters`]: the frontend's outstanding requests, keyed by id, in a
//! table allocated once (one entry per ring slot), so that a request costs
//! no allocation and no hashing.
//!
//! An id is `(generation << log2(size)) | index`, taken modulo the entry
//! type's id space (`ID_MASK + 1`, which must exceed the ring size): the
//! low bits name the table entry, the generation (a counter bumped at every
//! allocation) tells a fresh request from an old one that reused the
//! entry. A response is matched by looking at one entry and comparing the
//! whole id; anything else is an unknown id (a broken backend).
//!
//! Invariants: an entry is `Free` exactly when its index is on the free
//! list; at most `size` entries are in use, so a request the ring accepts
//! always finds an entry (the caller holds a slot permit).

use std::task::Waker;

/// One table entry.
#[derive(Debug)]
enum Entry<Rsp> {
    Free,
    /// A call waiting for its response; `waker` while its task sleeps.
    Call {
        id: u64,
        waker: Option<Waker>,
    },
    /// A call's response, waiting for its caller.
    Done {
        id: u64,
        rsp: Rsp,
    },
    /// A request whose response goes to the response stream.
    Stream {
        id: u64,
    },
    /// A call whose future was dropped: its response is discarded.
    Abandoned {
        id: u64,
    },
}

/// Who a request's response goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Call,
    Stream,
}

/// What became of a response handed to [`Waiters::on_response`].
#[derive(Debug)]
pub(super) enum Outcome<Rsp> {
    /// Kept for its caller; wake this task if it sleeps.
    Kept(Option<Waker>),
    /// For the response stream.
    Stream(Rsp),
    /// Its caller went away: discarded, and its slot is free.
    Discarded,
    /// No outstanding request has this id.
    Unknown(u64),
}

/// The table (sans-IO).
#[derive(Debug)]
pub(super) struct Waiters<Rsp> {
    entries: Box<[Entry<Rsp>]>,
    free: Vec<u32>,
    shift: u32,
    id_mask: u64,
    generation: u64,
    /// Calls whose task sleeps (a registered waker).
    sleeping: usize,
}

/// A handle on one allocated entry: its index and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ticket {
    pub(super) index: u32,
    pub(super) id: u64,
}

impl<Rsp> Waiters<Rsp> {
    /// A table for a ring of `size` slots (a power of two) and ids modulo
    /// `id_mask + 1`. None when the ids are too few to tell `size`
    /// outstanding requests apart.
    pub(super) fn new(size: u32, id_mask: u64) -> Option<Waiters<Rsp>> {
        debug_assert!(size.is_power_of_two());
        if u64::from(size) - 1 > id_mask {
            return None;
        }
        Some(Waiters {
            entries: (0..size).map(|_| Entry::Free).collect(),
            free: (0..size).rev().collect(),
            shift: size.trailing_zeros(),
            id_mask,
            generation: 0,
            sleeping: 0,
        })
    }

    fn mask(&self) -> u64 {
        (self.entries.len() - 1) as u64
    }

    /// Entries in use.
    pub(super) fn outstanding(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// Calls whose task sleeps waiting for an event.
    pub(super) fn sleeping(&self) -> usize {
        self.sleeping
    }

    /// Takes a free entry for a request of `kind` and gives it a fresh id;
    /// None when every entry is in use.
    pub(super) fn alloc(&mut self, kind: Kind) -> Option<Ticket> {
        let index = self.free.pop()?;
        self.generation = self.generation.wrapping_add(1);
        let id = ((self.generation << self.shift) | u64::from(index)) & self.id_mask;
        self.entries[index as usize] = match kind {
            Kind::Call => Entry::Call { id, waker: None },
            Kind::Stream => Entry::Stream { id },
        };
        Some(Ticket { index, id })
    }

    /// Gives back an entry whose request never reached the ring.
    pub(super) fn unalloc(&mut self, t: Ticket) {
        self.release(t.index);
    }

    fn release(&mut self, index: u32) {
        if let Entry::Call { waker: Some(_), .. } = &self.entries[index as usize] {
            self.sleeping -= 1;
        }
        self.entries[index as usize] = Entry::Free;
        self.free.push(index);
    }

    /// Sorts a response taken off the ring to whoever waits for it.
    pub(super) fn on_response(&mut self, id: u64, rsp: Rsp) -> Outcome<Rsp> {
        let index = (id & self.mask()) as usize;
        let entry = &mut self.entries[index];
        match entry {
            Entry::Call { id: want, waker } if *want == id => {
                let waker = waker.take();
                if waker.is_some() {
                    self.sleeping -= 1;
                }
                *entry = Entry::Done { id, rsp };
                Outcome::Kept(waker)
            }
            Entry::Stream { id: want } if *want == id => {
                self.release(index as u32);
                Outcome::Stream(rsp)
            }
            Entry::Abandoned { id: want } if *want == id => {
                self.release(index as u32);
                Outcome::Discarded
            }
            _ => Outcome::Unknown(id),
        }
    }

    /// The caller of `t` polls: its response if it came (the entry is then
    /// free), else its waker is kept (when `waker` is given: it is going to
    /// sleep). None also when `t` is not a call of this table.
    pub(super) fn poll_call(&mut self, t: Ticket, waker: Option<&Waker>) -> Option<Rsp> {
        let entry = &mut self.entries[t.index as usize];
        match entry {
            Entry::Done { id, .. } if *id == t.id => {
                let Entry::Done { rsp, .. } = std::mem::replace(entry, Entry::Free) else {
                    unreachable!("matched above")
                };
                self.free.push(t.index);
                Some(rsp)
            }
            Entry::Call { id, waker: slot } if *id == t.id => {
                if let Some(w) = waker {
                    match slot {
                        Some(old) if old.will_wake(w) => {}
                        Some(old) => old.clone_from(w),
                        None => {
                            *slot = Some(w.clone());
                            self.sleeping += 1;
                        }
                    }
                }
                None
            }
            _ => None,
        }
    }

    /// The caller of `t` went away. True when its response had already come
    /// (the entry is free again and its slot permit must be given back);
    /// otherwise the response, when it comes, is discarded.
    pub(super) fn abandon(&mut self, t: Ticket) -> bool {
        match &self.entries[t.index as usize] {
            Entry::Done { id, .. } if *id == t.id => {
                self.release(t.index);
                true
            }
            Entry::Call { id, waker } if *id == t.id => {
                if waker.is_some() {
                    self.sleeping -= 1;
                }
                self.entries[t.index as usize] = Entry::Abandoned { id: t.id };
                false
            }
            _ => false,
        }
    }

    /// Takes every sleeping caller's waker (the ring failed: they wake to
    /// find the error). Entries stay as they are.
    pub(super) fn take_wakers(&mut self) -> Vec<Waker> {
        self.sleeping = 0;
        self.entries
            .iter_mut()
            .filter_map(|e| match e {
                Entry::Call { waker, .. } => waker.take(),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_entry_and_change_at_every_use() {
        let mut w = Waiters::<u8>::new(4, u64::MAX).unwrap();
        let a = w.alloc(Kind::Call).unwrap();
        let b = w.alloc(Kind::Stream).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(a.id & 3, u64::from(a.index));
        assert!(matches!(w.on_response(b.id, 7), Outcome::Stream(7)));
        // The freed entry is reused with another id.
        let c = w.alloc(Kind::Stream).unwrap();
        assert_eq!(c.index, b.index);
        assert_ne!(c.id, b.id);
        // The old id is unknown now.
        assert!(matches!(w.on_response(b.id, 1), Outcome::Unknown(id) if id == b.id));
        assert_eq!(w.outstanding(), 2);
    }

    #[test]
    fn a_call_collects_its_response_once() {
        let mut w = Waiters::<u8>::new(2, u64::MAX).unwrap();
        let t = w.alloc(Kind::Call).unwrap();
        let waker = futures::task::noop_waker();
        assert_eq!(w.poll_call(t, Some(&waker)), None);
        assert_eq!(w.sleeping(), 1);
        assert!(matches!(w.on_response(t.id, 9), Outcome::Kept(Some(_))));
        assert_eq!(w.sleeping(), 0);
        // A second response with the same id is unknown.
        assert!(matches!(w.on_response(t.id, 9), Outcome::Unknown(_)));
        assert_eq!(w.poll_call(t, None), Some(9));
        assert_eq!(w.poll_call(t, None), None);
        assert_eq!(w.outstanding(), 0);
    }

    #[test]
    fn an_abandoned_call_discards_its_response_and_frees_the_entry() {
        let mut w = Waiters::<u8>::new(2, u64::MAX).unwrap();
        let t = w.alloc(Kind::Call).unwrap();
        assert!(!w.abandon(t));
        assert_eq!(w.outstanding(), 1);
        assert!(matches!(w.on_response(t.id, 1), Outcome::Discarded));
        assert_eq!(w.outstanding(), 0);
        // Abandoned after the response came: free at once.
        let t = w.alloc(Kind::Call).unwrap();
        assert!(matches!(w.on_response(t.id, 1), Outcome::Kept(None)));
        assert!(w.abandon(t));
        assert_eq!(w.outstanding(), 0);
    }

    #[test]
    fn small_id_spaces_wrap_and_too_small_ones_are_refused() {
        assert!(Waiters::<u8>::new(4, 2).is_none());
        let mut w = Waiters::<u8>::new(4, 15).unwrap();
        for _ in 0..100 {
            let t = w.alloc(Kind::Stream).unwrap();
            assert!(t.id <= 15);
            assert!(matches!(w.on_response(t.id, 0), Outcome::Stream(0)));
        }
        let waker = futures::task::noop_waker();
        let t = w.alloc(Kind::Call).unwrap();
        w.poll_call(t, Some(&waker));
        assert_eq!(w.take_wakers().len(), 1);
        assert_eq!(w.sleeping(), 0);
    }
}
