//! Every bound of the system in one place.
//!
//! Names carry their unit (`_bytes`, `_ms`, `_count`) and say whether they are a maximum or a
//! default. The const assertions at the bottom tie the bounds together, so a change that breaks
//! one relation fails to compile instead of failing in production.

use std::time::Duration;

/// Largest frame body (the CBOR message after the 4-byte length) either side accepts.
pub const FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Length of the big-endian length prefix in front of every frame.
pub const FRAME_HEADER_BYTES: usize = 4;

/// Largest body of a connection's first frame, which must be a `Hello` (or the `Error` that
/// refuses the connection): the largest `Hello` encodes to under 192 bytes, the rest is
/// room for a refusal's detail. A length prefix over it before the handshake costs the remote
/// its connection, so an unauthenticated stranger never makes a receiver buffer more than this.
pub const HELLO_FRAME_BYTES_MAX: usize = 512;

/// Bytes of a frame body (other than `Data`, whose payload is sliced, not decoded) beyond
/// which decoding it costs enough to be done off the thread other connections wait on: a
/// manifest of many pieces decodes item by item.
pub const BODY_DECODE_CHEAP_BYTES_MAX: usize = 64 * 1024;

/// Frame bodies over [`BODY_DECODE_CHEAP_BYTES_MAX`] one process decodes off its connections'
/// thread at once; a connection with one more waits its turn (and reads nothing meanwhile).
/// Their bodies count against [`READ_BUFFERS_TOTAL_BYTES_MAX`] until they are decoded.
pub const BODY_DECODES_OFF_THREAD_MAX: usize = 2;

/// Bytes all the receive buffers of one process's connections may hold together (bytes
/// received but not yet decoded, and room reserved for the next read). Past it the connection
/// holding the most is closed: a hostile remote's half-sent frames are the largest holders,
/// while honest frames complete and leave the buffer at once.
pub const READ_BUFFERS_TOTAL_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Size of one block, the unit of a `Request`/`Data` exchange, in chunks of up to
/// [`BLOCKS_PER_CHUNK_MAX`] blocks (a chunk no larger is one block; larger chunks have blocks
/// of a [`BLOCKS_PER_CHUNK_MAX`]th of the chunk, see `Manifest::block_bytes`). The last block of
/// a chunk may be shorter. A block is what one duplicate (an endgame copy, a request that
/// crossed a `Busy`) wastes of an uplink; smaller blocks did not pay (see BENCHMARKS.md,
/// "Swarm efficiency"): a chunk still comes from one holder outside endgame, so splitting it
/// only adds requests and lets late blocks of a reassigned chunk arrive twice.
pub const BLOCK_BYTES: u32 = 256 * 1024;

/// Most blocks in one chunk: a download tracks a chunk's blocks (requested, received, written,
/// each sender's) in a `u64` mask.
pub const BLOCKS_PER_CHUNK_MAX: u32 = 64;

/// Largest block of any chunk (that of the largest chunks): the longest `Request` a peer
/// serves and the largest `Data` payload.
pub const BLOCK_BYTES_MAX: u32 = {
    let largest_chunks_block = PIECE_BYTES_MAX / CHUNKS_PER_PIECE_MAX / BLOCKS_PER_CHUNK_MAX;
    if largest_chunks_block > BLOCK_BYTES {
        largest_chunks_block
    } else {
        BLOCK_BYTES
    }
};

/// Most chunks in a piece. Peers exchange and verify chunks, so a chunk can be passed on as
/// soon as it is checked, while its piece is still arriving; a piece's digest is SHA-256 of
/// its chunks' digests (see `manifest/digest.rs`), so the list that lets each chunk be checked
/// on its own is at most 4 digests, 128 bytes. Finer chunks spread a file faster through a
/// crowd but cost every transfer more frames, writes and hashes per byte (see BENCHMARKS.md,
/// "Swarm efficiency").
pub const CHUNKS_PER_PIECE_MAX: u32 = 4;

/// Most chunk digest lists a peer remembers having sent on one connection (see
/// `peer/lists.rs`): a list forgotten is sent again, 128 bytes, before the next block of its
/// piece.
pub const SENT_LISTS_PER_CONN_MAX: usize = 64;

/// Smallest chunk of a piece (that of pieces up to 256 KiB; a smaller piece is one chunk).
pub const CHUNK_BYTES_MIN: u32 = 16 * 1024;

/// Smallest piece size a manifest may declare.
pub const PIECE_BYTES_MIN: u32 = 16 * 1024;

/// Largest piece size a manifest may declare.
pub const PIECE_BYTES_MAX: u32 = 16 * 1024 * 1024;

/// Smallest piece size the automatic choice picks.
pub const PIECE_BYTES_AUTO_MIN: u32 = 256 * 1024;

/// Largest piece size the automatic choice picks.
pub const PIECE_BYTES_AUTO_MAX: u32 = 4 * 1024 * 1024;

/// The automatic piece-size choice aims at no more than this many pieces per file.
pub const PIECES_AUTO_TARGET_COUNT: u64 = 1024;

/// Most pieces a manifest may list (bounds the manifest's size).
pub const PIECES_MAX: u32 = 32 * 1024;

