//! A request's body as the server hands it to a handler.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::mpsc;

use super::parse::BodyError;

/// The body of a request the server received.
#[derive(Debug, Default)]
pub enum Inbound {
    /// No body (most requests).
    #[default]
    Empty,
    /// An HTTP/1.1 body that had arrived whole with its head.
    Full(Option<Bytes>),
    /// An HTTP/1.1 body still arriving: the connection reads it as it is consumed.
    Streamed(Streamed),
    /// An HTTP/2 request's body.
    H2(Incoming),
}

impl From<Bytes> for Inbound {
    fn from(bytes: Bytes) -> Inbound {
        if bytes.is_empty() {
            Inbound::Empty
        } else {
            Inbound::Full(Some(bytes))
        }
    }
}

/// Why a request body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error(transparent)]
    Malformed(#[from] BodyError),
    #[error("the client closed the connection before the body ended")]
    Incomplete,
    #[error("reading the body: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    H2(#[from] hyper::Error),
}

/// What the connection sends a streamed body's reader.
#[derive(Debug)]
pub(crate) enum Piece {
    Data(Bytes),
    End,
    Failed(InboundError),
}

/// A body the connection reads as the handler consumes it (at most one piece ahead).
#[derive(Debug)]
pub struct Streamed {
    rx: mpsc::Receiver<Piece>,
    /// Bytes still to come (`Content-Length` bodies).
    remaining: Option<u64>,
    ended: bool,
}

impl Streamed {
    pub(crate) fn new(rx: mpsc::Receiver<Piece>, remaining: Option<u64>) -> Streamed {
        Streamed { rx, remaining, ended: false }
    }
}

impl Body for Inbound {
    type Data = Bytes;
    type Error = InboundError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, InboundError>>> {
        match &mut *self {
            Inbound::Empty => Poll::Ready(None),
            Inbound::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inbound::H2(incoming) => Pin::new(incoming).poll_frame(cx).map_err(InboundError::H2),
            Inbound::Streamed(s) => {
                if s.ended {
                    return Poll::Ready(None);
                }
                let piece = std::task::ready!(s.rx.poll_recv(cx));
                Poll::Ready(match piece {
                    Some(Piece::Data(data)) => {
                        if let Some(left) = &mut s.remaining {
                            *left = left.saturating_sub(data.len() as u64);
                        }
                        Some(Ok(Frame::data(data)))
                    }
                    Some(Piece::End) => {
                        s.ended = true;
                        None
                    }
                    Some(Piece::Failed(err)) => {
                        s.ended = true;
                        Some(Err(err))
                    }
                    // The connection went away without saying the body ended.
                    None => {
                        s.ended = true;
                        Some(Err(InboundError::Incomplete))
                    }
                })
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::Empty => true,
            Inbound::Full(bytes) => bytes.is_none(),
            Inbound::H2(incoming) => incoming.is_end_stream(),
            Inbound::Streamed(s) => s.ended,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inbound::Empty => SizeHint::with_exact(0),
            Inbound::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Inbound::H2(incoming) => incoming.size_hint(),
            Inbound::Streamed(s) if s.ended => SizeHint::with_exact(0),
            Inbound::Streamed(s) => s.remaining.map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}
