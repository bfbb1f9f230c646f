//! Which devices of each user registered for pushes, as last read (see `push.rs`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use dashmap::DashMap;

use crate::model::UserId;

/// How long which devices of a user registered is trusted without asking the database again:
/// a change made on this node is seen at once, one made on another node as soon as its
/// `Control::PushChanged` arrives, and at worst (Redis down meanwhile) after this.
pub(super) const CACHED_FOR: Duration = Duration::from_secs(60);
/// Users remembered at most; past it the memory starts over.
pub(super) const CACHED_MAX: usize = 100_000;

/// The devices with a push registration, per user, as last read.
#[derive(Debug, Default)]
pub struct PushDevices(DashMap<UserId, (Arc<[i64]>, Instant)>);

impl PushDevices {
    pub(super) fn map(&self) -> &DashMap<UserId, (Arc<[i64]>, Instant)> {
        &self.0
    }
}