/// Most chunks a file may have (bounds the bitfields' sizes).
pub const CHUNKS_MAX: u32 = PIECES_MAX * CHUNKS_PER_PIECE_MAX;

/// Longest file name a manifest may carry, in bytes of UTF-8.
pub const FILE_NAME_BYTES_MAX: usize = 255;

/// Most entries (files and empty directories) the tree of a shared directory may list.
pub const TREE_ENTRIES_MAX: usize = 10_000;

/// Most components of one path in a shared directory's tree (its depth below the root).
pub const TREE_PATH_COMPONENTS_MAX: usize = 32;

/// Longest path in a shared directory's tree, in bytes of UTF-8 with a `/` between components.
pub const TREE_PATH_BYTES_MAX: usize = 1024;

/// Most bytes of path text (each path with its separators) a tree may list in all: bounds the
/// manifest of a directory beyond its piece hashes.
pub const TREE_PATHS_TOTAL_BYTES_MAX: usize = 1024 * 1024;

/// Most holders the tracker returns per piece in one `Located` answer.
pub const HOLDERS_PER_PIECE_MAX: usize = 8;

/// Most distinct peers one `Located` answer may name (what a peer accepts on the wire).
pub const LOCATED_PEERS_MAX: usize = 64;

/// Most distinct peers the tracker names in one `Located` answer. The asker dials the peers of
/// an answer only while it has outbound room ([`OUTBOUND_PEERS_MAX`]) and forgets the rest, but
/// a name it is already connected to takes no room (the connection is asked for the file), so
/// an answer names a few more peers than a newcomer can dial. Each name costs the tracker's
/// uplink a record (peer, address and bitfield), and a flash crowd's askers all ask within one
/// locate interval: names past what an asker can use delay the other askers' answers.
pub const LOCATED_PEERS_NAMED_MAX: usize = 32;

/// Most peers the tracker names to an asker that has not announced the file, in a swarm of
/// more than [`LOCATED_PEERS_NAMED_MAX`] peers: it does not know the manifest yet, so it needs
/// one peer that sends it and meets the rest of the swarm through the peers it connects to
/// (peer exchange, the next answer). A crowd's askers all ask at once and the tracker's
/// uplink is shared by their answers, so a short answer arrives sooner.
pub const LOCATED_PEERS_UNANNOUNCED_MAX: usize = 8;

/// Most askers the tracker names one peer to within [`LOCATED_NAMING_WINDOW`], while other
/// holders of the same pieces can be named instead: a peer admits only [`INBOUND_PEERS_MAX`]
/// connections, so naming the few early holders of a flash crowd to every newcomer sends most
/// of them to a refusal while later holders sit idle. A piece whose every holder was named
/// this often still gets one named holder.
pub const LOCATED_NAMINGS_PER_PEER_MAX: u32 = INBOUND_PEERS_MAX as u32;

/// The window over which [`LOCATED_NAMINGS_PER_PEER_MAX`] counts: as long as a downloader
/// that was refused waits before it asks the tracker again.
pub const LOCATED_NAMING_WINDOW: Duration = LOCATE_INTERVAL;

/// Most peers that hold none of a file's pieces yet (but know its manifest) one `Located`
/// answer names beside the holders, when the holders leave room: newcomers of a flash crowd
/// meet each other before they hold pieces (each then fetches what another just received),
/// and a downloader without the manifest has more peers to ask for it than the few holders.
pub const LOCATED_NEWCOMERS_MAX: usize = 8;

/// Manifest bytes the tracker sends in `Located` answers per [`LOCATED_NAMING_WINDOW`], over
/// all askers; past it (the window's first manifest always goes, whatever its size), an asker
/// of the manifest gets the holders only, which send it as they do for a first ask. A crowd
/// that asks at once would otherwise hold the tracker's uplink for seconds with copies of one
/// manifest, and a flood of small `Locate`s cannot make the tracker send more than this.
pub const LOCATED_MANIFEST_BYTES_PER_WINDOW: u64 = 256 * 1024;

/// How long the tracker reuses the holder lists it built for a file's `Located` answers (a
/// holder coming or going drops them sooner).
pub const LOCATED_REUSE_TIME: Duration = Duration::from_secs(1);

/// Most holder lists, each with its own shuffle, the tracker builds per file and hands out in
/// turn while they are reused, so askers of a popular file still spread over its holders.
pub const LOCATED_REUSED_PER_FILE_COUNT: usize = 4;

/// Most askers one reused holder list is handed to; then the file's lists are built afresh. A
/// list names about `HOLDERS_PER_PIECE_MAX` peers per piece, so this bounds how many newcomers
/// are sent to the same holders at once (each accepts only `INBOUND_PEERS_MAX`): a swarm
/// whose askers all got the same few lists crowded a few holders and spread slowly.
pub const LOCATED_REUSES_PER_LIST_MAX: usize = 8;

/// Bytes of holder lists past which the tracker keeps no more for reuse (until some age out).
pub const LOCATED_REUSE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Most files one tracker keeps.
pub const TRACKER_FILES_MAX: usize = 100_000;

