//! Responses to recent requests, so a retransmitted request gets the same answer
//! (RFC 8489 §6.3.1: non-idempotent requests such as Allocate; RFC 8656 §7.2). Bounded in
//! entries; entries live 40 s (just over the 39.5 s a UDP client keeps retransmitting, §6.2.1).
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::hash;
use super::FiveTuple;

pub const TXN_LIFETIME: Duration = Duration::from_secs(40);

pub struct TxnCache {
    map: hash::Map<(FiveTuple, [u8; 12]), Vec<u8>>,
    order: VecDeque<(Instant, FiveTuple, [u8; 12])>,
    cap: usize,
}

impl TxnCache {
    pub fn new(cap: usize) -> Self {
        TxnCache {
            map: hash::map(),
            order: VecDeque::new(),
            cap,
        }
    }

    pub fn get(&self, t: &FiveTuple, tid: &[u8; 12]) -> Option<&[u8]> {
        self.map.get(&(*t, *tid)).map(|v| v.as_slice())
    }

    pub fn insert(&mut self, now: Instant, t: FiveTuple, tid: [u8; 12], resp: Vec<u8>) {
        self.expire(now);
        while self.order.len() >= self.cap {
            if let Some((_, t, id)) = self.order.pop_front() {
                self.map.remove(&(t, id));
            }
        }
        if self.map.insert((t, tid), resp).is_none() {
            self.order.push_back((now + TXN_LIFETIME, t, tid));
        }
    }

    pub fn expire(&mut self, now: Instant) {
        while let Some(&(exp, t, id)) = self.order.front() {
            if exp > now {
                break;
            }
            self.order.pop_front();
            self.map.remove(&(t, id));
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
