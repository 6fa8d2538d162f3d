//! [`Store`]: one request in, one [`Outcome`] out.
//!
//! Order of checks, as C xenstored's `process_message()`: an unknown type
//! (or one only the server sends) is `ENOSYS`; a privileged-only type from
//! an unprivileged domain is `EACCES`; a `tx_id` naming no open transaction
//! of the connection is `ENOENT` (WATCH and UNWATCH ignore `tx_id`); then
//! the request itself. A payload over the limit (which the server never
//! passes on: it closes such a connection) is `E2BIG`. A reply that would exceed the payload limit becomes
//! `E2BIG`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::db::Db;
use super::domain::{self, DOMID_SELF, INTRODUCE_DOMAIN, RELEASE_DOMAIN};
use super::ops::{self, onearg, strings, OK};
use super::path::{home, parse_domid, resolve};
use super::tree::{Tree, PRIV_DOMID};
use super::txn::Txn;
use super::watch::{Change, Watches};
use super::{ConnId, Event, Outcome, Quotas};
use crate::abi::xs_wire::{XsErrno, XsType, XENSTORE_PAYLOAD_MAX};
use crate::xenstore::XsMsg;

/// State of one connection.
#[derive(Debug)]
struct ConnState {
    domid: u16,
    txns: BTreeMap<u32, Txn>,
    next_tx: u32,
}

/// The whole store: tree, watches, transactions, introduced domains.
///
/// Dom0 is privileged (every right, no quota) and always introduced; its
/// home `/local/domain/0` exists from the start.
#[derive(Debug)]
pub struct Store {
    tree: Tree,
    watches: Watches,
    conns: HashMap<ConnId, ConnState>,
    introduced: BTreeSet<u16>,
    /// Released domains not introduced again (for [`Store::leftovers`]).
    released: BTreeSet<u16>,
    /// The global quotas: defaults of domains introduced later.
    quotas: Quotas,
    /// Each introduced domain's quotas.
    dom_quotas: HashMap<u16, Quotas>,
}

/// The server features ([`feature`] bits) GET_FEATURE reports: none.
/// `RECONNECTION` and `ERROR` belong to a ring page, which socket
/// connections do not have; WATCH takes no depth (`WATCHDEPTH`) and no
/// permission may name `DOMID_ANY`.
///
/// [`feature`]: crate::abi::xs_wire::feature
const SERVER_FEATURES: u32 = 0;

fn privileged_only(ty: XsType) -> bool {
    matches!(
        ty,
        XsType::Control
            | XsType::Introduce
            | XsType::Release
            | XsType::IsDomainIntroduced
            | XsType::Resume
            | XsType::SetTarget
            | XsType::SetFeature
            | XsType::GetQuota
            | XsType::SetQuota
    )
}

/// C's `atoi()`: leading decimal digits, 0 if none.
fn atoi(raw: &[u8]) -> u64 {
    raw.iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |n, b| {
            n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
        })
}

fn text(s: String) -> Vec<u8> {
    let mut v = s.into_bytes();
    v.push(0);
    v
}

impl Store {
    /// A store with C xenstored's initial tree and dom0's home.
    pub fn new(quotas: Quotas) -> Store {
        let mut tree = domain::initial_tree();
        domain::create_home(&mut tree, PRIV_DOMID);
        Store {
            tree,
            watches: Watches::default(),
            conns: HashMap::new(),
            introduced: BTreeSet::from([PRIV_DOMID]),
            released: BTreeSet::new(),
            dom_quotas: HashMap::from([(PRIV_DOMID, quotas)]),
            quotas,
        }
    }

    /// The global quotas (what a domain introduced now starts with).
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// Whether `domid` is introduced (dom0 always is).
    pub fn is_introduced(&self, domid: u16) -> bool {
        self.introduced.contains(&domid)
    }

    /// The quotas that bind `domid`: its own (set when it was introduced
    /// from the global ones, changed by SET_QUOTA), else the global ones.
    pub fn quotas_for(&self, domid: u16) -> &Quotas {
        self.dom_quotas.get(&domid).unwrap_or(&self.quotas)
    }

    /// What is still in the store of domains released (and not
    /// introduced again): their homes, nodes they own, permission entries
    /// naming them; one line each, empty if nothing. Releasing removes all
    /// of it, so anything here was written afterwards (a dom0 writer
    /// recreating a dead domain's nodes) and is a leak.
    pub fn leftovers(&self) -> Vec<String> {
        domain::leftovers(&self.tree, &self.released)
    }

    /// Number of nodes in the store (special nodes included).
    pub fn node_count(&self) -> usize {
        self.tree.len()
    }

