//! A socket's queue of durable frames: bounded, many senders (the hub, the socket's own
//! replies), one receiver (its writer), and no memory of its own until something is queued.
//!
//! Why not tokio's `mpsc`: it allocates its first block of 32 slots with the channel (32 × 48
//! bytes) and cache-padded shared state beside it, about 2 KiB per socket that most sockets,
//! idle, never use. Here the items live in a `VecDeque` that grows on the first item and is
//! given back when a burst has been written; the receiver is woken through an `AtomicWaker`,
//! without a lock, as tokio's is. (The crates that allocate lazily either allocate per item or
//! per wait, or keep a block of their own per queue.)

use std::{
    collections::VecDeque,
    future::poll_fn,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use futures_util::task::AtomicWaker;

/// Slots a queue keeps when it empties: the few a socket's usual traffic needs (one message
/// at a time, an ack), so that it does not allocate again for each; a larger burst's room is
/// given back.
const KEPT_SLOTS: usize = 8;

/// Why an item was not queued; it comes back with the refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The queue holds its bound: its reader is too slow.
    Full(T),
    /// The receiver is gone (the socket's writer ended).
    Closed(T),
}

struct Shared<T> {
    items: Mutex<Items<T>>,
    /// The receiver, waiting for an item (or for the last sender to go).
    receiver: AtomicWaker,
    senders: AtomicUsize,
    bound: usize,
}

struct Items<T> {
    queue: VecDeque<T>,
    /// Set when the receiver is dropped: nothing is queued after that.
    closed: bool,
}

/// A bounded queue of at most `bound` items (at least one).
pub fn channel<T>(bound: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        items: Mutex::new(Items {
            queue: VecDeque::new(),
            closed: false,
        }),
        receiver: AtomicWaker::new(),
        senders: AtomicUsize::new(1),
        bound: bound.max(1),
    });
    (Sender(shared.clone()), Receiver(shared))
}

pub struct Sender<T>(Arc<Shared<T>>);

impl<T> Sender<T> {
    /// Queues `item` unless the queue is full or its receiver gone; never waits.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        {
            let Ok(mut items) = self.0.items.lock() else {
                return Err(TrySendError::Closed(item));
            };
            if items.closed {
                return Err(TrySendError::Closed(item));
            }
            if items.queue.len() >= self.0.bound {
                return Err(TrySendError::Full(item));
            }
            items.queue.push_back(item);
        }
        self.0.receiver.wake();
        Ok(())
    }

    /// How many items are queued now.
    pub fn queued(&self) -> usize {
        self.0.items.lock().map_or(0, |items| items.queue.len())
    }

    /// The most items the queue holds.
    pub fn bound(&self) -> usize {
        self.0.bound
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        Self(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.receiver.wake();
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("bound", &self.0.bound)
            .finish()
    }
}

pub struct Receiver<T>(Arc<Shared<T>>);

impl<T> Receiver<T> {
    /// The next item, or `None` once the queue is empty and every sender gone.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next item if one is queued now.
    pub fn try_recv(&mut self) -> Option<T> {
        let mut items = self.0.items.lock().ok()?;
        let item = items.queue.pop_front();
        if items.queue.is_empty() && items.queue.capacity() > KEPT_SLOTS {
            items.queue = VecDeque::new();
        }
        item
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(item) = self.try_recv() {
            return Poll::Ready(Some(item));
        }
        self.0.receiver.register(cx.waker());
        // Looked at again after registering: an item queued in between woke nobody.
        if let Some(item) = self.try_recv() {
            return Poll::Ready(Some(item));
        }
        if self.0.senders.load(Ordering::Acquire) == 0 {
            return Poll::Ready(self.try_recv());
        }
        Poll::Pending
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        // The items go now, not with the last sender (the hub may hold one a while longer).
        let queued = self.0.items.lock().map(|mut items| {
            items.closed = true;
            std::mem::take(&mut items.queue)
        });
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_come_out_in_order_up_to_the_bound() {
        let (tx, mut rx) = channel(2);
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx.clone().try_send(2), Ok(()));
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(tx.queued(), 2);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), None);
        assert_eq!(tx.try_send(4), Ok(()));
        drop(tx);
        // What was queued before the last sender left is still received.
        assert_eq!(rx.recv().await, Some(4));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_from_another_task() {
        let (tx, mut rx) = channel(4);
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.try_send("frame").expect("queued");
        assert_eq!(waiting.await.expect("the receiver's task"), Some("frame"));
    }

    #[test]
    fn nothing_is_queued_once_the_receiver_is_gone() {
        let (tx, rx) = channel(4);
        tx.try_send(1).expect("queued");
        drop(rx);
        assert_eq!(tx.try_send(2), Err(TrySendError::Closed(2)));
        assert_eq!(tx.queued(), 0);
    }

    #[test]
    fn room_taken_by_a_burst_is_given_back_once_written() {
        let (tx, mut rx) = channel(1024);
        assert_eq!(rx.0.items.lock().expect("lock").queue.capacity(), 0);
        for i in 0..100 {
            tx.try_send(i).expect("queued");
        }
        while rx.try_recv().is_some() {}
        assert_eq!(rx.0.items.lock().expect("lock").queue.capacity(), 0);
        tx.try_send(1).expect("queued");
        rx.try_recv();
        let kept = rx.0.items.lock().expect("lock").queue.capacity();
        assert!((1..=KEPT_SLOTS).contains(&kept));
    }
}
