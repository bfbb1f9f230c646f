//! SQLite's envelope batches (`envelope_writer`): the same steps as the SQL there, each a
//! cached single-row statement run on the locked writer (see `group`). Through sqlx, each of a
//! batch's statements was a round trip to the connection's thread: at 2,000 msg/s with one
//! device each, 21 context switches per message (4 on the inbox path) and 440 µs of CPU.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{Connection, OptionalExtension, params};

use super::group::{Writer, timestamp, uuid_at};
use crate::{
    error::{Error, Result},
    model::{ConversationId, MessageId, UserId},
    store::envelope_writer::{AckTarget, AckedEnvelope, Answer, DeviceGone, Job, Stored, stores},
};

/// Writes `jobs` in one transaction on `writer`; each job's answer, in order (a job whose id
/// another sender holds is refused alone). A device gone fails the whole batch (`DeviceGone`),
/// for the caller to write its jobs one by one.
pub(crate) fn write(writer: &mut Writer<'_>, jobs: &[Job]) -> Result<Vec<Option<Result<Answer>>>> {
    let rows = jobs
        .iter()
        .map(|job| match job {
            Job::Store { message, .. } => message.envelopes.len(),
            Job::Ack { .. } => 1,
        })
        .sum();
    writer.transaction(rows, |db| write_batch(db, jobs))
}

