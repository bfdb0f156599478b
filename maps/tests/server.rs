//! MapsServers driven by hand over a tiny in-process bus (one total order,
//! no faults): what a forwarding server's client hears when the primary
//! server cannot order its update.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gc_core::{ConfId, Delivery, Event, Level, MsgId, Pid, ViewId, ViewInfo};
use maps::wire::Msg;
use maps::{
    Action, ClientId, MapsServer, MemDisk, MemStorage, Op, Refusal, Request, RequestError,
    Response, ServerConfig, Update, UpdateId,
};

const GROUP: &str = "maps";

struct Bus {
    servers: Vec<MapsServer<MemStorage>>,
    view: ViewId,
    queue: Vec<(usize, Level, Vec<u8>)>,
    seq: u64,
    replies: Vec<(usize, ClientId, Response)>,
}

impl Bus {
    fn new(n: u32) -> Bus {
        let members: Vec<Pid> = (1..=n).map(|i| Pid::new(i, 1)).collect();
        let cfg = ServerConfig {
            group: GROUP.into(),
            hosts: (1..=n).collect(),
            ..ServerConfig::default()
        };
        let servers = members
            .iter()
            .map(|p| {
                MapsServer::open(*p, MemDisk::new().storage(), cfg.clone())
                    .unwrap()
                    .0
            })
            .collect();
        let view = ViewId {
            counter: 1,
            coordinator: members[0],
        };
        let mut bus = Bus {
            servers,
            view,
            queue: Vec::new(),
            seq: 0,
            replies: Vec::new(),
        };
        let info = ViewInfo {
            conf: ConfId::Regular(view),
            members,
            primary: Some(1),
        };
        for i in 0..n as usize {
            let a = bus.servers[i].on_event(&Event::View(info.clone())).unwrap();
            bus.exec(i, a);
        }
        bus
    }

    fn exec(&mut self, i: usize, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Multicast { level, payload } => self.queue.push((i, level, payload)),
                Action::Reply { client, response } => self.replies.push((i, client, response)),
                Action::Render(_) => {}
            }
        }
    }

    fn deliver(&mut self, (from, level, payload): (usize, Level, Vec<u8>)) {
        self.seq += 1;
        let ev = Event::Deliver(Delivery {
            msg: MsgId {
                sender: self.servers[from].pid(),
                view: self.view,
                seq: self.seq,
            },
            group: GROUP.into(),
            level,
            payload,
            conf: ConfId::Regular(self.view),
        });
        for i in 0..self.servers.len() {
            let a = self.servers[i].on_event(&ev).unwrap();
            self.exec(i, a);
        }
    }

    fn run(&mut self) {
        while !self.queue.is_empty() {
            let m = self.queue.remove(0);
            self.deliver(m);
        }
    }

    fn request(&mut self, i: usize, client: ClientId, request: Request) {
        let a = self.servers[i].client_request(client, request).unwrap();
        self.exec(i, a);
    }
}

fn update(id: u128, op: Op) -> Request {
    Request::Update(Update {
        id: UpdateId(id),
        map: "m".into(),
        op,
    })
}

#[test]
fn a_forwarded_update_the_primary_could_not_send_is_refused_to_its_client() {
    let mut bus = Bus::new(2);
    bus.run();
    assert!(bus.servers.iter().all(|s| s.is_settled()));
    assert_eq!(bus.servers[1].primary_server(), Some(Pid::new(1, 1)));
    bus.request(1, 7, update(1, Op::CreateMap));
    // The forward reaches the primary, which orders it...
    let forward = bus.queue.remove(0);
    bus.deliver(forward);
    let (from, _, ordered) = bus.queue.remove(0);
    assert_eq!(from, 0);
    assert!(matches!(Msg::decode(&ordered), Ok(Msg::Ordered(_))));
    // ...but gc-core refuses to send it: the forwarding server's client
    // hears a refusal now, not at the next view change.
    let a = bus.servers[0].on_send_failed(&ordered);
    bus.exec(0, a);
    bus.run();
    let got: Vec<_> = bus.replies.iter().filter(|r| r.1 == 7).collect();
    assert_eq!(got.len(), 1, "{:?}", bus.replies);
    assert!(
        matches!(
            &got[0].2,
            Response::Error(RequestError::Refused(Refusal::Busy { .. }))
        ),
        "{got:?}"
    );
    // Retried, it is applied once a majority holds it.
    bus.replies.clear();
    bus.request(1, 8, update(1, Op::CreateMap));
    bus.run();
    assert!(
        matches!(bus.replies.as_slice(), [(1, 8, Response::Outcome { .. })]),
        "{:?}",
        bus.replies
    );
    assert_eq!(bus.servers[0].tables().version("m"), 1);
    assert_eq!(bus.servers[1].tables().version("m"), 1);
}