    /// Handles one request of connection `conn`, which speaks for `domid`
    /// (a connection keeps the domid of its first request).
    pub fn handle(&mut self, conn: ConnId, domid: u16, msg: &XsMsg) -> Outcome {
        let mut events = Vec::new();
        let result = self.dispatch(conn, domid, msg, &mut events);
        let reply = match result {
            Ok(payload) if payload.len() <= XENSTORE_PAYLOAD_MAX => XsMsg {
                ty: msg.ty,
                req_id: msg.req_id,
                tx_id: msg.tx_id,
                payload,
            },
            Ok(_) => XsMsg::error(msg.req_id, msg.tx_id, XsErrno::E2big),
            Err(e) => XsMsg::error(msg.req_id, msg.tx_id, e),
        };
        Outcome { reply, events }
    }

    /// Forgets a connection: its watches and open transactions.
    pub fn disconnect(&mut self, conn: ConnId) {
        self.watches.remove_conn(conn);
        self.conns.remove(&conn);
    }

    /// Introduces `domid` (as the toolstack and INTRODUCE do): creates its
    /// home if missing and fires `@introduceDomain`. Nothing happens for a
    /// domain introduced already.
    pub fn introduce(&mut self, domid: u16) -> Vec<Event> {
        if !self.introduced.insert(domid) {
            return Vec::new();
        }
        self.released.remove(&domid);
        self.dom_quotas.insert(domid, self.quotas);
        let mut changes = domain::create_home(&mut self.tree, domid);
        if domid != PRIV_DOMID {
            changes.extend(domain::special_changes(&self.tree, INTRODUCE_DOMAIN, domid));
        }
        self.fire(&changes)
    }

    /// Releases `domid`: ends its connections' watches and transactions,
    /// removes its home and the nodes it owns, forgets its quotas, and
    /// fires `@releaseDomain`. Nothing happens for dom0 or a domain not
    /// introduced.
    pub fn release(&mut self, domid: u16) -> Vec<Event> {
        if domid == PRIV_DOMID || !self.introduced.remove(&domid) {
            return Vec::new();
        }
        self.released.insert(domid);
        self.dom_quotas.remove(&domid);
        self.watches.remove_domain(domid);
        for st in self.conns.values_mut().filter(|c| c.domid == domid) {
            st.txns.clear();
        }
        let mut changes = domain::remove_domain_nodes(&mut self.tree, domid, &self.quotas);
        changes.extend(domain::special_changes(&self.tree, RELEASE_DOMAIN, domid));
        self.fire(&changes)
    }

    fn fire(&self, changes: &[Change]) -> Vec<Event> {
        changes.iter().flat_map(|c| self.watches.fire(c)).collect()
    }

    fn open_transactions(&self, domid: u16) -> usize {
        self.conns
            .values()
            .filter(|c| c.domid == domid)
            .map(|c| c.txns.len())
            .sum()
    }

