//! The yardstick: a WebSocket relay with no auth, no storage and no JSON parsing beyond finding
//! the recipient. `/?u=<n>` names the socket; a frame `{"to":<n>,...}` goes to socket n as is,
//! and the sender gets `{"type":"message_ack"}`.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use futures_util::{SinkExt, StreamExt};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_tungstenite::tungstenite::{
    Message,
    handshake::server::{Request, Response},
};

type Peers = Arc<RwLock<HashMap<u64, mpsc::UnboundedSender<Message>>>>;

pub async fn serve(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let peers: Peers = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let peers = peers.clone();
        tokio::spawn(async move {
            let mut user = 0;
            // The signature is tungstenite's: its error type is what it is.
            #[allow(clippy::result_large_err)]
            let callback = |req: &Request, res: Response| {
                user = req
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("u="))
                    .and_then(|u| u.parse().ok())
                    .unwrap_or(0);
                Ok(res)
            };
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                return;
            };
            let (mut sink, mut stream) = ws.split();
            let (tx, mut rx) = mpsc::unbounded_channel();
            peers.write().map(|mut p| p.insert(user, tx.clone())).ok();
            let writer = tokio::spawn(async move {
                while let Some(message) = rx.recv().await {
                    if sink.feed(message).await.is_err() {
                        return;
                    }
                    while let Ok(more) = rx.try_recv() {
                        if sink.feed(more).await.is_err() {
                            return;
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
            });
            while let Some(Ok(Message::Text(text))) = stream.next().await {
                let to = text
                    .as_str()
                    .split_once("\"to\":")
                    .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|n| n.parse::<u64>().ok());
                if let Some(peer) = to.and_then(|to| peers.read().ok()?.get(&to).cloned()) {
                    let _ = peer.send(Message::Text(text));
                }
                let _ = tx.send(Message::text(r#"{"type":"message_ack"}"#));
            }
            peers.write().map(|mut p| p.remove(&user)).ok();
            writer.abort();
        });
    }
}