#[test]
fn a_control_message_gc_core_refused_is_sent_again_at_the_next_input() {
    let mut bus = Bus::new(2);
    // Server 2's state message is refused by gc-core.
    let (i, _, state) = bus.queue.remove(1);
    assert_eq!(i, 1);
    assert!(bus.servers[1].on_send_failed(&state).is_empty());
    // A driver with a timer gets it back from retry()...
    let again = bus.servers[1].retry();
    assert_eq!(again.len(), 1);
    // ...refused once more, it goes out with the next input (the delivery
    // of server 1's own state), without any timer.
    let Action::Multicast { payload, .. } = &again[0] else {
        panic!("{again:?}");
    };
    assert!(bus.servers[1].on_send_failed(payload).is_empty());
    bus.run();
    assert!(bus.servers.iter().all(|s| s.is_settled()));
}

fn set(key: &str, value: &str) -> Op {
    Op::Set {
        key: key.into(),
        value: value.into(),
    }
}

fn reused(r: &Response) -> bool {
    matches!(
        r,
        Response::Error(RequestError::Refused(Refusal::IdReused { .. }))
    )
}

#[test]
fn an_update_id_reused_for_a_different_update_is_refused_and_a_retry_is_not() {
    let mut bus = Bus::new(3);
    bus.run();
    bus.request(1, 1, update(1, Op::CreateMap));
    bus.run();
    bus.request(1, 2, update(5, set("idk", "v1")));
    bus.run();
    assert!(
        matches!(
            bus.replies.as_slice(),
            [
                ..,
                (
                    1,
                    2,
                    Response::Outcome {
                        duplicate: false,
                        ..
                    }
                )
            ]
        ),
        "{:?}",
        bus.replies
    );
    let version = bus.servers[0].tables().version("m");
    // The same id for another value, through a server that is not the
    // primary (answered from its own tables) and through the primary.
    for (i, client) in [(1, 3), (0, 4), (2, 5)] {
        bus.replies.clear();
        bus.request(i, client, update(5, set("idk", "DIFFERENT")));
        bus.run();
        assert!(
            matches!(bus.replies.as_slice(), [(_, c, r)] if *c == client && reused(r)),
            "{:?}",
            bus.replies
        );
        let Response::Error(RequestError::Refused(e)) = &bus.replies[0].2 else {
            unreachable!()
        };
        assert!(
            e.to_string().starts_with(&format!(
                "update id {} was already used for a different update of map \"m\": the one at \
                 version 2 (applied)",
                UpdateId(5)
            )),
            "{e}"
        );
    }
    // Nothing was ordered for them: the value and the version stay.
    for s in &bus.servers {
        assert_eq!(s.tables().version("m"), version);
        assert_eq!(s.tables().map("m").unwrap().get("idk").unwrap().value, "v1");
    }
    // A retry of the same update keeps its first outcome.
    bus.replies.clear();
    bus.request(2, 6, update(5, set("idk", "v1")));
    bus.run();
    assert!(
        matches!(
            bus.replies.as_slice(),
            [(2, 6, Response::Outcome { duplicate: true, outcome, .. })] if outcome.is_applied()
        ),
        "{:?}",
        bus.replies
    );
    // Two different updates with one id on their way at once: the second
    // is refused before it is sent; the first is applied.
    bus.replies.clear();
    bus.request(1, 7, update(9, set("x", "a")));
    bus.request(1, 8, update(9, set("x", "b")));
    bus.run();
    assert!(
        bus.replies.iter().any(|(_, c, r)| *c == 8 && reused(r)),
        "{:?}",
        bus.replies
    );
    assert!(
        bus.replies.iter().any(|(_, c, r)| *c == 7
            && matches!(
                r,
                Response::Outcome {
                    duplicate: false,
                    ..
                }
            )),
        "{:?}",
        bus.replies
    );
    // ...and the same from two servers: the primary orders one and refuses
    // the other.
    bus.replies.clear();
    bus.request(1, 9, update(10, set("y", "a")));
    bus.request(2, 10, update(10, set("y", "b")));
    bus.run();
    let refused = bus.replies.iter().filter(|(_, _, r)| reused(r)).count();
    let applied = bus
        .replies
        .iter()
        .filter(|(_, _, r)| {
            matches!(
                r,
                Response::Outcome {
                    duplicate: false,
                    ..
                }
            )
        })
        .count();
    assert_eq!((refused, applied), (1, 1), "{:?}", bus.replies);
    let y = &bus.servers[0]
        .tables()
        .map("m")
        .unwrap()
        .get("y")
        .unwrap()
        .value;
    assert!(y == "a" || y == "b");
}
