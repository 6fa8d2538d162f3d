//! Where the store follows C xenstored to the letter: a released domain
//! leaves nothing behind, path lengths, SET_PERMS owners and special
//! paths, the node-size (value-size) limit, and GET/SET_FEATURE,
//! GET/SET_QUOTA. Each test names the C behaviour it pins down.

use super::tests::{z, T};
use super::*;
use crate::abi::xs_wire::{XsErrno, XENSTORE_REL_PATH_MAX};

// ---- a released domain leaves nothing behind ----

#[test]
fn release_removes_the_home_and_a_new_domain_reads_its_own() {
    let mut t = T::new();
    t.write(1, "data/x", "v").unwrap();
    t.write(0, "/local/domain/1/toolstack-note", "n").unwrap();
    t.watch(20, 0, "/local/domain/1", "home");
    let evs = t.s.release(1);
    assert!(
        evs.contains(&tests::ev(20, "/local/domain/1", "home")),
        "{evs:?}"
    );
    for p in [
        "/local/domain/1",
        "/local/domain/1/name",
        "/local/domain/1/toolstack-note",
    ] {
        assert_eq!(t.read(0, p), Err(XsErrno::Enoent), "{p}");
    }
    let list = t.dir(0, "/local/domain").unwrap();
    assert!(
        !list.split(|b| *b == 0).any(|c| c == b"1"),
        "{:?}",
        String::from_utf8_lossy(&list)
    );
    assert!(t.s.leftovers().is_empty(), "{:?}", t.s.leftovers());

    // The same domid again: a fresh home the new domain may read.
    t.s.introduce(1);
    assert_eq!(t.read(1, "name").unwrap(), "domain-1");
    assert_eq!(t.read(1, "domid").unwrap(), "1");
    assert_eq!(t.perms(1, "/local/domain/1").unwrap(), b"n0\0r1\0");
    assert_eq!(t.read(1, "toolstack-note"), Err(XsErrno::Enoent));
    t.write(1, "data/y", "w").unwrap();
}

#[test]
fn introduce_repairs_a_home_that_was_left_or_made_beforehand() {
    let mut t = T::new();
    // Dom0 prepares domain 7's home before the domain exists (as libxl
    // does), with permissions that would lock the domain out.
    t.write(0, "/local/domain/7/name", "guest").unwrap();
    t.write(0, "/local/domain/7/device/vif/0/state", "1")
        .unwrap();
    assert_eq!(t.perms(0, "/local/domain/7").unwrap(), b"n0\0");
    t.s.introduce(7);
    assert_eq!(t.read(7, "name").unwrap(), "guest", "the value stays");
    assert_eq!(t.read(7, "domid").unwrap(), "7");
    assert_eq!(t.perms(7, "/local/domain/7").unwrap(), b"n0\0r7\0");
    assert_eq!(t.perms(7, "name").unwrap(), b"n0\0r7\0");
    assert_eq!(t.perms(7, "device").unwrap(), b"n7\0");
    t.write(7, "device/vif/0/state", "4").unwrap_err();
    t.write(7, "data/mine", "x").unwrap();
}

#[test]
fn leftovers_name_nodes_of_released_domains() {
    let mut t = T::new();
    t.s.release(2);
    assert!(t.s.leftovers().is_empty());
    // A dom0 writer recreates part of the released domain's home.
    t.write(0, "/local/domain/2/device/vif/0/state", "6")
        .unwrap();
    let l = t.s.leftovers();
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(l[0].contains("/local/domain/2"), "{l:?}");
    assert!(l[0].contains("domain 2"), "{l:?}");
    // A future domain's home prepared by dom0 is not a leftover.
    t.write(0, "/local/domain/9/name", "later").unwrap();
    assert_eq!(t.s.leftovers().len(), 1);
    t.rm(0, "/local/domain/2").unwrap();
    assert!(t.s.leftovers().is_empty());
    // Introducing the domain again makes the home its own.
    t.write(0, "/local/domain/2/x", "").unwrap();
    t.s.introduce(2);
    assert!(t.s.leftovers().is_empty());
}

// ---- paths ----

#[test]
fn paths_over_2048_bytes_outside_a_home_are_einval_for_dom0_too() {
    // C xenstored 4.17 (is_valid_nodename) and oxenstored: the length
    // without a `/local/domain/<domid>/` prefix may not exceed 2048, for
    // every domain.
    let mut t = T::new();
    let ok = format!("/{}", "a".repeat(XENSTORE_REL_PATH_MAX - 1));
    t.write(0, &ok, "v").unwrap();
    for len in [XENSTORE_REL_PATH_MAX + 1, 3000, 3072] {
        let long = format!("/{}", "a".repeat(len - 1));
        assert_eq!(t.write(0, &long, "v"), Err(XsErrno::Einval), "{len}");
        assert_eq!(t.read(0, &long), Err(XsErrno::Einval), "{len}");
    }
    // Under a home the prefix does not count.
    let home = format!("/local/domain/1/data/{}", "b".repeat(2048 - 5));
    t.write(0, &home, "v").unwrap();
    assert_eq!(t.read(1, &home[16..]).unwrap(), "v");
    let over = format!("/local/domain/1/data/{}", "b".repeat(2048 - 4));
    assert_eq!(t.write(0, &over, "v"), Err(XsErrno::Einval));
    assert_eq!(t.write(1, &over[16..], "v"), Err(XsErrno::Einval));
    // Watches follow the same rule.
    let long = format!("/{}", "a".repeat(XENSTORE_REL_PATH_MAX));
    let out = t.call(0, 0, XsType::Watch, &z(&[&long, "t"]));
    assert_eq!(out.reply.error_name(), Some(XsErrno::Einval));
}

