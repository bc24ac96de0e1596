//! The driver loop, checked with a tiny fake machine over real loopback sockets: messages go
//! both ways through the framing, the timer fires, a bad frame costs exactly one connection
//! (answered, flushed, closed) and the listener keeps serving. The fake machine refuses an input
//! that comes before its outputs were drained, so every test also checks that the driver drains
//! before the next input.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use p2p_core::limits::BLOCK_BYTES;
use p2p_core::wire::{encode_frame, ErrorCode, Message};
use p2p_core::{ChunkIndex, Command, CommandError, ConnId, Digest, Event, FileId, Input, Machine, Output, Time};
use p2p_net::connection::WRITE_QUEUE_BYTES_MAX;
use p2p_net::driver::{Driver, EventSink, Local};
use p2p_net::secure::{self, Keys, SecureStream};
use p2p_net::NodeEvent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A machine that echoes what it receives on accepted connections, dials `dial` when told to
/// get a file, and reports what it sees as `ProtocolViolation` events (a handy free-text event).
#[derive(Debug, Default)]
struct Echo {
    dial: Option<SocketAddr>,
    outputs: VecDeque<Output>,
    wake_at: Option<Time>,
}

impl Echo {
    fn note(&mut self, conn: ConnId, reason: String) {
        self.outputs.push_back(Output::Event(Event::ProtocolViolation { conn, reason }));
    }
}

impl Machine for Echo {
    fn handle(&mut self, now: Time, input: Input) {
        // The driving contract: every input comes after the outputs of the last were drained.
        assert!(self.outputs.is_empty(), "the driver handed {input:?} before draining {:?}", self.outputs);
        match input {
            Input::Connected { conn: conn @ ConnId::Outbound(_), .. } => {
                self.outputs.push_back(Output::Send { conn, message: Message::List });
                let bytes = Bytes::from(vec![7u8; 1 << 20]);
                let data = Message::Data { file_id: file_id(), chunk: ChunkIndex(0), offset: 0, bytes };
                self.outputs.push_back(Output::Send { conn, message: data });
                self.wake_at = Some(now + Duration::from_millis(30));
            }
            Input::Message { conn: conn @ ConnId::Inbound(_), message: Message::Locate { .. } } => {
                // A flood larger than any write queue may hold, for a remote that does not read.
                for _ in 0..FLOOD_BLOCKS {
                    let bytes = Bytes::from(vec![0u8; BLOCK_BYTES as usize]);
                    let data = Message::Data { file_id: file_id(), chunk: ChunkIndex(0), offset: 0, bytes };
                    self.outputs.push_back(Output::Send { conn, message: data });
                }
            }
            Input::Message { conn: conn @ ConnId::Inbound(_), message } => {
                self.outputs.push_back(Output::Send { conn, message });
            }
            Input::Disconnected { conn: conn @ ConnId::Inbound(_) } => self.note(conn, "disconnected".into()),
            Input::Message { conn, message } => {
                let len = match &message {
                    Message::Data { bytes, .. } => bytes.len(),
                    _ => 0,
                };
                self.note(conn, format!("echo {} {len}", message.kind()));
            }
            Input::BadFrame { conn, error } => {
                let answer = Message::error(None, ErrorCode::MalformedFrame, error.to_string());
                self.outputs.push_back(Output::Send { conn, message: answer });
                self.outputs.push_back(Output::Close { conn });
                self.note(conn, "bad frame".into());
            }
            Input::Timeout => {
                self.wake_at = None;
                self.note(ConnId::Outbound(0), "timeout".into());
            }
            _ => {}
        }
    }

    fn command(&mut self, _now: Time, command: Command) -> Result<(), CommandError> {
        assert!(self.outputs.is_empty(), "the driver gave {command:?} before draining {:?}", self.outputs);
        if let (Command::Get { .. }, Some(addr)) = (&command, self.dial) {
            self.outputs.push_back(Output::Connect { conn: ConnId::Outbound(1), addr });
        }
        Ok(())
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.wake_at
    }
}

/// Blocks sent to a remote that asked with `Locate`: more than the write queue limit.
const FLOOD_BLOCKS: usize = WRITE_QUEUE_BYTES_MAX / BLOCK_BYTES as usize + 64;

fn file_id() -> FileId {
    FileId(Digest([1; 32]))
}

async fn start_echo(
    dial: Option<SocketAddr>,
) -> (actix::Addr<Driver<Echo>>, SocketAddr, mpsc::UnboundedReceiver<NodeEvent>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (sender, events) = mpsc::unbounded_channel();
    let driver = Driver::new(
        Echo { dial, ..Echo::default() },
        Keys::new_open(),
        "echo".into(),
        None,
        Some(EventSink::Every(sender)),
    );
    (driver.start_with_listener(listener), addr, events)
}