/// Most peers one tracker keeps.
pub const TRACKER_PEERS_MAX: usize = 100_000;

/// Most files one peer registration (one tracker connection) may announce: as many as a peer
/// handles at once.
pub const TRACKER_FILES_PER_PEER_MAX: usize = PEER_FILES_MAX;

/// Manifest bytes (32 per piece, plus the name) of the files one peer registration holds,
/// summed over its files: room for [`TRACKER_FILES_PER_PEER_MAX`] files of
/// [`PIECES_AUTO_TARGET_COUNT`] pieces, names aside. It also bounds the chunks one
/// registration announces (its bitfields, at most 4 chunks a piece) to an 8th of it.
pub const TRACKER_MANIFEST_BYTES_PER_PEER_MAX: u64 = 32 * 1024 * 1024;

/// Distinct files the peers of one source IP may hold together.
pub const TRACKER_FILES_PER_IP_MAX: usize = 4 * 1024;

/// Manifest bytes of the distinct files the peers of one source IP hold together: what one
/// host can make the tracker keep in manifests.
pub const TRACKER_MANIFEST_BYTES_PER_IP_MAX: u64 = 64 * 1024 * 1024;

/// Chunks the peers of one source IP may announce, summed over all their holdings (bounds their
/// bitfields to 128 MiB; a thousand peers behind one address holding a thousand files of a
/// thousand chunks each fit).
pub const TRACKER_CHUNKS_PER_IP_MAX: u64 = 1 << 30;

/// Most files one `Files` answer lists (the tracker also keeps the answer well under
/// [`FRAME_BYTES_MAX`]; `truncated` tells the client more exist).
pub const LIST_FILES_MAX: usize = 1024;

/// Most files one peer shares or downloads at once.
pub const PEER_FILES_MAX: usize = 1024;

/// Most connections a peer keeps open at once.
pub const CONNECTIONS_MAX: usize = 4096;

/// Most connections a tracker keeps open at once: one persistent connection per peer it
/// tracks, plus room for clients such as `p2p-node ls`.
pub const TRACKER_CONNECTIONS_MAX: usize = TRACKER_PEERS_MAX + 4096;

/// Most peer-to-peer connections a downloading peer opens on its own initiative. In a crowd
/// every peer also accepts about as many as it opens, and each connection costs its handshake,
/// bitfields and a `Haves` per batch of verified pieces while a peer fetches a block from only
/// a few remotes at a time: with 32 almost half of a 1,000-peer crowd's connections carried no
/// block.
pub const OUTBOUND_PEERS_MAX: usize = 24;

/// Most peer-to-peer connections a peer accepts; past it a newcomer takes the slot of the
/// connection idle for longest (see [`INBOUND_IDLE_BEFORE_EVICTION`]), or is refused
/// (`Overloaded`) when none is idle long enough, and the remote tries other holders. Bounds
/// the per-piece work of telling remotes about new pieces.
pub const INBOUND_PEERS_MAX: usize = 64;

/// Inbound connections a peer whose [`INBOUND_PEERS_MAX`] slots are all taken (by remotes
/// that exchanged data lately) still accepts, beside them, only to answer one manifest ask
/// before it refuses them: a flash crowd's newcomers can join the exchange only once they know
/// the manifest, the tracker sends it to few, and the peers it names as knowing it are the
/// ones whose slots fill first. Each costs a `Hello`, at most one manifest and a refusal; one
/// that asks nothing is refused at its first message or closed after [`INBOUND_COURTESY_TIMEOUT`].
pub const INBOUND_COURTESY_MAX: usize = 16;

/// Inbound connections a peer whose slots and courtesies ([`INBOUND_COURTESY_MAX`]) are all
/// taken still accepts, beside them, only to refer: its first message after the handshake is
/// answered with a `Peers` naming up to [`PEX_INTRODUCTION_PEERS_MAX`] of our ready remotes of
/// the file it names (they know the manifest), then refused as busy.
pub const INBOUND_REFERRALS_MAX: usize = 64;

/// How long a connection accepted beyond the slots ([`INBOUND_COURTESY_MAX`]) stays open at
/// most, handshake included: the remote's manifest ask comes a round trip after it connected
/// (it sends it once our `Hello` arrives), so an honest asker is answered well within it.
pub const INBOUND_COURTESY_TIMEOUT: Duration = Duration::from_secs(1);

/// Most peer-to-peer connections a peer accepts from one source IP, unless the IP is a
/// loopback address. A NAT may hide several honest peers, so an address gets an eighth of the
/// inbound slots, not one. Loopback is exempt: a process on the node's own host can already do
/// anything to it (stop it, read its store), so the cap would protect nothing there, while
/// swarms of many nodes on one machine (tests, benches) all connect from 127.0.0.1.
pub const INBOUND_PEERS_PER_IP_MAX: usize = 8;

/// How long an accepted connection may go without giving a block we asked for or taking a
/// block we served before a newcomer may take its slot while all [`INBOUND_PEERS_MAX`] are
/// taken. A connection with requests of ours in flight is never evicted; of the others, the
/// one idle for longest goes. Long enough for a newcomer to exchange bitfields and get its
/// first turn at a busy uploader; a remote that only keeps its connection alive (any frame
/// resets the idle timeout) loses its slot this long after it last exchanged data.
pub const INBOUND_IDLE_BEFORE_EVICTION: Duration = Duration::from_secs(10);