#[test]
fn path_max_quota_tightens_the_limit_for_domus_only() {
    let mut t = T::new();
    t.res(0, 0, XsType::SetQuota, 0, &z(&["1", "path-max", "10"]))
        .unwrap();
    t.write(1, "data/12345", "").unwrap();
    assert_eq!(t.write(1, "data/123456", ""), Err(XsErrno::Einval));
    t.write(2, "data/123456", "").unwrap();
    t.write(0, "/local/domain/1/data/123456", "").unwrap();
}

// ---- SET_PERMS ----

#[test]
fn set_perms_naming_a_missing_owner_is_enoent() {
    // C: an owner entry for a domain that does not exist is ENOENT, for
    // dom0 too, before the path is even looked at.
    let mut t = T::new();
    t.write(0, "/x", "").unwrap();
    assert_eq!(t.set_perms(0, "/x", &["n7"]), Err(XsErrno::Enoent));
    assert_eq!(t.set_perms(0, "/x", &["r7", "r1"]), Err(XsErrno::Enoent));
    assert_eq!(t.set_perms(0, "/missing", &["n7"]), Err(XsErrno::Enoent));
    assert_eq!(t.perms(0, "/x").unwrap(), b"n0\0", "unchanged");
    t.set_perms(0, "/x", &["n1", "r2"]).unwrap();
    assert_eq!(t.perms(0, "/x").unwrap(), b"n1\0r2\0");
    t.s.release(1);
    assert_eq!(t.set_perms(0, "/x", &["n1"]), Err(XsErrno::Enoent));
}

#[test]
fn set_perms_on_other_special_paths_is_einval() {
    // C 4.17 (set_perms_special): only @introduceDomain and
    // @releaseDomain have permissions to set.
    let mut t = T::new();
    for p in ["@foo", "@releaseDomain/1", "@introduceDomain/x"] {
        assert_eq!(
            t.set_perms(0, p, &["n0", "r1"]),
            Err(XsErrno::Einval),
            "{p}"
        );
        assert_eq!(t.set_perms(1, p, &["n1"]), Err(XsErrno::Einval), "{p}");
    }
    t.set_perms(0, "@introduceDomain", &["n0", "r1"]).unwrap();
    assert_eq!(
        t.set_perms(1, "@releaseDomain", &["n0", "r1"]),
        Err(XsErrno::Eacces)
    );
}

// ---- the value-size limit (node-size) ----

#[test]
fn node_size_limit_boundaries_match_c_xenstored() {
    // C (write_node_raw): 16-byte header + 8 per permission + value +
    // children names with NULs; over `node-size` is ENOSPC for a domU;
    // dom0 is bounded by the payload alone.
    let mut t = T::new();
    let at_limit = 2048 - 16 - 8;
    t.write(1, "data/v", &"x".repeat(at_limit)).unwrap();
    assert_eq!(
        t.write(1, "data/v", &"x".repeat(at_limit + 1)),
        Err(XsErrno::Enospc)
    );
    let path = "/local/domain/1/data/v";
    let room = XENSTORE_PAYLOAD_MAX_FOR_TESTS - path.len() - 1;
    t.write(0, path, &"y".repeat(room)).unwrap();
    assert_eq!(t.read(1, "data/v").unwrap().len(), room);
    let mut p = z(&[path]);
    p.extend_from_slice("y".repeat(room + 1).as_bytes());
    let out = t.call(0, 0, XsType::Write, &p);
    assert_eq!(out.reply.error_name(), Some(XsErrno::E2big));
}

const XENSTORE_PAYLOAD_MAX_FOR_TESTS: usize = crate::abi::xs_wire::XENSTORE_PAYLOAD_MAX;

// ---- GET_FEATURE / SET_FEATURE ----

#[test]
fn get_feature_answers_the_supported_features() {
    let mut t = T::new();
    // No ring page here: none of the ring features, no WATCH depth, no
    // DOMID_ANY.
    assert_eq!(t.res(0, 0, XsType::GetFeature, 0, b"").unwrap(), b"0\0");
    assert_eq!(t.res(1, 1, XsType::GetFeature, 0, b"").unwrap(), b"0\0");
    assert_eq!(
        t.res(0, 0, XsType::GetFeature, 0, &z(&["1"])).unwrap(),
        b"0\0"
    );
    assert_eq!(
        t.res(1, 1, XsType::GetFeature, 0, &z(&["1"])),
        Err(XsErrno::Eacces),
        "a domU may ask only about itself"
    );
    assert_eq!(
        t.res(0, 0, XsType::GetFeature, 0, &z(&["9"])),
        Err(XsErrno::Enoent)
    );
    assert_eq!(
        t.res(0, 0, XsType::GetFeature, 0, &z(&["1", "2"])),
        Err(XsErrno::Einval)
    );
    assert_eq!(
        t.res(0, 0, XsType::GetFeature, 0, &z(&["x"])),
        Err(XsErrno::Einval)
    );
}