    fn dispatch(
        &mut self,
        conn: ConnId,
        domid: u16,
        msg: &XsMsg,
        events: &mut Vec<Event>,
    ) -> Result<Vec<u8>, XsErrno> {
        if msg.payload.len() > XENSTORE_PAYLOAD_MAX {
            return Err(XsErrno::E2big);
        }
        let ty = match XsType::from_raw(msg.ty) {
            Some(XsType::WatchEvent | XsType::Error) | None => return Err(XsErrno::Enosys),
            Some(t) => t,
        };
        if privileged_only(ty) && domid != PRIV_DOMID {
            return Err(XsErrno::Eacces);
        }
        let st = self.conns.entry(conn).or_insert_with(|| ConnState {
            domid,
            txns: BTreeMap::new(),
            next_tx: 1,
        });
        let uses_tx = !matches!(ty, XsType::Watch | XsType::Unwatch);
        if uses_tx && msg.tx_id != 0 && !st.txns.contains_key(&msg.tx_id) {
            return Err(XsErrno::Enoent);
        }
        let p = &msg.payload[..];
        match ty {
            XsType::Read
            | XsType::Write
            | XsType::Mkdir
            | XsType::Rm
            | XsType::Directory
            | XsType::DirectoryPart
            | XsType::GetPerms
            | XsType::SetPerms => self.node_op(conn, domid, ty, msg, events),
            XsType::TransactionStart => self.transaction_start(conn, domid, msg.tx_id),
            XsType::TransactionEnd => self.transaction_end(conn, domid, msg, events),
            XsType::Watch => self.watch(conn, domid, p, events),
            XsType::Unwatch => {
                let args = strings(p);
                if args.len() != 2 {
                    return Err(XsErrno::Einval);
                }
                let path = resolve(domid, args[0], true, self.path_limit(domid))?;
                match self.watches.remove(conn, &path.abs, args[1]) {
                    true => Ok(OK.to_vec()),
                    false => Err(XsErrno::Enoent),
                }
            }
            XsType::ResetWatches => {
                self.watches.remove_conn(conn);
                if let Some(st) = self.conns.get_mut(&conn) {
                    st.txns.clear();
                }
                Ok(OK.to_vec())
            }
            XsType::GetDomainPath => Ok(text(home(parse_domid(onearg(p)?)?))),
            XsType::IsDomainIntroduced => {
                let d = parse_domid(onearg(p)?)?;
                let yes = d == DOMID_SELF || self.is_introduced(d);
                Ok(if yes { b"T\0" } else { b"F\0" }.to_vec())
            }
            XsType::Introduce => {
                let args = strings(p);
                if args.len() < 3 {
                    return Err(XsErrno::Einval);
                }
                let d = parse_domid(args[0])?;
                if atoi(args[2]) == 0 {
                    return Err(XsErrno::Einval);
                }
                events.extend(self.introduce(d));
                Ok(OK.to_vec())
            }
            XsType::Release | XsType::Resume => {
                let d = parse_domid(onearg(p)?)?;
                if d == PRIV_DOMID {
                    return Err(XsErrno::Einval);
                }
                if !self.is_introduced(d) {
                    return Err(XsErrno::Enoent);
                }
                if ty == XsType::Release {
                    events.extend(self.release(d));
                }
                Ok(OK.to_vec())
            }
            XsType::Control => {
                if p.is_empty() || !p.contains(&0) {
                    return Err(XsErrno::Einval);
                }
                domain::control(&strings(p), &self.quotas)
            }
            XsType::GetFeature => self.get_feature(domid, p),
            XsType::SetFeature => self.set_feature(p),
            XsType::GetQuota => self.get_quota(p),
            XsType::SetQuota => self.set_quota(p),
            XsType::SetTarget => Err(XsErrno::Enosys),
            XsType::WatchEvent | XsType::Error => Err(XsErrno::Enosys),
        }
    }

    fn node_op(
        &mut self,
        conn: ConnId,
        domid: u16,
        ty: XsType,
        msg: &XsMsg,
        events: &mut Vec<Event>,
    ) -> Result<Vec<u8>, XsErrno> {
        let Store {
            tree,
            watches,
            conns,
            quotas,
            dom_quotas,
            introduced,
            ..
        } = self;
        let tx = match msg.tx_id {
            0 => None,
            id => conns.get_mut(&conn).and_then(|c| c.txns.get_mut(&id)),
        };
        let quotas = dom_quotas.get(&domid).unwrap_or(quotas);
        let mut db = Db::new(tree, tx, domid, quotas);
        let p = &msg.payload[..];
        let result = match ty {
            XsType::Read => ops::read(&mut db, p),
            XsType::Write => ops::write(&mut db, p),
            XsType::Mkdir => ops::mkdir(&mut db, p),
            XsType::Rm => ops::rm(&mut db, p),
            XsType::Directory => ops::directory(&mut db, p),
            XsType::DirectoryPart => ops::directory_part(&mut db, p),
            XsType::GetPerms => ops::get_perms(&mut db, p),
            XsType::SetPerms => ops::set_perms(&mut db, p, |d| introduced.contains(&d)),
            _ => Err(XsErrno::Enosys),
        };
        for c in db.into_changes() {
            events.extend(watches.fire(&c));
        }
        result
    }

    fn transaction_start(
        &mut self,
        conn: ConnId,
        domid: u16,
        tx_id: u32,
    ) -> Result<Vec<u8>, XsErrno> {
        if tx_id != 0 {
            // Transactions do not nest.
            return Err(XsErrno::Ebusy);
        }
        let max = self.quotas_for(domid).transactions as usize;
        if domid != PRIV_DOMID && max > 0 && self.open_transactions(domid) >= max {
            return Err(XsErrno::Enospc);
        }
        let st = self.conns.get_mut(&conn).ok_or(XsErrno::Eio)?;
        let id = loop {
            let id = st.next_tx;
            st.next_tx = st.next_tx.wrapping_add(1);
            if id != 0 && !st.txns.contains_key(&id) {
                break id;
            }
        };
        st.txns.insert(id, Txn::new());
        Ok(text(id.to_string()))
    }

