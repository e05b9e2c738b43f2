//! Arbitrary bytes on a control or agent connection: framing and decoding
//! must reject them without panicking or allocating past the frame limit.
#![no_main]

use std::io::Write;
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use odfs::protocol::{self, AgentEvent, AgentRequest, Request, Response};

fuzz_target!(|data: &[u8]| {
    // Every message type straight from the bytes.
    let _ = protocol::decode::<Request>(data);
    let _ = protocol::decode::<Response>(data);
    let _ = protocol::decode::<AgentRequest>(data);
    let _ = protocol::decode::<AgentEvent>(data);
    // And through a socket, frame by frame, as the daemon reads them.
    let (mut tx, rx) = UnixStream::pair().unwrap();
    if tx.write_all(data).is_err() {
        return;
    }
    drop(tx);
    while let Ok(Some((body, _fds))) = protocol::read_frame(&rx) {
        let _ = protocol::decode::<Request>(&body);
    }
});