#[test]
fn set_feature_follows_c_xenstored() {
    let mut t = T::new();
    assert_eq!(
        t.res(0, 0, XsType::SetFeature, 0, &z(&["1", "0"])),
        Err(XsErrno::Ebusy),
        "after INTRODUCE"
    );
    assert_eq!(
        t.res(0, 0, XsType::SetFeature, 0, &z(&["9", "0"])),
        Err(XsErrno::Enoent)
    );
    assert_eq!(
        t.res(0, 0, XsType::SetFeature, 0, &z(&["1"])),
        Err(XsErrno::Einval)
    );
    assert_eq!(
        t.res(1, 1, XsType::SetFeature, 0, &z(&["1", "0"])),
        Err(XsErrno::Eacces)
    );
}

// ---- GET_QUOTA / SET_QUOTA ----

#[test]
fn get_quota_lists_names_and_reads_global_and_domain_values() {
    let mut t = T::new();
    assert_eq!(
        t.res(0, 0, XsType::GetQuota, 0, b"").unwrap(),
        b"nodes watches outstanding transactions transaction-nodes \
          node-permissions path-max node-size\0"
    );
    assert_eq!(
        t.res(0, 0, XsType::GetQuota, 0, &z(&["path-max"])).unwrap(),
        b"2048\0"
    );
    assert_eq!(
        t.res(0, 0, XsType::GetQuota, 0, &z(&["memory"])),
        Err(XsErrno::Einval)
    );
    assert_eq!(
        t.res(0, 0, XsType::GetQuota, 0, &z(&["9", "nodes"])),
        Err(XsErrno::Enoent)
    );
    assert_eq!(t.res(1, 1, XsType::GetQuota, 0, b""), Err(XsErrno::Eacces));
}

#[test]
fn set_quota_sets_global_defaults_and_per_domain_values() {
    let mut t = T::new();
    let get = |t: &mut T, args: &[&str]| {
        String::from_utf8(t.res(0, 0, XsType::GetQuota, 0, &z(args)).unwrap()).unwrap()
    };
    // A domain's own value: domain 1 owns 4 nodes from its home.
    assert_eq!(
        t.res(0, 0, XsType::SetQuota, 0, &z(&["1", "nodes", "5"]))
            .unwrap(),
        b"OK\0"
    );
    assert_eq!(get(&mut t, &["1", "nodes"]), "5\0");
    assert_eq!(get(&mut t, &["nodes"]), "1000\0", "global unchanged");
    t.write(1, "data/a", "").unwrap();
    assert_eq!(t.write(1, "data/b", ""), Err(XsErrno::Enospc));
    t.write(2, "data/a", "").unwrap();
    t.write(2, "data/b", "").unwrap();

    // The global value is the default of domains introduced later.
    t.res(0, 0, XsType::SetQuota, 0, &z(&["watches", "1"]))
        .unwrap();
    assert_eq!(get(&mut t, &["watches"]), "1\0");
    assert_eq!(get(&mut t, &["2", "watches"]), "128\0", "existing domain");
    t.s.introduce(3);
    assert_eq!(get(&mut t, &["3", "watches"]), "1\0");
    t.watch(30, 3, "data", "a");
    let out = t.call(30, 3, XsType::Watch, &z(&["data", "b"]));
    assert_eq!(out.reply.error_name(), Some(XsErrno::Enospc));

    // 0 turns a check off.
    t.res(0, 0, XsType::SetQuota, 0, &z(&["1", "nodes", "0"]))
        .unwrap();
    t.write(1, "data/b", "").unwrap();

    for (args, err) in [
        (&["nodes"][..], XsErrno::Einval),
        (&["1", "nodes", "5", "x"][..], XsErrno::Einval),
        (&["memory", "5"][..], XsErrno::Einval),
        (&["bogus", "5"][..], XsErrno::Einval),
        (&["nodes", "4294967295"][..], XsErrno::Einval),
        (&["9", "nodes", "5"][..], XsErrno::Enoent),
        (&["x", "nodes", "5"][..], XsErrno::Einval),
    ] {
        assert_eq!(
            t.res(0, 0, XsType::SetQuota, 0, &z(args)),
            Err(err),
            "{args:?}"
        );
    }
    assert_eq!(
        t.res(1, 1, XsType::SetQuota, 0, &z(&["1", "nodes", "5000"])),
        Err(XsErrno::Eacces)
    );
    // A released domain's values go with it.
    t.s.release(1);
    t.s.introduce(1);
    assert_eq!(get(&mut t, &["1", "nodes"]), "1000\0");
}