    fn transaction_end(
        &mut self,
        conn: ConnId,
        domid: u16,
        msg: &XsMsg,
        events: &mut Vec<Event>,
    ) -> Result<Vec<u8>, XsErrno> {
        let commit = match onearg(&msg.payload)? {
            b"T" => true,
            b"F" => false,
            _ => return Err(XsErrno::Einval),
        };
        let txn = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.txns.remove(&msg.tx_id))
            .ok_or(XsErrno::Enoent)?;
        if commit {
            let nodes = self.quotas_for(domid).nodes;
            let changes = txn.commit(&mut self.tree, domid, nodes)?;
            events.extend(self.fire(&changes));
        }
        Ok(OK.to_vec())
    }

    fn watch(
        &mut self,
        conn: ConnId,
        domid: u16,
        payload: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<Vec<u8>, XsErrno> {
        let args = strings(payload);
        if args.len() != 2 {
            return Err(XsErrno::Einval);
        }
        let path = resolve(domid, args[0], true, self.path_limit(domid))?;
        if self.watches.contains(conn, &path.abs, args[1]) {
            return Err(XsErrno::Eexist);
        }
        let max = self.quotas_for(domid).watches as usize;
        if domid != PRIV_DOMID && max > 0 && self.watches.count_domain(domid) >= max {
            return Err(XsErrno::Enospc);
        }
        let ev = self
            .watches
            .add(conn, domid, path.abs, path.prefix, args[1].to_vec());
        events.push(ev);
        Ok(OK.to_vec())
    }

    fn path_limit(&self, domid: u16) -> usize {
        self.quotas_for(domid).path_limit(domid == PRIV_DOMID)
    }

    /// An introduced domain named by a payload argument: `EINVAL` if it
    /// is no domid, `ENOENT` if no such domain exists.
    fn existing(&self, raw: &[u8]) -> Result<u16, XsErrno> {
        let d = parse_domid(raw)?;
        match self.is_introduced(d) {
            true => Ok(d),
            false => Err(XsErrno::Enoent),
        }
    }

    /// GET_FEATURE `[<domid>|]`: the features the server supports for
    /// the caller, or (dom0 only) for `<domid>`.
    fn get_feature(&self, domid: u16, payload: &[u8]) -> Result<Vec<u8>, XsErrno> {
        match strings(payload)[..] {
            [] => {}
            [_] if domid != PRIV_DOMID => return Err(XsErrno::Eacces),
            [d] => {
                self.existing(d)?;
            }
            _ => return Err(XsErrno::Einval),
        }
        Ok(text(SERVER_FEATURES.to_string()))
    }

    /// SET_FEATURE `<domid>|<value>|`: refused once the domain is
    /// introduced (`EBUSY`), and every domain the store knows is.
    fn set_feature(&self, payload: &[u8]) -> Result<Vec<u8>, XsErrno> {
        let [d, value] = strings(payload)[..] else {
            return Err(XsErrno::Einval);
        };
        let d = self.existing(d)?;
        if self.is_introduced(d) {
            return Err(XsErrno::Ebusy);
        }
        // Unreachable while every known domain is introduced; kept for
        // the order of C's checks.
        if atoi(value) & !u64::from(SERVER_FEATURES) != 0 {
            return Err(XsErrno::Einval);
        }
        Ok(OK.to_vec())
    }

    /// GET_QUOTA `[[<domid>|]<quota>|]`: the names, a global value, or a
    /// domain's value.
    fn get_quota(&self, payload: &[u8]) -> Result<Vec<u8>, XsErrno> {
        let (quotas, name) = match strings(payload)[..] {
            [] => {
                let names: Vec<&str> = self.quotas.entries().iter().map(|e| e.0).collect();
                return Ok(text(names.join(" ")));
            }
            [name] => (&self.quotas, name),
            [d, name] => (self.quotas_for(self.existing(d)?), name),
            _ => return Err(XsErrno::Einval),
        };
        quotas
            .entries()
            .iter()
            .find(|e| e.0.as_bytes() == name)
            .map(|e| text(e.1.to_string()))
            .ok_or(XsErrno::Einval)
    }

    /// SET_QUOTA `[<domid>|]<quota>|<value>|`: a global value (the
    /// default of domains introduced later) or a domain's; 0 turns the
    /// check off; `4294967295` (C's "disabled" marker) is `EINVAL`.
    fn set_quota(&mut self, payload: &[u8]) -> Result<Vec<u8>, XsErrno> {
        let (domid, name, value) = match strings(payload)[..] {
            [name, value] => (None, name, value),
            [d, name, value] => (Some(self.existing(d)?), name, value),
            _ => return Err(XsErrno::Einval),
        };
        let value = match u32::try_from(atoi(value)) {
            Ok(v) if v != u32::MAX => v,
            _ => return Err(XsErrno::Einval),
        };
        let quotas = match domid {
            None => &mut self.quotas,
            Some(d) => self.dom_quotas.entry(d).or_insert(self.quotas),
        };
        *quotas.get_mut(name).ok_or(XsErrno::Einval)? = value;
        Ok(OK.to_vec())
    }
}
