//! Tests of the XenBus machines: single steps, and a randomised world where
//! both ends run against one simulated store with coalesced watches, slow
//! devices and backend/frontend restarts at any point, checked to always
//! end connected.

use super::*;
use XenbusState as S;

fn switches(actions: &[Action]) -> Vec<XenbusState> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Switch(s) => Some(*s),
            _ => None,
        })
        .collect()
}

#[test]
fn backend_fresh_handshake() {
    let mut b = BackendMachine::new();
    let a = b.handle(Input::Start {
        peer: S::Initialising,
    });
    assert_eq!(
        a,
        vec![Action::PublishFeatures, Action::Switch(S::InitWait)]
    );
    assert!(b.handle(Input::Peer(S::Initialising)).is_empty());
    assert_eq!(
        b.handle(Input::Peer(S::Initialised)),
        vec![Action::StartDevice]
    );
    assert!(b.device_running());
    assert_eq!(
        b.handle(Input::Ready),
        vec![Action::Switch(S::Connected), Action::Activate]
    );
    assert_eq!(b.phase(), Phase::Running);
    // Repeats change nothing.
    assert!(b.handle(Input::Peer(S::Connected)).is_empty());
    assert!(b.handle(Input::Peer(S::Reconfiguring)).is_empty());
    assert!(b.handle(Input::Peer(S::Reconfigured)).is_empty());
}

#[test]
fn frontend_fresh_handshake() {
    let mut f = FrontendMachine::new();
    let a = f.handle(Input::Start {
        peer: S::Initialising,
    });
    assert_eq!(a, vec![Action::Switch(S::Initialising)]);
    assert_eq!(
        f.handle(Input::Peer(S::InitWait)),
        vec![Action::StartDevice]
    );
    assert_eq!(
        f.handle(Input::Ready),
        vec![Action::PublishKeys, Action::Switch(S::Initialised)]
    );
    // The backend has not connected yet: InitWait again is no news.
    assert!(f.handle(Input::Peer(S::InitWait)).is_empty());
    assert_eq!(
        f.handle(Input::Peer(S::Connected)),
        vec![Action::Switch(S::Connected), Action::Activate]
    );
    assert_eq!(f.phase(), Phase::Running);
}

#[test]
fn frontend_tolerates_a_backend_that_skipped_initwait() {
    let mut f = FrontendMachine::new();
    f.handle(Input::Start {
        peer: S::Initialised,
    });
    assert_eq!(f.phase(), Phase::Starting);
}

#[test]
fn backend_tolerates_a_frontend_that_skipped_initialised() {
    let mut b = BackendMachine::new();
    b.handle(Input::Start {
        peer: S::Initialising,
    });
    assert_eq!(
        b.handle(Input::Peer(S::Connected)),
        vec![Action::StartDevice]
    );
}

#[test]
fn restarted_backend_resets_a_stale_frontend_first() {
    let mut b = BackendMachine::new();
    let a = b.handle(Input::Start { peer: S::Connected });
    assert_eq!(a, vec![Action::Switch(S::Closed)]);
    assert_eq!(b.phase(), Phase::AwaitReset);
    assert!(
        b.handle(Input::Peer(S::Initialised)).is_empty(),
        "still stale"
    );
    // Coalesced: the frontend's Closing/Closed were never seen.
    assert_eq!(
        b.handle(Input::Peer(S::Initialising)),
        vec![Action::PublishFeatures, Action::Switch(S::InitWait)]
    );
}