fn write_batch(db: &mut Connection, jobs: &[Job]) -> Result<Vec<Option<Result<Answer>>>> {
    let mut answers: Vec<Option<Result<Answer>>> = jobs.iter().map(|_| None).collect();
    let stores = stores(jobs);

    // Retries: a message id this recipient already holds is stored once; another sender's is
    // refused (one in the same batch too).
    let mut held: HashMap<(UserId, MessageId), UserId> = HashMap::new();
    let mut find = db.prepare_cached(
        "SELECT sender_id FROM envelopes WHERE user_id = ?1 AND message_id = ?2 LIMIT 1",
    )?;
    let mut fresh = Vec::with_capacity(stores.len());
    for &(i, m, max) in &stores {
        let key = (m.recipient_id, m.id);
        if !held.contains_key(&key)
            && let Some(sender) = find
                .query_row(params![key.0.0.as_bytes(), key.1.0.as_bytes()], |row| {
                    uuid_at(row, 0)
                })
                .optional()?
        {
            held.insert(key, UserId(sender));
        }
        match held.get(&key) {
            Some(&sender) if sender != m.sender_id => {
                answers[i] = Some(Err(Error::Conflict {
                    code: "id_taken",
                    message: "this message id is taken",
                }));
            }
            Some(_) => answers[i] = Some(Ok(Answer::Stored(Stored::Retry))),
            None => {
                held.insert(key, m.sender_id);
                fresh.push((i, m, max));
            }
        }
    }
    drop(find);

    // Numbers: each device's head is read, then moved on once for the batch (one writer:
    // nothing changes it in between).
    let mut wanted: BTreeMap<(UserId, i64), (i64, i64)> = BTreeMap::new();
    for &(_, m, max) in &fresh {
        for e in &m.envelopes {
            wanted
                .entry((m.recipient_id, e.device_id))
                .or_insert((0, max))
                .0 += 1;
        }
    }
    let mut head_of = db.prepare_cached(
        "SELECT queue_head FROM user_devices WHERE user_id = ?1 AND device_id = ?2",
    )?;
    let mut move_head = db.prepare_cached(
        "UPDATE user_devices SET queue_head = ?3 WHERE user_id = ?1 AND device_id = ?2",
    )?;
    // Per device: the next number to give; and the head and queue bound after the batch.
    let mut next: HashMap<(UserId, i64), i64> = HashMap::with_capacity(wanted.len());
    let mut heads = Vec::with_capacity(wanted.len());
    for ((user, device), (count, max)) in wanted {
        let head: Option<i64> = head_of
            .query_row(params![user.0.as_bytes(), device], |row| row.get(0))
            .optional()?;
        let Some(head) = head else {
            return Err(Error::Internal(DeviceGone(device).into()));
        };
        move_head.execute(params![user.0.as_bytes(), device, head + count])?;
        next.insert((user, device), head + 1);
        heads.push((user, device, head + count, max));
    }
    drop((head_of, move_head));

    let mut insert = db.prepare_cached(
        "INSERT INTO envelopes (user_id, device_id, seq, message_id, sender_id, sender_device,
             conversation_id, message_type, kind, content, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    for &(i, m, _) in &fresh {
        let created_at = timestamp(m.created_at);
        let mut numbered = Vec::with_capacity(m.envelopes.len());
        for e in &m.envelopes {
            let Some(seq) = next.get_mut(&(m.recipient_id, e.device_id)) else {
                return Err(Error::Internal(DeviceGone(e.device_id).into()));
            };
            insert.execute(params![
                m.recipient_id.0.as_bytes(),
                e.device_id,
                *seq,
                m.id.0.as_bytes(),
                m.sender_id.0.as_bytes(),
                m.sender_device,
                m.conversation_id.as_ref().map(|c| c.0.as_bytes()),
                m.message_type,
                e.kind,
                e.content,
                created_at,
            ])?;
            numbered.push((e.device_id, *seq));
            *seq += 1;
        }
        answers[i] = Some(Ok(Answer::Stored(Stored::New(numbered))));
    }
    drop(insert);

    // Acks, each a lookup of what it deletes, then the delete (not DELETE … RETURNING: see
    // `group`'s `mark_delivered`).
    for (i, job) in jobs.iter().enumerate() {
        let Job::Ack {
            user,
            device,
            target,
            ..
        } = job
        else {
            continue;
        };
        let user_id = user.0.as_bytes();
        let acked = match *target {
            AckTarget::Message(id) => {
                let id = id.0.as_bytes();
                let found = db
                    .prepare_cached(
                        "SELECT message_id, sender_id, conversation_id FROM envelopes
                         WHERE user_id = ?1 AND message_id = ?2 AND device_id = ?3",
                    )?
                    .query_map(params![user_id, id, device], acked_envelope)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                if !found.is_empty() {
                    db.prepare_cached(
                        "DELETE FROM envelopes
                         WHERE user_id = ?1 AND message_id = ?2 AND device_id = ?3",
                    )?
                    .execute(params![user_id, id, device])?;
                }
                found
            }
            AckTarget::Upto(cursor) => {
                let found = db
                    .prepare_cached(
                        "SELECT message_id, sender_id, conversation_id FROM envelopes
                         WHERE user_id = ?1 AND device_id = ?2 AND seq <= ?3",
                    )?
                    .query_map(params![user_id, device, cursor], acked_envelope)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                if !found.is_empty() {
                    delete_upto(db, *user, *device, cursor)?;
                }
                found
            }
        };
        answers[i] = Some(Ok(Answer::Acked(acked)));
    }

    // A queue holds its latest `queue_max` numbers: older envelopes are dropped, and counted
    // for the device to be told.
    for (user, device, head, max) in heads.into_iter().filter(|(.., head, max)| head > max) {
        let dropped = delete_upto(db, user, device, head - max)?;
        if dropped > 0 {
            db.prepare_cached(
                "UPDATE user_devices SET dropped = dropped + ?3
                 WHERE user_id = ?1 AND device_id = ?2",
            )?
            .execute(params![user.0.as_bytes(), device, dropped as i64])?;
        }
    }
    Ok(answers)
}

/// Deletes the envelopes of `device` of `user` numbered up to `seq`; how many.
fn delete_upto(db: &Connection, user: UserId, device: i64, seq: i64) -> Result<usize> {
    Ok(db
        .prepare_cached(
            "DELETE FROM envelopes WHERE user_id = ?1 AND device_id = ?2 AND seq <= ?3",
        )?
        .execute(params![user.0.as_bytes(), device, seq])?)
}

/// A row of (message_id, sender_id, conversation_id).
fn acked_envelope(row: &rusqlite::Row) -> rusqlite::Result<AckedEnvelope> {
    let conversation_id = match row.get_ref(2)?.as_blob_or_null()? {
        Some(_) => Some(ConversationId(uuid_at(row, 2)?)),
        None => None,
    };
    Ok(AckedEnvelope {
        message_id: MessageId(uuid_at(row, 0)?),
        sender_id: UserId(uuid_at(row, 1)?),
        conversation_id,
    })
}
