//! The frames a child process of a crash test sent, printed one per line (`FRAME hex`)
//! for its parent to replay against a simulated server.
#![allow(dead_code)]

use rekord::proto::Frame;

/// Prints `frame` on stdout as `FRAME hex` (flushed: the process may die right after).
pub fn print_frame(frame: &Frame) {
    use std::io::Write as _;
    let bytes = rekord::proto::encode(frame).unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "FRAME {hex}").unwrap();
    out.flush().unwrap();
}

/// The frames printed by [`print_frame`] in a child's stdout, in order.
pub fn parse_frames(stdout: &str) -> Vec<Frame> {
    let mut reader = rekord::proto::FrameReader::new();
    for line in stdout.lines() {
        if let Some(hex) = line.strip_prefix("FRAME ") {
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            reader.push(&bytes);
        }
    }
    std::iter::from_fn(|| reader.next_frame().unwrap()).collect()
}