/// Most block requests a downloader keeps in flight on one connection (the pipeline's depth
/// is sized from the remote's rate, see [`REQUEST_PIPELINE_TIME`]).
pub const REQUESTS_IN_FLIGHT_PER_CONN_MAX: usize = 16;

/// Most blocks one `Requests` message may ask for: what a downloader keeps in flight on one
/// connection. A message asking for more (or for fewer than two) breaks the protocol.
pub const REQUESTS_PER_MESSAGE_MAX: usize = REQUESTS_IN_FLIGHT_PER_CONN_MAX;

/// Smallest pipeline (bytes of requests in flight) to a remote, and the one it starts with:
/// bytes, not blocks, so a round trip before the remote's rate is measured carries as much
/// whatever the block size.
pub const REQUEST_PIPELINE_BYTES_MIN: u64 = 256 * 1024;

/// How long a remote's pipeline lasts at its measured rate: a round trip with room to spare
/// for the uploader's turns between its upload slots. A slow remote is asked for few blocks at
/// a time, so the pieces it would hold up go to faster ones.
pub const REQUEST_PIPELINE_TIME: Duration = Duration::from_secs(1);

/// Shortest stretch over which a remote's delivery rate is measured.
pub const RATE_WINDOW: Duration = Duration::from_millis(100);

/// Requests one connection may have queued at the serving side before it is told to back off.
pub const SERVE_QUEUE_PER_CONN_MAX: usize = 64;

/// Bytes a connection's served blocks may have read or queued and not yet reported gone (the
/// driver's `Sent`) before its next block is read: two blocks, so the next one is ready as the
/// last leaves, while the rest of its requests wait where a `Cancel` recalls them.
pub const SERVE_UNSENT_BYTES_PER_CONN_MAX: u64 = 2 * BLOCK_BYTES as u64;

/// Unsent bytes of a connection under which its next block is read even when two of its blocks
/// are unsent: blocks of small pieces are each reported gone so soon that two would leave its
/// share of the uplink idle between reports. Larger blocks wait for the second to be gone, so
/// a connection's queued data stays two blocks however large its pieces, not
/// [`SERVE_UNSENT_BYTES_PER_CONN_MAX`] in blocks of 64 KiB (a queue of seconds on a slow link).
pub const SERVE_UNSENT_BYTES_FLOOR: u64 = 128 * 1024;

/// Connections served at a time (upload slots) at least; the others' requests wait their
/// turn. Two: each block a holder serves leaves at half its uplink, so a piece can be passed
/// on soon, and a second flow keeps the uplink busy when one receiver's downlink is the
/// narrower. More open while more make the upload faster (`peer/uploads/slot_count.rs`).
pub const UPLOAD_SLOTS_MIN: usize = 2;

/// Upload slots at most: enough for an uplink sixteen times as fast as its receivers'
/// downlinks, and a bound on the connections a peer serves at once whatever its measurements.
pub const UPLOAD_SLOTS_MAX: usize = 16;

/// Slots given to others after which a connection refused for lack of room, and not served
/// since, goes ahead of those asking for rarer chunks (for room in the line and for a slot),
/// and is no longer sent out of the line to make room: rarest first alone keeps a downloader
/// that is behind, whose chunks are common, waiting for every turn. Two rounds of the fewest
/// slots and their line.
pub const UPLOAD_STARVED_TURNS: u64 = 2 * (UPLOAD_SLOTS_MIN * (1 + UPLOAD_LINE_PER_SLOT)) as u64;

/// Connections that wait for an upload slot at most, per slot open; a request of any other is
/// refused (`Busy`) and goes to another holder. One: a slot that frees finds a request already
/// queued, and no request waits for more than about two turns.
pub const UPLOAD_LINE_PER_SLOT: usize = 1;

/// Blocks a peer remembers having sent on one connection, for [`BUSY_TICKET_TIME`] each: a
/// request for one of them crossed our `Busy` (its downloader cancelled the copy it had asked
/// for and asks again when called), and the frame already on its way answers it.
pub const SENT_BLOCKS_REMEMBERED_PER_CONN_MAX: usize = 8;

/// Bytes queued (and unsent) over an uploader's line under which it takes any asker, however
/// many are in line, so an uplink serving small pieces still has enough queued to stay busy
/// over a round trip.
pub const UPLOAD_LINE_BYTES_MIN: u64 = 512 * 1024;

/// How long a downloader leaves a remote that refused a request as `Busy` (its upload slots
/// and line are taken) before asking it again; its pieces go to other holders meanwhile. A
/// few blocks' time on a fast link, so room that frees in the line is taken again soon.
pub const BUSY_RETRY_DELAY: Duration = Duration::from_millis(200);

/// How long a downloader leaves a remote that refused a request as `Busy` and takes part in
/// room calls before asking it again without having been called (`Room`): the call ends the
/// wait at once, so this only bounds the wait for a call that never comes (its ticket was
/// dropped). Its pieces go to other holders meanwhile.
pub const BUSY_CALL_WAIT_MAX: Duration = Duration::from_secs(5);

