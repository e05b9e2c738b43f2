//! The relay protocol: a call to a remote engine, where no fd can be passed,
//! carried as frames over the attached stdin and stdout of an engine exec of
//! `odfs-agent relay` (see [`crate::agent::relay`] and `daemon/link/relay.rs`).
//!
//! The byte stream is the same length-prefixed postcard as on the unix
//! sockets, without fds; [`Decoder`] takes it in whatever pieces the engine
//! delivers.

use serde::{Deserialize, Serialize};

use super::{AgentEvent, FrameError, SpawnRequest, MAX_FRAME};

/// Fd number of a tool's terminal in [`RelayOut::Output`]: its pty, whatever
/// standard fds that pty stands for.
pub const PTY: i32 = -1;

/// Largest piece of output or input one frame carries.
pub const CHUNK: usize = 64 << 10;

/// Daemon → relay, on the exec's stdin. The first frame is `Spawn` or
/// `Status`; closing the stream without `InputEnd` means the caller is gone
/// and the tool must be killed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayIn {
    Spawn(Box<SpawnRequest>),
    /// How busy is the agent; answered with `AgentEvent::Status`.
    Status { token: String },
    /// Bytes for the tool's stdin (or its terminal).
    Input(Vec<u8>),
    /// The caller's stdin ended: close the tool's.
    InputEnd,
    Signal(i32),
    Continue,
    /// The caller's terminal changed size.
    Resize { rows: u16, cols: u16 },
    /// Nobody reads output `fd` any more: close it, so the tool's next write
    /// there fails as it would natively (EPIPE, or SIGPIPE).
    CloseOutput(i32),
}

/// Relay → daemon, on the exec's stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayOut {
    /// The tool wrote `data` on fd `fd` (1, 2, or [`PTY`]).
    Output { fd: i32, data: Vec<u8> },
    /// What the agent said: `Started`, `Stopped`, the end, or `Status`.
    Event(AgentEvent),
    /// The tool took this many more bytes of input: the daemon may send as
    /// many more (flow control, see `daemon/link/relay.rs`).
    Consumed(u64),
}

pub use super::frame;

/// Reassembles frames from a byte stream cut anywhere.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, if one has arrived.
    pub fn next_message<T: for<'a> Deserialize<'a>>(&mut self) -> Result<Option<T>, FrameError> {
        let rest = &self.buf[self.start..];
        let Some(len) = rest.get(..4) else { return Ok(None) };
        let n = u32::from_le_bytes(len.try_into().expect("four bytes")) as usize;
        if n > MAX_FRAME {
            return Err(FrameError::TooLarge(n));
        }
        let Some(body) = rest.get(4..4 + n) else { return Ok(None) };
        let msg = super::decode(body)?;
        self.start += 4 + n;
        // Keep the buffer from growing with a long stream of small frames.
        if self.start > (1 << 20) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(msg))
    }

    /// Bytes of an incomplete frame are waiting.
    #[cfg(test)]
    fn partial(&self) -> bool {
        self.start < self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn frames_survive_any_cut(msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8), cut in 1usize..50) {
            let sent: Vec<RelayOut> = msgs.into_iter().enumerate().map(|(i, data)| RelayOut::Output { fd: i as i32, data }).collect();
            let bytes: Vec<u8> = sent.iter().flat_map(|m| frame(m).unwrap()).collect();
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for piece in bytes.chunks(cut) {
                d.push(piece);
                while let Some(m) = d.next_message::<RelayOut>().unwrap() {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, sent);
            prop_assert!(!d.partial());
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_buffering() {
        let mut d = Decoder::default();
        d.push(&u32::MAX.to_le_bytes());
        assert!(matches!(d.next_message::<RelayIn>(), Err(FrameError::TooLarge(_))));
    }
}
