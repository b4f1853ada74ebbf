//! The sans-IO wire protocol: framing, validation, fuzzing, and the handshake, all without
//! sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use rekord::proto::handshake::{
    ClientConfig, Grant, HandshakeError, Trees, check_client, check_server, client_hello,
};
use rekord::proto::{
    Change, ChangeKind, ClientHello, Current, EntryOutcome, Frame, FrameReader, MAX_FRAME,
    MAX_NAME, PROTOCOL_VERSION, Push, Refusal, RemoteError, Request, Response, Sequenced,
    ServerHello, WireError, decode, decode_outcome, decode_outcome_v1, encode, encode_outcome,
};

#[path = "common/frames.rs"]
mod frames;
use frames::sample_frames;

#[test]
fn frames_round_trip_through_a_chunked_stream() {
    let frames = sample_frames();
    let mut stream = Vec::new();
    for f in &frames {
        stream.extend_from_slice(&encode(f).unwrap());
    }
    // Deliver the stream in every chunk size from 1 byte up.
    for chunk in [1, 2, 3, 7, 64, stream.len()] {
        let mut reader = FrameReader::new();
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            reader.push(piece);
            while let Some(f) = reader.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames, "chunk size {chunk}");
        assert_eq!(reader.pending(), 0);
    }
}

#[test]
fn oversized_frames_are_refused_before_allocation() {
    let mut reader = FrameReader::new();
    reader.push(&(MAX_FRAME + 1).to_le_bytes());
    assert_eq!(
        reader.next_frame(),
        Err(WireError::FrameTooLarge { len: MAX_FRAME + 1 })
    );
}

#[test]
fn protocol_limits_are_enforced_on_decode() {
    let bad = [
        Frame::Request {
            id: 1,
            body: Request::Borrow {
                tree: "Parts!".into(),
                id: 1,
            },
        },
        Frame::Request {
            id: 1,
            body: Request::Return {
                tree: "parts".into(),
                id: 0,
            },
        },
        Frame::ClientHello(ClientHello {
            protocol: 1,
            app: String::new(),
            client: [0; 16],
            token: String::new(),
            server: None,
            cursor: 0,
            trees: vec![],
            replica: 0,
            history: Vec::new(),
            last_entry: 0,
        }),
        Frame::Response {
            id: 1,
            body: Response::Ranges(vec![(5, 5)]),
        },
        Frame::Push(Push::Changes(vec![
            Sequenced {
                seq: 2,
                origin: 1,
                change: Change {
                    tree: "t".into(),
                    id: 1,
                    rev: 0,
                    kind: ChangeKind::Remove,
                },
            },
            Sequenced {
                seq: 2,
                origin: 1,
                change: Change {
                    tree: "t".into(),
                    id: 1,
                    rev: 0,
                    kind: ChangeKind::Remove,
                },
            },
        ])),
        Frame::Request {
            id: 1,
            body: Request::Changes {
                op: [0; 16],
                changes: vec![Change {
                    tree: "t".into(),
                    id: 1,
                    rev: 0,
                    kind: ChangeKind::Put {
                        version: 0,
                        data: vec![],
                    },
                }],
            },
        },
        Frame::Request {
            id: 1,
            body: Request::PutSchema {
                tree: "parts".into(),
                version: 1,
                schema: "x".repeat(rekord::proto::MAX_SCHEMA + 1),
            },
        },
        Frame::Request {
            id: 1,
            body: Request::PutSchema {
                tree: "parts".into(),
                version: 0,
                schema: String::new(),
            },
        },
        Frame::Request {
            id: 1,
            body: Request::Schema {
                tree: "Parts!".into(),
                version: 1,
            },
        },
        Frame::Request {
            id: 1,
            body: Request::Schema {
                tree: "parts".into(),
                version: 0,
            },
        },
        Frame::Response {
            id: 1,
            body: Response::Schema("x".repeat(rekord::proto::MAX_SCHEMA + 1)),
        },
        Frame::Request {
            id: 1,
            body: Request::Entries {
                first: 1,
                entries: vec![vec![Change {
                    tree: "notes".into(),
                    id: 9,
                    rev: 0,
                    kind: ChangeKind::Edit {
                        base: 0,
                        hlc: 0,
                        version: 0,
                        data: vec![],
                    },
                }]],
            },
        },
        Frame::Response {
            id: 1,
            body: Response::Entries(vec![EntryOutcome::Rejected(RemoteError::Conflict(
                Box::new(Current {
                    tree: "Bad Tree".into(),
                    id: 9,
                    rev: 0,
                    seq: 1,
                    origin: 3,
                    hlc: 0,
                    version: 1,
                    data: vec![],
                    base: None,
                }),
            ))]),
        },
        // A holder's token name must be a valid name: not empty, not too long.
        Frame::Response {
            id: 1,
            body: Response::Error(RemoteError::AlreadyBorrowed {
                holder: 3,
                name: Some(String::new()),
            }),
        },
        Frame::Response {
            id: 1,
            body: Response::Entries(vec![EntryOutcome::Rejected(RemoteError::AlreadyBorrowed {
                holder: 3,
                name: Some("x".repeat(MAX_NAME + 1)),
            })]),
        },
    ];
    for f in bad {
        let bytes = encode(&f).unwrap();
        assert!(
            matches!(decode(&bytes[4..]), Err(WireError::Invalid(_))),
            "{f:?} was accepted"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic the reader: they give frames, errors, or a request for more.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), split in 1usize..64) {
        let mut reader = FrameReader::new();
        for piece in bytes.chunks(split) {
            reader.push(piece);
            while let Ok(Some(f)) = reader.next_frame() {
                let _ = f.validate();
            }
        }
        let _ = decode(&bytes);
    }

    /// Damaged valid frames are rejected or decode to a frame that passes validation.
    #[test]
    fn damaged_frames_are_caught(idx in 0usize..64, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let frames = sample_frames();
        let mut bytes = encode(&frames[idx % frames.len()]).unwrap();
        for (at, x) in flips {
            let n = bytes.len() - 4;
            bytes[4 + at % n] ^= x | 1;
        }
        if let Ok(f) = decode(&bytes[4..]) {
            prop_assert!(f.validate().is_ok());
        }
    }
}