/// How long an upload slot holder may go without any of its queued `Data` frames leaving
/// (its remote does not read) before it gives the slot up to a connection waiting for one.
/// Far longer than TCP's retransmission back-off on a lossy link, so an honest slow reader
/// keeps its slot; its requests are refused (`Busy`) until its frames drain.
pub const UPLOAD_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an uploader holds room in its line for a connection it refused (`Busy`): long
/// enough for the downloader to ask again after [`BUSY_RETRY_DELAY`] and a round trip, or
/// after a round trip once called (`Room`).
pub const BUSY_TICKET_TIME: Duration = Duration::from_millis(600);

const _: () = assert!(BUSY_RETRY_DELAY.as_millis() * 2 <= BUSY_TICKET_TIME.as_millis());

/// Longest an uploader holds room in its line for a refused connection that takes long to
/// come back (a round trip far longer than [`BUSY_RETRY_DELAY`]): room held for a downloader
/// that went elsewhere is room nobody uses.
pub const BUSY_TICKET_TIME_MAX: Duration = Duration::from_secs(2);

const _: () = assert!(BUSY_TICKET_TIME.as_millis() <= BUSY_TICKET_TIME_MAX.as_millis());

/// Bytes a slot holder is served in one turn before it makes way for a waiting connection: a
/// piece of the usual size, not one block, so a turn hands over a piece its holder can pass
/// on rather than a share of several.
pub const UPLOAD_TURN_BYTES: u64 = 256 * 1024;

/// Blocks at least this large end a slot holder's turn each while others wait: on a slow
/// uplink a few such blocks at a slot's share keep the line waiting for seconds while other
/// holders of its pieces idle. A turn of smaller blocks stays [`UPLOAD_TURN_BYTES`]: a turn
/// per block would cost a call's round trip for every few milliseconds of sending.
pub const UPLOAD_TURN_BLOCK_BYTES_MIN: u32 = 64 * 1024;

/// Block reads the serving side has outstanding with its driver at once (bounds memory).
pub const SERVE_READS_IN_FLIGHT_MAX: usize = 32;

/// Chunks a downloader has started but not yet verified, per file (bounds partial state).
pub const CHUNKS_ACTIVE_PER_FILE_MAX: usize = 256;

/// Most chunks a remote is assigned at once on one connection (see [`CLAIMS_TIME`]).
pub const CHUNKS_CLAIMED_PER_CONN_MAX: usize = 8;

/// A connection claims the chunks its remote delivers in this time at its measured rate (at
/// least one, at most [`CHUNKS_CLAIMED_PER_CONN_MAX`]): a chunk claimed by a slow remote waits
/// there while faster ones could fetch it, and near the end it is fetched twice.
pub const CLAIMS_TIME: Duration = Duration::from_millis(500);

/// Bytes of chunks a connection claims before its remote's rate is measured (at least
/// [`CHUNKS_CLAIMED_UNMEASURED_MIN`], at most [`CHUNKS_CLAIMED_PER_CONN_MAX`]): bytes, so a new
/// connection's first round trips carry as much whatever the chunk size (two chunks of 16 KiB
/// leave the crowds of the scale bench's small pieces waiting on round trips); half the
/// smallest pipeline, since a chunk claimed by a holder that turns out slow waits there while
/// faster ones could fetch it.
pub const CLAIMS_UNMEASURED_BYTES: u64 = 128 * 1024;

/// Chunks a connection claims before its remote's rate is measured, at least: two, so a
/// request is on its way while the first chunk arrives.
pub const CHUNKS_CLAIMED_UNMEASURED_MIN: usize = 2;

/// Chunks a seeder offers each of several downloaders at a time, beyond what it already
/// uploaded to it: one, so each of the seeder's turns with a downloader (upload slots) sends a
/// chunk nobody else was offered, and no downloader holds offers the others wait for.
pub const OFFER_WINDOW_CHUNKS: usize = 1;

/// Downloaders of a file a seeder has an offer outstanding with at once, per upload slot open
/// (more for small chunks, up to [`UPLOAD_LINE_BYTES_MIN`] of them): twice its slots and places
/// in line, so a request is on its way whenever a slot frees. The other downloaders are offered
/// a chunk as these are served, not all when they connect (see `peer/uploads/offers.rs`).
pub const OFFERS_OUTSTANDING_PER_SLOT: usize = 2 * (1 + UPLOAD_LINE_PER_SLOT);

/// How long a seeder's only downloader must have been connected before it is told every chunk
/// left rather than a window of offers. A flash crowd's peers connect within a moment of each
/// other, not at once: the first one, told everything while the others still shake hands,
/// would ask the seeder for chunks offered to them and take one of its slots for the whole
/// download.
pub const OFFERS_ALONE_AFTER: Duration = Duration::from_millis(500);

/// Chunks offered at a time to a seeder's only downloader until it has been connected for
/// [`OFFERS_ALONE_AFTER`]: enough to keep a fast link busy for that while, all of them chunks
/// never offered, so a crowd arriving meanwhile is offered others.
pub const OFFER_WINDOW_ALONE_CHUNKS: usize = 8;