#[test]
fn backend_errors_then_closes_and_stays_failed() {
    let mut b = BackendMachine::new();
    b.handle(Input::Start {
        peer: S::Initialised,
    });
    let mut b = BackendMachine::new();
    b.handle(Input::Start {
        peer: S::Initialising,
    });
    b.handle(Input::Peer(S::Initialised));
    let a = b.handle(Input::Failed("ring-ref: not a number".into()));
    assert_eq!(
        a,
        vec![
            Action::StopDevice,
            Action::WriteError("ring-ref: not a number".into()),
            Action::Switch(S::Closing),
            Action::Switch(S::Closed),
        ]
    );
    // The broken frontend stays as it is: no retry.
    assert!(b.handle(Input::Peer(S::Initialised)).is_empty());
    assert!(b.handle(Input::Peer(S::Closed)).is_empty());
    // It starts over: try again, and clear the error once connected.
    assert_eq!(
        b.handle(Input::Peer(S::Initialising)),
        vec![Action::PublishFeatures, Action::Switch(S::InitWait)]
    );
    b.handle(Input::Peer(S::Initialised));
    assert_eq!(
        b.handle(Input::Ready),
        vec![
            Action::Switch(S::Connected),
            Action::Activate,
            Action::ClearError
        ]
    );
}

#[test]
fn frontend_closing_makes_backend_close() {
    let mut b = connected_backend();
    assert_eq!(
        b.handle(Input::Peer(S::Closing)),
        vec![Action::StopDevice, Action::Switch(S::Closing)]
    );
    assert_eq!(
        b.handle(Input::Peer(S::Closed)),
        vec![Action::Switch(S::Closed)]
    );
    // The frontend comes back: so does the backend.
    assert_eq!(
        b.handle(Input::Peer(S::Initialising)),
        vec![Action::PublishFeatures, Action::Switch(S::InitWait)]
    );
}

#[test]
fn backend_closing_makes_frontend_close_and_wait_again() {
    let mut f = connected_frontend();
    let a = f.handle(Input::Peer(S::Closing));
    assert_eq!(
        a,
        vec![
            Action::StopDevice,
            Action::Switch(S::Closing),
            Action::Switch(S::Closed),
            Action::Switch(S::Initialising)
        ]
    );
    assert_eq!(f.phase(), Phase::Waiting);
    assert_eq!(
        f.handle(Input::Peer(S::InitWait)),
        vec![Action::StartDevice]
    );
}

#[test]
fn offline_closes_and_does_not_reconnect() {
    let mut b = connected_backend();
    assert_eq!(
        b.handle(Input::Offline),
        vec![Action::StopDevice, Action::Switch(S::Closing)]
    );
    assert_eq!(
        b.handle(Input::Peer(S::Initialising)),
        vec![Action::Switch(S::Closed)],
        "the frontend closed and started over (coalesced)"
    );
    assert!(b.handle(Input::Peer(S::Initialising)).is_empty());
    assert_eq!(b.phase(), Phase::Closed);
}

#[test]
fn shutdown_closes_both_ways() {
    let mut b = connected_backend();
    assert_eq!(
        b.handle(Input::Shutdown),
        vec![
            Action::StopDevice,
            Action::Switch(S::Closing),
            Action::Switch(S::Closed),
            Action::Exit
        ]
    );
    assert!(b.handle(Input::Peer(S::Initialising)).is_empty(), "done");
    let mut f = connected_frontend();
    assert_eq!(
        f.handle(Input::Shutdown),
        vec![
            Action::StopDevice,
            Action::Switch(S::Closing),
            Action::Switch(S::Closed),
            Action::Exit
        ]
    );
}

#[test]
fn removal_and_peer_death() {
    let mut b = connected_backend();
    assert_eq!(
        b.handle(Input::Removed),
        vec![Action::StopDevice, Action::Exit]
    );
    let mut b = connected_backend();
    assert_eq!(
        b.handle(Input::PeerGone),
        vec![
            Action::StopDevice,
            Action::Switch(S::Closed),
            Action::RemoveNodes,
            Action::Exit
        ]
    );
    let mut f = connected_frontend();
    assert_eq!(
        f.handle(Input::Ended),
        vec![Action::StopDevice, Action::Switch(S::Initialising)]
    );
    // The dead backend's node still says Connected: wait.
    assert!(f.handle(Input::Peer(S::Connected)).is_empty());
}

#[test]
fn frontend_failure_retries_only_after_the_backend_moves() {
    let mut f = FrontendMachine::new();
    f.handle(Input::Start { peer: S::InitWait });
    let a = f.handle(Input::Failed("grant table full".into()));
    assert_eq!(switches(&a), vec![S::Closing, S::Closed]);
    assert!(f.handle(Input::Peer(S::InitWait)).is_empty());
    assert_eq!(
        f.handle(Input::Peer(S::Closed)),
        vec![Action::Switch(S::Initialising)]
    );
}