fn client(pinned: Option<[u8; 16]>) -> ClientConfig {
    ClientConfig {
        app: "workshop".into(),
        client: [1; 16],
        token: "good".into(),
        pinned,
        cursor: 0,
        trees: vec!["parts".into()],
        replica: 0,
        history: Vec::new(),
        last_entry: 0,
    }
}

fn grants(token: &str) -> Option<Grant> {
    (token == "good").then(|| Grant {
        read: Trees::Only(vec!["parts".into()]),
        write: Trees::All,
    })
}

fn hello_of(f: Frame) -> ClientHello {
    match f {
        Frame::ClientHello(h) => h,
        other => panic!("not a hello: {other:?}"),
    }
}

#[test]
fn server_checks_version_app_token_and_trees() {
    let ok = hello_of(client_hello(&client(None)));
    assert!(check_client(&ok, "workshop", grants).is_ok());

    let mut old = ok.clone();
    old.protocol = PROTOCOL_VERSION + 1;
    assert_eq!(
        check_client(&old, "workshop", grants),
        Err(Refusal::ProtocolVersion {
            server: PROTOCOL_VERSION,
            client: PROTOCOL_VERSION + 1
        })
    );
    assert_eq!(
        check_client(&ok, "lab", grants),
        Err(Refusal::WrongApp {
            server: "lab".into(),
            client: "workshop".into()
        })
    );
    let mut bad = ok.clone();
    bad.token = "stolen".into();
    assert_eq!(
        check_client(&bad, "workshop", grants),
        Err(Refusal::BadToken)
    );
    let mut greedy = ok.clone();
    greedy.trees.push("salaries".into());
    assert_eq!(
        check_client(&greedy, "workshop", grants),
        Err(Refusal::TreeNotAllowed {
            tree: "salaries".into()
        })
    );
    assert!(Refusal::BadToken.to_string().contains("new one"));
}

