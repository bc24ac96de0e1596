//! A test client that speaks the wire protocol to a real node: the transport's handshake (the
//! product's own, `p2p_net::secure`), then frames of core's codec, sent and read one by one
//! with bounded waits. Each client drives its socket on a runtime of its own, so a test calls
//! it from plain threads.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use p2p_core::wire::{decode_frame, encode_frame, Hello, Message, Role};
use p2p_core::PeerId;
use p2p_net::secure::{self, HandshakeError, Keys, SecureStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::runtime::Runtime;

/// How long a client waits for a connection and its handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection past its handshake, speaking frames.
pub struct WireClient {
    runtime: Runtime,
    stream: SecureStream,
    buffer: BytesMut,
    keys: Keys,
}

impl WireClient {
    /// Connects to `addr`, from the loopback address `source` when given, and runs the
    /// handshake with `keys`.
    pub fn connect(source: Option<Ipv4Addr>, addr: SocketAddr, keys: Keys) -> Result<WireClient, HandshakeError> {
        WireClient::connect_with(source, addr, keys, None)
    }

    /// [`WireClient::connect`], with the socket's receive buffer set to `recv_buffer_bytes`
    /// when given (a client that reads nothing then holds up its sender after that much, not
    /// after the megabytes a loopback socket grows to).
    pub fn connect_with(
        source: Option<Ipv4Addr>,
        addr: SocketAddr,
        keys: Keys,
        recv_buffer_bytes: Option<u32>,
    ) -> Result<WireClient, HandshakeError> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let stream = runtime.block_on(async {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, tcp_connect(source, addr, recv_buffer_bytes))
                .await
                .map_err(|_| HandshakeError::TimedOut(CONNECT_TIMEOUT))??;
            secure::connect(stream, &keys).await
        })?;
        Ok(WireClient { runtime, stream, buffer: BytesMut::new(), keys })
    }

    /// Connects with a new key pair in an open swarm and exchanges `Hello`s as `role`,
    /// listening on `listen_port`; the remote must answer as a tracker.
    pub fn hello(source: Option<Ipv4Addr>, addr: SocketAddr, role: Role, listen_port: u16) -> WireClient {
        let mut client = WireClient::connect(source, addr, Keys::new_open()).expect("a handshake");
        let peer_id = client.peer_id();
        client.send(&Message::Hello(Hello::new(role, peer_id, listen_port)));
        match client.recv(CONNECT_TIMEOUT) {
            Some(Message::Hello(reply)) => assert_eq!(reply.role, Role::Tracker),
            other => panic!("hello answered with {other:?}"),
        }
        client
    }

    /// The id this client's key proves.
    pub fn peer_id(&self) -> PeerId {
        self.keys.identity.peer_id()
    }

    /// The id the remote's key proved.
    pub fn remote_id(&self) -> PeerId {
        self.stream.peer_id()
    }

    /// Sends one message.
    pub fn send(&mut self, message: &Message) {
        let mut frame = BytesMut::new();
        encode_frame(message, &mut frame).expect("fits a frame");
        self.send_bytes(&frame).expect("sends");
    }

    /// Sends `bytes` as they are inside the encrypted stream (a hostile client's frames).
    pub fn send_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = &mut self.stream;
        self.runtime.block_on(async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
    }

    /// The next message, or `None` once the remote closed the connection.
    pub fn recv(&mut self, timeout: Duration) -> Option<Message> {
        match self.recv_within(timeout) {
            Received::Message(message) => Some(message),
            Received::Closed => None,
            Received::Nothing => panic!("no answer within {timeout:?}"),
        }
    }

    /// The next message, the remote's close, or nothing within `timeout`.
    pub fn recv_within(&mut self, timeout: Duration) -> Received {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(message) = decode_frame(&mut self.buffer).expect("the remote sends valid frames") {
                return Received::Message(message);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Received::Nothing;
            }
            let mut chunk = [0u8; 16 * 1024];
            let stream = &mut self.stream;
            match self.runtime.block_on(async { tokio::time::timeout(left, stream.read(&mut chunk)).await }) {
                Ok(Ok(0)) | Ok(Err(_)) => return Received::Closed,
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
        }
    }
}

/// What [`WireClient::recv_within`] saw.
#[derive(Debug, PartialEq)]
pub enum Received {
    /// A whole message.
    Message(Message),
    /// The remote closed the connection.
    Closed,
    /// Nothing before the time was up.
    Nothing,
}

/// A TCP connection to `addr`, from the loopback address `source` when given (any loopback
/// address reaches 127.0.0.1), with a receive buffer of `recv_buffer_bytes` when given.
async fn tcp_connect(
    source: Option<Ipv4Addr>,
    addr: SocketAddr,
    recv_buffer_bytes: Option<u32>,
) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(bytes) = recv_buffer_bytes {
        socket.set_recv_buffer_size(bytes)?;
    }
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    }
    socket.connect(addr).await
}
