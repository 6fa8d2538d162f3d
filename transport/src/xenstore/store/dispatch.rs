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
    quotas: Quotas,
}

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
            quotas,
        }
    }

    /// The quotas.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// Whether `domid` is introduced (dom0 always is).
    pub fn is_introduced(&self, domid: u16) -> bool {
        self.introduced.contains(&domid)
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
        let mut changes = domain::create_home(&mut self.tree, domid);
        if domid != PRIV_DOMID {
            changes.extend(domain::special_changes(&self.tree, INTRODUCE_DOMAIN, domid));
        }
        self.fire(&changes)
    }

    /// Releases `domid`: ends its connections' watches and transactions,
    /// removes the nodes it owns, and fires `@releaseDomain`. Nothing
    /// happens for dom0 or a domain not introduced.
    pub fn release(&mut self, domid: u16) -> Vec<Event> {
        if domid == PRIV_DOMID || !self.introduced.remove(&domid) {
            return Vec::new();
        }
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
                let path = resolve(domid, args[0], true)?;
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
            XsType::GetQuota => self.get_quota(p),
            _ => Err(XsErrno::Enosys),
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
            ..
        } = self;
        let tx = match msg.tx_id {
            0 => None,
            id => conns.get_mut(&conn).and_then(|c| c.txns.get_mut(&id)),
        };
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
            XsType::SetPerms => ops::set_perms(&mut db, p),
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
        let max = self.quotas.transactions as usize;
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
            let changes = txn.commit(&mut self.tree, domid, self.quotas.nodes)?;
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
        let path = resolve(domid, args[0], true)?;
        if self.watches.contains(conn, &path.abs, args[1]) {
            return Err(XsErrno::Eexist);
        }
        let max = self.quotas.watches as usize;
        if domid != PRIV_DOMID && max > 0 && self.watches.count_domain(domid) >= max {
            return Err(XsErrno::Enospc);
        }
        let ev = self
            .watches
            .add(conn, domid, path.abs, path.prefix, args[1].to_vec());
        events.push(ev);
        Ok(OK.to_vec())
    }

    fn get_quota(&self, payload: &[u8]) -> Result<Vec<u8>, XsErrno> {
        let args = strings(payload);
        let entries = self.quotas.entries();
        let name = match args.len() {
            0 => {
                let names: Vec<&str> = entries.iter().map(|e| e.0).collect();
                return Ok(text(names.join(" ")));
            }
            1 => args[0],
            2 => {
                if !self.is_introduced(parse_domid(args[0])?) {
                    return Err(XsErrno::Enoent);
                }
                args[1]
            }
            _ => return Err(XsErrno::Einval),
        };
        entries
            .iter()
            .find(|e| e.0.as_bytes() == name)
            .map(|e| text(e.1.to_string()))
            .ok_or(XsErrno::Einval)
    }
}