#[test]
fn client_pins_the_server_and_refuses_strangers() {
    let answer = |server: [u8; 16], app: &str, protocol: u32| {
        Frame::ServerHello(ServerHello {
            protocol,
            app: app.into(),
            server,
            replica: 2,
            head: 0,
            history: vec![],
            read: None,
            common: None,
        })
    };
    // First contact: anything that speaks our protocol and application is accepted (and pinned).
    let first = check_server(&client(None), answer([9; 16], "workshop", PROTOCOL_VERSION)).unwrap();
    assert_eq!(first.server, [9; 16]);
    // Afterwards only the pinned server.
    let pinned = client(Some([9; 16]));
    assert!(check_server(&pinned, answer([9; 16], "workshop", PROTOCOL_VERSION)).is_ok());
    let err = check_server(&pinned, answer([8; 16], "workshop", PROTOCOL_VERSION)).unwrap_err();
    assert!(matches!(err, HandshakeError::WrongServer { .. }));
    assert!(
        err.to_string()
            .contains("not the server this client first connected to"),
        "{err}"
    );
    assert!(matches!(
        check_server(&pinned, answer([9; 16], "lab", PROTOCOL_VERSION)),
        Err(HandshakeError::WrongApp { .. })
    ));
    assert!(matches!(
        check_server(&pinned, answer([9; 16], "workshop", PROTOCOL_VERSION + 1)),
        Err(HandshakeError::ProtocolVersion { .. })
    ));
    assert_eq!(
        check_server(&pinned, Frame::Refused(Refusal::BadToken)),
        Err(HandshakeError::Refused(Refusal::BadToken))
    );
    assert!(matches!(
        check_server(&pinned, Frame::Push(Push::CaughtUp { head: 0 })),
        Err(HandshakeError::Unexpected(_))
    ));
}

#[test]
fn a_handshake_over_an_in_memory_stream() {
    // Client and server exchange bytes only; no socket.
    let cfg = client(None);
    let mut to_server = FrameReader::new();
    to_server.push(&encode(&client_hello(&cfg)).unwrap());
    let hello = match to_server.next_frame().unwrap() {
        Some(Frame::ClientHello(h)) => h,
        other => panic!("{other:?}"),
    };
    let grant = check_client(&hello, "workshop", grants).unwrap();
    assert!(grant.write.allows("anything"));
    let reply = Frame::ServerHello(ServerHello {
        protocol: PROTOCOL_VERSION,
        app: "workshop".into(),
        server: [5; 16],
        replica: 7,
        head: 0,
        history: vec![(1, 0)],
        read: None,
        common: None,
    });
    let mut to_client = FrameReader::new();
    to_client.push(&encode(&reply).unwrap());
    let answer = to_client.next_frame().unwrap().unwrap();
    let welcome = check_server(&cfg, answer).unwrap();
    assert_eq!((welcome.server, welcome.replica), ([5; 16], 7));
}

/// A server keeps entry outcomes in protocol version 1's layout from before the upgrade:
/// they decode (the holder's name unknown), and malformed bytes are an error.
#[test]
fn outcomes_stored_by_protocol_version_1_still_decode() {
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    // Written by `encode_outcome` of protocol version 1.
    let golden = [
        (
            "02000700000000000000",
            EntryOutcome::Rejected(RemoteError::AlreadyBorrowed {
                holder: 7,
                name: None,
            }),
        ),
        ("00050000000000000000", EntryOutcome::Applied { seq: 5 }),
        (
            "0206626164ffffffffff",
            EntryOutcome::Rejected(RemoteError::Invalid("bad".into())),
        ),
    ];
    for (bytes, outcome) in golden {
        assert_eq!(decode_outcome_v1(&hex(bytes)).unwrap(), outcome);
    }
    assert!(decode_outcome_v1(&[]).is_err());
    assert!(decode_outcome_v1(&[9; 10]).is_err());
    // The current layout round-trips with the name.
    let named = EntryOutcome::Rejected(RemoteError::AlreadyBorrowed {
        holder: 7,
        name: Some("alice".into()),
    });
    assert_eq!(
        decode_outcome(&encode_outcome(&named).unwrap()).unwrap(),
        named
    );
}
