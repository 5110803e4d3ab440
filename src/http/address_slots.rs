//! The per-address cap on open connections (`--max-connections-per-address`).
//!
//! The global cap (`--max-connections`) bounds memory, but alone it lets one client hold
//! every slot: an outside probe kept ~1,000 keep-alive connections open from one address
//! and a normal client waited 10-40 s in the listen backlog. With this cap, a client
//! address (an IPv4 address, or an IPv6 /64, which one host usually owns whole) holds at
//! most N connections; a connection past it is answered 429 at once and closed, so it never
//! holds a slot, and the other slots stay free for other addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// A client address as the cap counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AddressKey {
    V4(u32),
    /// The /64 prefix.
    V6(u64),
}

impl AddressKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(u32::from(v4)),
                None => AddressKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Open connections per client address, at most `max` each (0 = no cap).
pub struct AddressSlots {
    max: usize,
    open: Mutex<HashMap<AddressKey, usize>>,
}

impl AddressSlots {
    /// A cap of `max` connections per address (0 = none).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(AddressSlots {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a connection from `ip` in; `None` when its address is at the cap.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        if self.max == 0 {
            return Some(AddressSlot(None));
        }
        let key = AddressKey::of(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot(Some((self.clone(), key))))
    }

    /// Addresses with at least one open connection.
    pub fn addresses(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One open connection of an address; released on drop.
pub struct AddressSlot(Option<(Arc<AddressSlots>, AddressKey)>);

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Some((slots, key)) = self.0.take() {
            let mut open = slots.open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = open.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_address_and_releases_on_drop() {
        let s = AddressSlots::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = s.take(a).unwrap();
        let _a2 = s.take(a).unwrap();
        assert!(s.take(a).is_none());
        // The same address written as IPv4-mapped IPv6 is the same client.
        assert!(s.take("::ffff:10.0.0.1".parse().unwrap()).is_none());
        let _b1 = s.take(b).unwrap();
        drop(a1);
        let _a3 = s.take(a).unwrap();
        assert_eq!(s.addresses(), 2);
        // IPv6 counts by /64.
        let _v1 = s.take("2001:db8::1".parse().unwrap()).unwrap();
        let _v2 = s.take("2001:db8::ffff:2".parse().unwrap()).unwrap();
        assert!(s.take("2001:db8::3".parse().unwrap()).is_none());
        assert!(s.take("2001:db8:0:1::3".parse().unwrap()).is_some());
        // No cap.
        let none = AddressSlots::new(0);
        let held: Vec<_> = (0..100).map(|_| none.take(a).unwrap()).collect();
        assert_eq!(held.len(), 100);
        assert_eq!(none.addresses(), 0);
    }
}
