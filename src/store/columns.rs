//! The columns every read of a message selects, shared by the areas and both engines' group
//! commits.

/// The columns of `Message`; `status` is derived here, the one place that defines it.
macro_rules! message_cols {
    () => {
        "seq, id, conversation_id, sender_id, recipient_id, message_type, session_id, created_at, \
         is_read, read_at, delivered_at, \
         CASE WHEN is_read THEN 'read' WHEN delivered_at IS NOT NULL THEN 'delivered' \
              ELSE 'sent' END AS status, withheld"
    };
    (m) => {
        "m.seq, m.id, m.conversation_id, m.sender_id, m.recipient_id, m.message_type, \
         m.session_id, m.created_at, m.is_read, m.read_at, m.delivered_at, \
         CASE WHEN m.is_read THEN 'read' WHEN m.delivered_at IS NOT NULL THEN 'delivered' \
              ELSE 'sent' END AS status, m.withheld"
    };
}
pub(crate) use message_cols;