/// Chunks a seeder looks at to choose one offer (bounds the search in very large files).
pub const OFFER_SCAN_CHUNKS_MAX: usize = 4096;

/// Shortest time without a block from the remote fetching a piece before another remote may
/// fetch it too (endgame); longer for a remote whose measured rate makes four blocks take
/// longer. A remote that keeps delivering is not duplicated: its copy would arrive about as
/// soon, and the duplicate's bytes would be wasted uplink. A request can wait seconds in a
/// busy holder's upload line (refusals, rests, room calls), and a block that already left when
/// our `Cancel` arrives is a whole block of some uplink spent twice: the patience is meant for
/// a fetcher that is stuck, not for one whose turn has not come yet. A remote not yet measured
/// is given four upload turns' time at the slowest rate another remote delivered at, when that is
/// longer: where every uplink is slow, its first block takes seconds to leave.
pub const ENDGAME_PATIENCE: Duration = Duration::from_secs(5);

/// How many times faster than a chunk's fetcher an idle remote holding the chunk must deliver
/// for the chunk to be withdrawn from that fetcher and asked of it (once no chunk the idle
/// remote holds is left to start; see `Scheduler::recall_outpaced`).
pub const OUTPACE_FACTOR: u64 = 4;

/// Most remotes working on the same chunk at once (more than one only in endgame).
pub const ASSIGNEES_PER_CHUNK_MAX: usize = 2;

/// Outputs a machine may queue between two drains; exceeding it is an internal bug.
pub const OUTPUT_QUEUE_MAX: usize = 1 << 20;

/// Pieces a remote is proven to have sent bad blocks of before it is banned.
pub const STRIKES_BEFORE_BAN_COUNT: u32 = 2;

/// Times a piece that failed its hash with several senders is fetched again without one
/// suspect's blocks (parole) before it is fetched whole again.
pub const PAROLE_ROUNDS_MAX: usize = 4;

/// How long a remote's first ban lasts; each further ban of the same id lasts twice as long.
pub const BAN_DURATION_MIN: Duration = Duration::from_secs(5 * 60);

/// Longest a ban lasts.
pub const BAN_DURATION_MAX: Duration = Duration::from_secs(60 * 60);

/// Remote ids (and banned addresses) a peer keeps strikes and bans for.
pub const STRUCK_PEERS_MAX: usize = 1024;

/// How long a block request may go unanswered before the piece is given to another remote.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a remote that delivers slowly may let requests wait before they go elsewhere (see
/// [`REQUEST_TIMEOUT`]).
pub const REQUEST_TIMEOUT_MAX: Duration = Duration::from_secs(30);

/// How long a connection may take to send its `Hello`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection on which nothing arrives for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default interval between a peer's announces to the tracker.
pub const ANNOUNCE_INTERVAL_DEFAULT: Duration = Duration::from_secs(10);

/// A tracker forgets a peer after this many announce intervals without hearing from it.
pub const TTL_INTERVALS_COUNT: u32 = 3;

/// How often a downloader asks the tracker again while pieces are still missing and no new
/// piece arrived since its last ask.
pub const LOCATE_INTERVAL: Duration = Duration::from_secs(2);

/// How soon a download asks the tracker again when the first answer named fewer than
/// [`HOLDERS_PER_PIECE_MAX`] peers. That answer names only the peers that held pieces then;
/// downloaders that started at the same time hold pieces a moment later and can serve each
/// other from then on.
pub const LOCATE_INTERVAL_SECOND: Duration = Duration::from_millis(250);

/// A `Locate` answer that took longer than this marks the tracker busy: its uplink is queued
/// with answers to a crowd, and every ask adds one more. Until an answer comes sooner, a
/// download that already exchanges pieces with [`PEX_MESH_PEERS`] remotes skips its asks and
/// finds further peers by peer exchange. Ten round trips of a 50 ms path.
pub const LOCATE_BUSY_ANSWER_DELAY: Duration = Duration::from_millis(500);

/// Longest interval between two asks of a download that keeps making progress (the interval
/// doubles from [`LOCATE_INTERVAL`] while pieces keep arriving).
pub const LOCATE_INTERVAL_MAX: Duration = Duration::from_secs(30);

/// Longest a tracker holds a peer's `Locate` of a file it does not know yet, waiting for an
/// announce that registers the file, before it answers that the file is unknown. A crowd that
/// starts with its seeders asks before their announces arrive; a round trip to the tracker
/// and the announce's way through the crowd's asks take a fraction of this.
pub const LOCATE_PARK_TIME: Duration = Duration::from_secs(1);

/// How long after the announce that registers a file the tracker answers the `Locate`s parked
/// for it (see [`LOCATE_PARK_TIME`]): seeders that start together announce within moments of
/// each other, and answers sent at the first announce would all name that one seeder. As long
/// as a download waits to ask again after a first answer naming few.
pub const LOCATE_PARK_SETTLE_TIME: Duration = LOCATE_INTERVAL_SECOND;

