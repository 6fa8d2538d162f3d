//! XenStore keys that describe a ring's pages (blkif.h's "Request Transport
//! Parameters"; other protocols reuse them).
//!
//! The backend advertises the largest ring it accepts in
//! [`MAX_RING_PAGE_ORDER`] (absent means 0). A frontend with a one-page ring
//! writes its grant reference in [`RING_REF`]; a frontend with `2^order`
//! pages, `order > 0`, writes [`RING_PAGE_ORDER`] and one key per page,
//! `ring-ref0` .. `ring-ref{2^order - 1}`, instead. With several queues the
//! same keys go under `queue-N/`.

use super::RingError;

/// Grant reference of the sole page of a one-page ring.
pub const RING_REF: &str = "ring-ref";
/// The order (log2 of the page count) of the frontend's ring.
pub const RING_PAGE_ORDER: &str = "ring-page-order";
/// The largest order the backend accepts.
pub const MAX_RING_PAGE_ORDER: &str = "max-ring-page-order";
/// The largest order xenring uses or accepts (16 pages, as Linux).
pub const MAX_PAGE_ORDER: u32 = 4;

/// The key holding the grant reference of page `page` of a ring of order
/// `order`: `ring-ref` for a one-page ring, `ring-ref<page>` otherwise.
pub fn ring_ref_key(order: u32, page: usize) -> String {
    if order == 0 {
        RING_REF.to_string()
    } else {
        format!("{RING_REF}{page}")
    }
}

/// The keys holding the grant references of every page of a ring of order
/// `order`, in page order.
pub fn ring_ref_keys(order: u32) -> Vec<String> {
    (0..pages_of_order(order))
        .map(|p| ring_ref_key(order, p))
        .collect()
}

/// Pages in a ring of order `order` (`2^order`).
///
/// # Panics
/// If `order` is above [`MAX_PAGE_ORDER`] (check values read from XenStore
/// with [`parse_page_order`] first).
pub fn pages_of_order(order: u32) -> usize {
    assert!(order <= MAX_PAGE_ORDER, "ring page order {order} above 4");
    1 << order
}

/// The order of a ring of `pages` pages, if that is a power of two no larger
/// than `2^MAX_PAGE_ORDER`.
pub fn order_of_pages(pages: usize) -> Option<u32> {
    (pages.is_power_of_two() && pages <= 1 << MAX_PAGE_ORDER).then(|| pages.trailing_zeros())
}

/// Parses a page order read from XenStore under `key` (the peer's value, so
/// anything may be there): a decimal number from 0 to `max` (at most
/// [`MAX_PAGE_ORDER`]), surrounding whitespace and a trailing NUL allowed.
pub fn parse_page_order(key: &'static str, value: &str, max: u32) -> Result<u32, RingError> {
    let max = max.min(MAX_PAGE_ORDER);
    let trimmed = value.trim_end_matches('\0').trim();
    match trimmed.parse::<u32>() {
        Ok(order) if order <= max && trimmed.bytes().all(|b| b.is_ascii_digit()) => Ok(order),
        _ => Err(RingError::PageOrder {
            key,
            value: value.chars().take(32).collect(),
            max,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names() {
        assert_eq!(ring_ref_key(0, 0), "ring-ref");
        assert_eq!(ring_ref_key(2, 3), "ring-ref3");
        assert_eq!(ring_ref_keys(0), ["ring-ref"]);
        assert_eq!(
            ring_ref_keys(2),
            ["ring-ref0", "ring-ref1", "ring-ref2", "ring-ref3"]
        );
        assert_eq!(ring_ref_keys(4).len(), 16);
        assert_eq!(ring_ref_keys(4)[15], "ring-ref15");
        assert_eq!(
            (RING_PAGE_ORDER, MAX_RING_PAGE_ORDER),
            ("ring-page-order", "max-ring-page-order")
        );
    }

    #[test]
    fn orders_and_pages() {
        assert_eq!(
            (0..=4).map(pages_of_order).collect::<Vec<_>>(),
            [1, 2, 4, 8, 16]
        );
        assert_eq!(order_of_pages(1), Some(0));
        assert_eq!(order_of_pages(16), Some(4));
        assert_eq!(order_of_pages(0), None);
        assert_eq!(order_of_pages(3), None);
        assert_eq!(order_of_pages(32), None);
    }

    #[test]
    fn hostile_orders_are_refused() {
        assert_eq!(parse_page_order(RING_PAGE_ORDER, "2", 4), Ok(2));
        assert_eq!(parse_page_order(RING_PAGE_ORDER, "4\0", 4), Ok(4));
        assert_eq!(parse_page_order(RING_PAGE_ORDER, " 0 ", 4), Ok(0));
        for bad in ["5", "-1", "+1", "", "x", "99999999999", "1.0", "0x2"] {
            let e = parse_page_order(RING_PAGE_ORDER, bad, 4).unwrap_err();
            assert!(matches!(e, RingError::PageOrder { max: 4, .. }), "{bad}");
        }
        // The caller's maximum (the backend's advertised order) applies.
        assert!(parse_page_order(RING_PAGE_ORDER, "3", 2).is_err());
        assert_eq!(
            parse_page_order(RING_PAGE_ORDER, "7", 9)
                .unwrap_err()
                .to_string(),
            "xenstore key ring-page-order: value \"7\" is not a page order from 0 to 4"
        );
        let long = "9".repeat(100);
        match parse_page_order(MAX_RING_PAGE_ORDER, &long, 4).unwrap_err() {
            RingError::PageOrder { value, .. } => assert_eq!(value.len(), 32),
            e => panic!("{e}"),
        }
    }
}