/// A client connection to `addr`, past the transport's handshake.
async fn dial(addr: SocketAddr) -> SecureStream {
    let stream = TcpStream::connect(addr).await.expect("connect");
    secure::connect(stream, &Keys::new_open()).await.expect("handshake")
}

/// A new client's frame still comes back: the server goes on serving after what came before.
async fn assert_still_echoes(addr: SocketAddr) {
    let mut good = dial(addr).await;
    let mut frame = BytesMut::new();
    encode_frame(&Message::List, &mut frame).expect("fits");
    good.write_all(&frame).await.expect("write");
    good.flush().await.expect("sent");
    let mut echoed = vec![0u8; frame.len()];
    tokio::time::timeout(Duration::from_secs(10), good.read_exact(&mut echoed)).await.expect("in time").expect("read");
    assert_eq!(echoed, frame.to_vec(), "the server still echoes on a new connection");
}

/// The next note, skipping the driver's reports on the connections it opened.
async fn next_note(events: &mut mpsc::UnboundedReceiver<NodeEvent>) -> String {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.expect("an event in time");
        match event.expect("driver alive") {
            NodeEvent::Machine(Event::ProtocolViolation { reason, .. }) => return reason,
            NodeEvent::Connected { .. } | NodeEvent::ConnectFailed { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[actix_rt::test]
async fn messages_round_trip_and_the_timer_fires() {
    let (_server, server_addr, _server_events) = start_echo(None).await;
    let (client, _, mut events) = start_echo(Some(server_addr)).await;
    client.send(Local(Command::Get { file_id: file_id(), resume: None })).await.expect("alive").expect("accepted");
    let mut notes = vec![next_note(&mut events).await, next_note(&mut events).await, next_note(&mut events).await];
    notes.sort();
    assert_eq!(notes, ["echo data 1048576", "echo list 0", "timeout"]);
}

#[actix_rt::test]
async fn a_bad_frame_costs_one_answered_connection_and_the_server_goes_on() {
    let (_server, addr, mut events) = start_echo(None).await;
    for garbage in [&[0, 0, 0, 3, 0xff, 0xfe, 0xfd][..], &[0xff, 0xff, 0xff, 0xff, 1, 2, 3][..]] {
        let mut hostile = dial(addr).await;
        hostile.write_all(garbage).await.expect("write");
        hostile.flush().await.expect("sent");
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), hostile.read_to_end(&mut answer)).await;
        read.expect("closed in time").expect("read");
        let message = p2p_core::wire::decode_frame(&mut BytesMut::from(&answer[..])).expect("a frame");
        assert!(matches!(message, Some(Message::Error { code: ErrorCode::MalformedFrame, .. })), "{message:?}");
        assert_eq!(next_note(&mut events).await, "bad frame");
    }
    assert_still_echoes(addr).await;
}

#[actix_rt::test]
async fn a_remote_that_does_not_read_is_dropped_once_its_queue_is_full() {
    let (_server, addr, mut events) = start_echo(None).await;
    let mut lazy = dial(addr).await;
    let mut frame = BytesMut::new();
    encode_frame(&Message::Locate { file_id: file_id(), with_manifest: false }, &mut frame).expect("fits");
    lazy.write_all(&frame).await.expect("write");
    lazy.flush().await.expect("sent");
    assert_eq!(next_note(&mut events).await, "disconnected", "the flood overflowed the queue and cost the connection");
    drop(lazy);
    assert_still_echoes(addr).await;
}

#[actix_rt::test]
async fn events_past_a_bounded_sinks_room_are_dropped_and_the_driver_serves_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (sender, mut events) = mpsc::channel(2);
    let driver = Driver::new(Echo::default(), Keys::new_open(), "echo".into(), None, Some(EventSink::UpTo(sender)));
    let _driver = driver.start_with_listener(listener);
    // Five connections that echo and close: five notes, nobody reading them.
    for _ in 0..5 {
        assert_still_echoes(addr).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut kept = 0;
    while let Ok(event) = events.try_recv() {
        assert!(matches!(event, NodeEvent::Machine(Event::ProtocolViolation { .. })), "{event:?}");
        kept += 1;
    }
    assert_eq!(kept, 2, "the channel's room, the rest dropped");
    assert_still_echoes(addr).await;
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv()).await.expect("in time").expect("alive");
    assert!(
        matches!(&event, NodeEvent::Machine(Event::ProtocolViolation { reason, .. }) if reason == "disconnected"),
        "room again once read: {event:?}"
    );
}
