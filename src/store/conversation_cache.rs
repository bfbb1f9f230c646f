//! The conversations `Store` remembers once read (`Conversations` reads and fills it).

use dashmap::DashMap;

use crate::model::{Conversation, ConversationId, UserId};

/// Conversations kept in memory at most.
const CACHED_CONVERSATIONS: usize = 100_000;

/// Conversations already read, by id and by member pair. Members never change, so entries
/// only go when an account is deleted (or when the cache is full). A request's acceptance
/// (`requested_by` cleared) may be unknown here when another node made it: readers that
/// depend on it re-read a cached request (`fresh_conversation`); it never goes back.
#[derive(Debug, Default)]
pub(super) struct ConversationCache {
    pub(super) by_id: DashMap<ConversationId, Conversation>,
    by_pair: DashMap<(UserId, UserId), ConversationId>,
}

impl ConversationCache {
    pub(super) fn between(&self, a: UserId, b: UserId) -> Option<Conversation> {
        let id = *self.by_pair.get(&if a < b { (a, b) } else { (b, a) })?;
        self.by_id.get(&id).map(|c| c.clone())
    }

    pub(super) fn remember(&self, conversation: &Conversation) {
        if self.by_id.len() >= CACHED_CONVERSATIONS {
            // Crude, but bounded and rare.
            self.forget_all();
        }
        self.by_pair
            .insert((conversation.user_a, conversation.user_b), conversation.id);
        self.by_id.insert(conversation.id, conversation.clone());
    }

    pub(super) fn forget(&self, id: ConversationId) {
        if let Some((_, c)) = self.by_id.remove(&id) {
            self.by_pair.remove(&(c.user_a, c.user_b));
        }
    }

    pub(super) fn forget_all(&self) {
        self.by_id.clear();
        self.by_pair.clear();
    }

    pub(super) fn forget_user(&self, user: UserId) {
        self.by_id.retain(|_, c| !c.has_member(user));
        self.by_pair.retain(|(a, b), _| *a != user && *b != user);
    }
}
