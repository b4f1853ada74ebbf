//! Sample frames of every kind (the protocol tests' and the fuzz seeds').
#![allow(dead_code)]

use rekord::proto::{
    Change, ChangeKind, ClientHello, Current, EntryOutcome, Frame, PROTOCOL_VERSION, Push, Refusal,
    RemoteError, Request, Response, Sequenced, ServerHello,
};

/// One or more frames of each kind of message.
pub fn sample_frames() -> Vec<Frame> {
    vec![
        Frame::ClientHello(ClientHello {
            protocol: PROTOCOL_VERSION,
            app: "workshop".into(),
            client: [7; 16],
            token: "tok".into(),
            server: Some([9; 16]),
            cursor: 42,
            trees: vec!["parts".into()],
            replica: 5,
            history: vec![(11, 0)],
            last_entry: 0,
        }),
        Frame::ServerHello(ServerHello {
            protocol: PROTOCOL_VERSION,
            app: "workshop".into(),
            server: [9; 16],
            replica: 3,
            head: 100,
            history: vec![(11, 0), (12, 90)],
            read: Some(vec!["parts".into()]),
            common: Some(90),
        }),
        Frame::Refused(Refusal::BadToken),
        Frame::Request {
            id: 1,
            body: Request::Borrow {
                tree: "parts".into(),
                id: 5,
            },
        },
        Frame::Request {
            id: 4,
            body: Request::PutSchema {
                tree: "parts".into(),
                version: 1,
                schema: "(tree: \"parts\")".into(),
            },
        },
        Frame::Request {
            id: 2,
            body: Request::Changes {
                op: [1; 16],
                changes: vec![Change {
                    tree: "parts".into(),
                    id: 5,
                    rev: 0,
                    kind: ChangeKind::Put {
                        version: 1,
                        data: vec![1, 2, 3],
                    },
                }],
            },
        },
        Frame::Response {
            id: 2,
            body: Response::Accepted { seq: 9 },
        },
        Frame::Response {
            id: 3,
            body: Response::Error(RemoteError::AlreadyBorrowed {
                holder: 4,
                name: Some("alice".into()),
            }),
        },
        Frame::Response {
            id: 3,
            body: Response::Entries(vec![EntryOutcome::Rejected(RemoteError::AlreadyBorrowed {
                holder: 4,
                name: None,
            })]),
        },
        Frame::Response {
            id: 4,
            body: Response::Ranges(vec![(1000, 2000)]),
        },
        Frame::Push(Push::Changes(vec![
            Sequenced {
                seq: 1,
                origin: 2,
                change: Change {
                    tree: "parts".into(),
                    id: 5,
                    rev: 0,
                    kind: ChangeKind::Release,
                },
            },
            Sequenced {
                seq: 2,
                origin: 2,
                change: Change {
                    tree: "parts".into(),
                    id: 5,
                    rev: 0,
                    kind: ChangeKind::SetState(3),
                },
            },
        ])),
        Frame::Push(Push::Changes(vec![Sequenced {
            seq: 3,
            origin: 4,
            change: Change {
                tree: "parts".into(),
                id: 5,
                rev: 0,
                kind: ChangeKind::Borrow { holder: 4 },
            },
        }])),
        Frame::Push(Push::CaughtUp { head: 2 }),
        Frame::Request {
            id: 5,
            body: Request::Schema {
                tree: "parts".into(),
                version: 2,
            },
        },
        Frame::Response {
            id: 5,
            body: Response::Schema("(tree: \"parts\", version: 2)".into()),
        },
        Frame::Request {
            id: 6,
            body: Request::Entries {
                first: 3,
                entries: vec![vec![Change {
                    tree: "notes".into(),
                    id: 9,
                    rev: 0,
                    kind: ChangeKind::Edit {
                        base: 17,
                        hlc: 7 << 16,
                        version: 1,
                        data: vec![4, 5, 6],
                    },
                }]],
            },
        },
        Frame::Response {
            id: 6,
            body: Response::Entries(vec![
                EntryOutcome::Applied { seq: 18 },
                EntryOutcome::Rejected(RemoteError::Conflict(Box::new(Current {
                    tree: "notes".into(),
                    id: 9,
                    rev: 0,
                    seq: 19,
                    origin: 3,
                    hlc: 8 << 16,
                    version: 1,
                    data: vec![1, 2],
                    base: Some((1, vec![3])),
                }))),
                EntryOutcome::Skipped,
            ]),
        },
    ]
}