/// Most `Locate`s of not yet known files one tracker connection has parked at a time (see
/// [`LOCATE_PARK_TIME`]); past it an ask is answered at once. A download asks once per file.
pub const PARKED_ASKS_PER_CONN_MAX: usize = 4;

/// Most `Locate`s a tracker parks per [`LOCATE_PARK_TIME`] in all (about 100 bytes each, 6.5 MB
/// at most); past it an ask is answered at once.
pub const PARKED_ASKS_MAX: usize = 65_536;

/// How long a downloader waits for the answer to its `Locate` before it may ask again. One ask
/// per download is outstanding at a time, so a tracker that answers slowly is not sent more
/// asks (and more answers to queue) than it has answered.
pub const LOCATE_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a peer tells its remotes of the other peers of their files it is connected to
/// (peer exchange): while a tracker is ready, a connection is told once; each remote hears of
/// each peer once per connection.
pub const PEX_INTERVAL: Duration = Duration::from_secs(1);

/// How soon after a downloading remote's first bitfield a peer's next exchange round comes
/// (at most): long enough that the newcomers of a crowd arriving together are all connected
/// and named to each other in one round.
pub const PEX_INTRODUCTION_DELAY: Duration = Duration::from_millis(200);

/// Most peers one `Peers` message names; a remote that sends more breaks the protocol.
pub const PEX_PEERS_PER_MESSAGE_MAX: usize = 32;

/// Most peers the introduction names, the one `Peers` message a connection gets while a
/// tracker is ready: enough for a newcomer to meet others before it holds pieces, few enough
/// that a crowd's mesh stays sparse (each remote more is more `Haves` and requests to it).
pub const PEX_INTRODUCTION_PEERS_MAX: usize = 8;

/// Connections for a file (open or opening) under which a peer dials the peers a `Peers`
/// message names while a tracker is ready; without a ready tracker it dials them all. The
/// tracker names holders as they appear, so the mesh peer exchange adds stays this sparse.
pub const PEX_MESH_PEERS: usize = 16;

/// Shortest time between two `Peers` messages of one file a remote's are acted on; one that
/// comes sooner is ignored (a remote cannot make a peer dial more often than this).
pub const PEX_RECEIVE_INTERVAL_MIN: Duration = Duration::from_millis(500);

/// Verified pieces of small pieces' files are told to connected remotes in batches at most
/// this often (the tracker hears of each piece at once): a peer verifying many small pieces a
/// second sends a few batches a second, not one per piece.
pub const HAVE_BATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Chunks at least this large are told in batches at most every
/// [`HAVE_BATCH_INTERVAL_LARGE_CHUNKS`]: such a chunk takes long enough to pass on that the
/// wait for a batch adds to each of its hops, and few of them are verified a second.
pub const HAVE_BATCH_LARGE_CHUNK_BYTES: u32 = 64 * 1024;

/// The batch interval for chunks of at least [`HAVE_BATCH_LARGE_CHUNK_BYTES`].
pub const HAVE_BATCH_INTERVAL_LARGE_CHUNKS: Duration = Duration::from_millis(100);

/// Blocks at least this large that a downloader asked for after a request the remote refused
/// (`Busy`) are withdrawn (`Withdraw`), not cancelled: such a block, queued at the remote after
/// all (it called us before the request arrived), is read and on its way before a `Cancel`
/// arrives, and fetched from another holder too it would come twice. Smaller blocks are
/// cancelled and their pieces asked of others at once: the answer to a withdrawal can wait
/// behind a block leaving a slow uplink, a wait a small block's duplicate costs less than.
pub const CROSSED_WITHDRAW_BLOCK_BYTES_MIN: u32 = 128 * 1024;

/// How often connection deadlines (handshake, stalled requests, idleness) are checked.
pub const CONNECTION_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How often they are checked while a download has nothing left to start, where a fetcher
/// that comes to lag (endgame) holds up the whole download until the check finds it.
pub const ENDGAME_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Most trackers one peer is given: it keeps a connection to each, announces every file to
/// each and asks each where the pieces are.
pub const TRACKERS_PER_PEER_MAX: usize = 8;

/// First delay before reconnecting to the tracker; doubles up to [`RECONNECT_DELAY_MAX`].
pub const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(100);

/// Longest delay between two attempts to reach the tracker.
pub const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(5);

/// How long a remote that failed a connection attempt is left alone.
pub const REMOTE_RETRY_DELAY: Duration = Duration::from_secs(2);

/// How long a download that must end (`--exit-when-done`) goes on without a verified piece while
/// every holder the tracker names is unreachable (refused, timed out, wrong protocol) before
/// it gives up, naming each holder and why. Several [`REMOTE_RETRY_DELAY`]s and connect
/// timeouts, so a holder that is restarting is not given up on.
pub const HOLDERS_UNREACHABLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Bytes a peer may upload in one burst when an upload limit is set, as a share of one second.
pub const UPLOAD_BURST_FRACTION_OF_SECOND: u32 = 8;