fn connected_backend() -> BackendMachine {
    let mut b = BackendMachine::new();
    b.handle(Input::Start {
        peer: S::Initialising,
    });
    b.handle(Input::Peer(S::Initialised));
    b.handle(Input::Ready);
    assert_eq!(b.phase(), Phase::Running);
    b
}

fn connected_frontend() -> FrontendMachine {
    let mut f = FrontendMachine::new();
    f.handle(Input::Start { peer: S::InitWait });
    f.handle(Input::Ready);
    f.handle(Input::Peer(S::Connected));
    assert_eq!(f.phase(), Phase::Running);
    f
}

// ------------------------------------------------------------ the world

/// A tiny xorshift generator, so the test needs no crate and is repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One end in the world: its machine, its state node, whether its watch on
/// the peer has fired since it last looked, its device.
struct End<M> {
    m: M,
    state: XenbusState,
    watch_fired: bool,
    /// The device's connection: `Some(generation of keys it uses)`.
    device: Option<u64>,
    /// The device finished starting, waiting to report Ready.
    starting: bool,
    /// It reported Ready and was activated.
    active: bool,
}

impl<M> End<M> {
    fn new(m: M) -> End<M> {
        End {
            m,
            state: S::Initialising,
            watch_fired: true,
            device: None,
            starting: false,
            active: false,
        }
    }
}

struct World {
    b: End<BackendMachine>,
    f: End<FrontendMachine>,
    /// Generation of the keys the frontend last published.
    keys: u64,
    /// Generation of the frontend's shared rings (0: none shared).
    shared: u64,
    next_gen: u64,
    errors: Vec<String>,
}

impl World {
    fn new() -> World {
        World {
            b: End::new(BackendMachine::new()),
            f: End::new(FrontendMachine::new()),
            keys: 0,
            shared: 0,
            next_gen: 1,
            errors: Vec::new(),
        }
    }