const _: () = assert!(BLOCK_BYTES_MAX as usize + 1024 <= FRAME_BYTES_MAX);
const _: () = assert!(BLOCK_BYTES <= BLOCK_BYTES_MAX);
const _: () = assert!(HOLDERS_UNREACHABLE_TIMEOUT.as_millis() >= 4 * REMOTE_RETRY_DELAY.as_millis());
const _: () = assert!(HELLO_FRAME_BYTES_MAX < FRAME_BYTES_MAX);
// Several frames of the largest size can be received at once before anyone is closed.
const _: () = assert!(READ_BUFFERS_TOTAL_BYTES_MAX >= 8 * FRAME_BYTES_MAX);
const _: () = assert!(PIECE_BYTES_MIN <= PIECE_BYTES_AUTO_MIN);
const _: () = assert!(PIECE_BYTES_AUTO_MAX <= PIECE_BYTES_MAX);
const _: () = assert!(PIECE_BYTES_MIN.is_power_of_two() && PIECE_BYTES_MAX.is_power_of_two());
// A manifest (name + 32-byte hash per piece + CBOR overhead) must fit in one frame.
const _: () = assert!((PIECES_MAX as usize) * 40 + FILE_NAME_BYTES_MAX + 1024 <= FRAME_BYTES_MAX);
// A directory's manifest (hashes, then each entry's path, length and about 16 bytes of CBOR
// framing) must fit in one frame too.
const _: () = assert!(
    (PIECES_MAX as usize) * 40 + FILE_NAME_BYTES_MAX + TREE_PATHS_TOTAL_BYTES_MAX + TREE_ENTRIES_MAX * 32 + 1024
        <= FRAME_BYTES_MAX
);
const _: () = assert!(TREE_PATH_BYTES_MAX <= TREE_PATHS_TOTAL_BYTES_MAX);
// A peer registration may hold the files of its own largest honest use.
const _: () =
    assert!(TRACKER_FILES_PER_PEER_MAX as u64 * PIECES_AUTO_TARGET_COUNT * 32 <= TRACKER_MANIFEST_BYTES_PER_PEER_MAX);
const _: () = assert!(TRACKER_FILES_PER_PEER_MAX <= TRACKER_FILES_PER_IP_MAX);
const _: () = assert!(TRACKER_MANIFEST_BYTES_PER_PEER_MAX <= TRACKER_MANIFEST_BYTES_PER_IP_MAX);
const _: () = assert!(TRACKER_MANIFEST_BYTES_PER_PEER_MAX / 32 <= TRACKER_CHUNKS_PER_IP_MAX);
// The largest file fits every quota.
const _: () = assert!(PIECES_MAX as u64 * 32 + FILE_NAME_BYTES_MAX as u64 <= TRACKER_MANIFEST_BYTES_PER_PEER_MAX);
// The largest directory fits every quota too.
const _: () = assert!(
    PIECES_MAX as u64 * 32 + (FILE_NAME_BYTES_MAX + TREE_PATHS_TOTAL_BYTES_MAX) as u64
        <= TRACKER_MANIFEST_BYTES_PER_PEER_MAX
);
// A `Located` answer for the largest file must fit in one frame.
const _: () = assert!((PIECES_MAX as usize) * (HOLDERS_PER_PIECE_MAX * 2 + 2) + 1024 * 64 <= FRAME_BYTES_MAX);
const _: () = assert!(LOCATE_INTERVAL_SECOND.as_millis() < LOCATE_INTERVAL.as_millis());
const _: () = assert!(LOCATE_PARK_SETTLE_TIME.as_millis() < LOCATE_PARK_TIME.as_millis());
const _: () = assert!(LOCATE_PARK_TIME.as_millis() < LOCATE_ANSWER_TIMEOUT.as_millis());
const _: () = assert!(BAN_DURATION_MIN.as_millis() <= BAN_DURATION_MAX.as_millis());
const _: () = assert!(OUTBOUND_PEERS_MAX + INBOUND_PEERS_MAX <= CONNECTIONS_MAX);
const _: () = assert!(LOCATED_PEERS_NAMED_MAX <= LOCATED_PEERS_MAX);
const _: () = assert!(OUTBOUND_PEERS_MAX <= LOCATED_PEERS_NAMED_MAX);
const _: () = assert!(INBOUND_PEERS_PER_IP_MAX < INBOUND_PEERS_MAX);
// A connection is evicted only after it could have timed out its handshake.
const _: () = assert!(HANDSHAKE_TIMEOUT.as_millis() <= INBOUND_IDLE_BEFORE_EVICTION.as_millis());
const _: () = assert!(INBOUND_IDLE_BEFORE_EVICTION.as_millis() < IDLE_TIMEOUT.as_millis());
// An honest sender, ticking every `PEX_INTERVAL`, is never ignored.
const _: () = assert!(PEX_RECEIVE_INTERVAL_MIN.as_millis() < PEX_INTERVAL.as_millis());
// A `Peers` message (about 40 bytes per peer) fits a frame with room to spare.
const _: () = assert!(PEX_PEERS_PER_MESSAGE_MAX * 64 + 1024 <= FRAME_BYTES_MAX);
// A download counts the connected holders of each piece in a `u16`.
const _: () = assert!(CONNECTIONS_MAX <= u16::MAX as usize);
// A chunk's blocks are tracked in a u64 mask.
const _: () = assert!(BLOCKS_PER_CHUNK_MAX <= 64);