    fn run_backend(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Switch(s) => {
                    if self.b.state != s {
                        self.b.state = s;
                        self.f.watch_fired = true;
                    }
                }
                Action::StartDevice => {
                    // Maps the rings the published keys name, if they are
                    // still shared; a stale map fails.
                    self.b.device = Some(self.keys);
                    self.b.starting = true;
                }
                Action::StopDevice => {
                    if self.b.device.take().is_some() && self.f.active {
                        // The frontend's ring sees the backend go.
                        self.f_device_dies();
                    }
                    self.b.starting = false;
                    self.b.active = false;
                }
                Action::Activate => self.b.active = true,
                Action::WriteError(e) => self.errors.push(e),
                Action::PublishFeatures | Action::ClearError => {}
                other => panic!("backend did {other:?}"),
            }
        }
    }

    fn run_frontend(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Switch(s) => {
                    if self.f.state != s {
                        self.f.state = s;
                        self.b.watch_fired = true;
                    }
                }
                Action::StartDevice => {
                    let g = self.next_gen;
                    self.next_gen += 1;
                    self.f.device = Some(g);
                    self.shared = g;
                    self.f.starting = true;
                }
                Action::PublishKeys => self.keys = self.f.device.expect("device started"),
                Action::StopDevice => {
                    self.f.device = None;
                    self.shared = 0;
                    self.f.starting = false;
                    self.f.active = false;
                    // A backend mapping our rings sees us go.
                    if self.b.active {
                        self.b.active = false;
                        let a = self.b.m.handle(Input::Ended);
                        self.run_backend(a);
                    }
                }
                Action::Activate => self.f.active = true,
                Action::WriteError(e) => self.errors.push(e),
                Action::ClearError => {}
                other => panic!("frontend did {other:?}"),
            }
        }
    }

    fn f_device_dies(&mut self) {
        self.f.active = false;
        let a = self.f.m.handle(Input::Ended);
        self.run_frontend(a);
    }

    /// One random step; `faults` allows restarts (6: backend only, 8:
    /// both ends).
    fn step(&mut self, rng: &mut Rng, faults: usize) -> bool {
        let choice = rng.below(faults.max(6));
        match choice {
            0 if self.b.watch_fired => {
                self.b.watch_fired = false;
                let a = self.b.m.handle(Input::Peer(self.f.state));
                self.run_backend(a);
            }
            1 if self.f.watch_fired => {
                self.f.watch_fired = false;
                let a = self.f.m.handle(Input::Peer(self.b.state));
                self.run_frontend(a);
            }
            2 if self.b.starting => {
                self.b.starting = false;
                let ok = self.b.device == Some(self.shared) && self.shared != 0;
                let input = if ok {
                    Input::Ready
                } else {
                    Input::Failed(format!("stale ring {:?}", self.b.device))
                };
                let a = self.b.m.handle(input);
                self.run_backend(a);
            }
            3 if self.f.starting => {
                self.f.starting = false;
                let a = self.f.m.handle(Input::Ready);
                self.run_frontend(a);
            }
            4 | 5 => return false,
            6 => {
                // The backend daemon is killed and restarted: its device
                // goes with it (the frontend's ring notices, maybe later).
                let had = self.b.device.take().is_some() && self.f.active;
                self.b = End {
                    state: self.b.state,
                    watch_fired: true,
                    ..End::new(BackendMachine::new())
                };
                let a = self.b.m.handle(Input::Start { peer: self.f.state });
                if had && rng.below(2) == 0 {
                    self.f_device_dies();
                    self.run_backend(a);
                } else {
                    self.run_backend(a);
                    if had {
                        self.f_device_dies();
                    }
                }
            }
            7 => {
                // The frontend daemon is killed and restarted.
                let had = self.f.device.take().is_some();
                self.shared = 0;
                self.f = End {
                    state: self.f.state,
                    watch_fired: true,
                    ..End::new(FrontendMachine::new())
                };
                if had && self.b.active {
                    self.b.active = false;
                    let a = self.b.m.handle(Input::Ended);
                    self.run_backend(a);
                }
                let a = self.f.m.handle(Input::Start { peer: self.b.state });
                self.run_frontend(a);
            }
            _ => return false,
        }
        true
    }

    fn quiet(&self) -> bool {
        !self.b.watch_fired && !self.f.watch_fired && !self.b.starting && !self.f.starting
    }
}

fn run_world(faults: usize, check_errors: bool) {
    for seed in 1..=3000u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut w = World::new();
        let a = w.b.m.handle(Input::Start {
            peer: S::Initialising,
        });
        w.run_backend(a);
        let a = w.f.m.handle(Input::Start { peer: w.b.state });
        w.run_frontend(a);
        for _ in 0..rng.below(60) {
            w.step(&mut rng, faults);
        }
        // No more faults: it must settle, connected.
        let mut steps = 0;
        while !w.quiet() {
            w.step(&mut rng, 6);
            steps += 1;
            assert!(steps < 10_000, "seed {seed}: no progress");
        }
        assert_eq!(
            (w.b.state, w.f.state, w.b.m.phase(), w.f.m.phase()),
            (S::Connected, S::Connected, Phase::Running, Phase::Running),
            "seed {seed}: errors {:?}",
            w.errors
        );
        assert!(w.b.active && w.f.active, "seed {seed}");
        assert_eq!(
            w.b.device,
            Some(w.shared),
            "seed {seed}: maps the live rings"
        );
        if check_errors {
            assert!(
                w.errors.is_empty(),
                "seed {seed}: a backend restart must never look like a broken device: {:?}",
                w.errors
            );
        }
    }
}

#[test]
fn randomised_world_with_backend_restarts_ends_connected_without_errors() {
    run_world(7, true);
}

/// A frontend killed while the backend maps its rings makes that map fail
/// (an error node, as on Xen); the device must still recover.
#[test]
fn randomised_world_with_both_ends_restarting_ends_connected() {
    run_world(8, false);
}
