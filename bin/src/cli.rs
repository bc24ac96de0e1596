//! The command line of `p2p-node` (docs/cli.md) and the argument types it parses.
//!
//! Everything that can be checked without touching the network or a file is checked here, so
//! a malformed argument is a usage error (exit 2) before anything starts.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};
use p2p_core::limits::{PIECES_MAX, TRACKERS_PER_PEER_MAX};
use p2p_core::manifest::check_piece_size;
use p2p_core::{FileIdPrefix, PeerId};
use p2p_net::identity::parse_peer_id;

/// Share and download files peer to peer.
///
/// A tracker knows which peer holds which piece of which
/// file; peers fetch pieces from several peers at once, check each piece's SHA-256, and serve
/// every verified piece to others. Exit codes: 0 done, 1 the job failed (stderr says why), 2
/// bad usage, 130/143 a download interrupted by SIGINT/SIGTERM (run the same command to resume).
#[derive(Debug, Parser)]
#[command(name = "p2p-node", version, after_help = EXAMPLES)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: NodeCommand,
    /// More detail on stderr: -v adds the libraries' info lines, -vv debug lines (`RUST_LOG`,
    /// when set, decides instead).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr (`RUST_LOG`, when set, decides instead).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

/// Examples shown after the options in `--help`.
const EXAMPLES: &str = "\
Examples:
  p2p-node tracker --listen 0.0.0.0:7000
  p2p-node peer --tracker 192.0.2.10:7000 --listen 0.0.0.0:7001 --store ~/.swarm --share movie.mkv
  p2p-node peer --tracker 192.0.2.10:7000 --listen 0.0.0.0:7001 --store ~/.swarm \\
                --get 3f5c09a1 --out ~/Downloads --exit-when-done
  p2p-node peer --tracker 192.0.2.10:7000 --listen 0.0.0.0:7001 --store ~/.swarm   (seeds what the store holds)
  p2p-node ls --tracker 192.0.2.10:7000
  p2p-node id movie.mkv
  p2p-node peer --tracker 192.0.2.10:7000 --store ~/.swarm --share photos/   (a directory, as one item)
  p2p-node swarm-key team.key   (then --swarm-key team.key on the tracker, every peer and ls)
  p2p-node tracker --listen 0.0.0.0:7000 --http 127.0.0.1:8000   (open http://127.0.0.1:8000/)
  p2p-node ctl --http 127.0.0.1:8001 --token-file ~/.swarm/http-token get 3f5c09a1 --out ~/Downloads";

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Run a tracker until SIGINT/SIGTERM.
    Tracker {
        /// Address to listen on (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0", value_parser = parse_addr)]
        listen: SocketAddr,
        /// The tracker's key pair, created there on first use (default:
        /// $XDG_STATE_HOME/swarm/tracker.key, else ~/.local/state/swarm/tracker.key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// A private swarm's key: only nodes holding the same key connect.
        #[arg(long)]
        swarm_key: Option<PathBuf>,
        /// Let only the peer ids in FILE connect (one a line, `#` starts a comment), peers and
        /// tools alike; others are refused after the handshake, with a clear error on both sides.
        #[arg(long, value_name = "FILE")]
        allow: Option<PathBuf>,
        /// Serve the HTTP API, /metrics and the live piece map on this address (port 0: any
        /// free port); prints `http on ADDR`.
        #[arg(long, value_parser = parse_addr)]
        http: Option<SocketAddr>,
        /// Read options from this TOML file (keys: the long options above, e.g. `listen =
        /// "0.0.0.0:7000"`); options on the command line win.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Run a peer: share files, download files, seed.
    ///
    /// The peer seeds what it shares and downloads, and whatever its store remembers from
    /// earlier runs, until SIGINT/SIGTERM, or exits once the downloads are done
    /// (--exit-when-done). One peer per store.
    Peer(PeerArgs),
    /// Print the FILE_ID of a file or directory, offline.
    ///
    /// The same bytes and piece size (and for a directory, the same tree) give the same
    /// FILE_ID everywhere.
    Id {
        /// The file or directory.
        path: PathBuf,
        /// Piece size in bytes (a power of two, 16 KiB to 16 MiB; default: from the file size).
        #[arg(long, value_parser = parse_piece_size)]
        piece_size: Option<u32>,
    },
    /// List the files a tracker knows.
    ///
    /// A table on a terminal (size, pieces, holders, how well the pieces are covered); one
    /// `FILE_ID NAME LENGTH_BYTES peers=N holders=...` line per file otherwise.
    Ls {
        /// The tracker's address; several may be given (as a peer's `--tracker`): they are
        /// asked in turn, the next after 300 ms without an answer, and the first answer is
        /// listed, its tracker named on stderr.
        #[arg(long, value_parser = parse_addr, required = true)]
        tracker: Vec<SocketAddr>,
        /// Also show the holders of every piece under each file of the table.
        #[arg(long)]
        pieces: bool,
        /// The private swarm's key, when the tracker has one.
        #[arg(long)]
        swarm_key: Option<PathBuf>,
        /// The key pair to prove, one on the tracker's allow-list (a peer's STORE/node.key, or
        /// one from `p2p-node keygen`); default: a new one each run.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Write a new key pair to FILE (mode 0600) and print its peer id.
    ///
    /// A peer makes its own in its store (node.key) on first run; this makes one ahead, e.g.
    /// to know a node's id before it runs. An existing file is never replaced.
    Keygen {
        /// Where to write the key (must not exist).
        path: PathBuf,
    },
    /// Write a new random swarm key to FILE (mode 0600).
    ///
    /// Give the same file to the tracker, every peer and `ls` with --swarm-key: nodes without
    /// it cannot connect, announce, locate or download. An existing file is never replaced.
    SwarmKey {
        /// Where to write the key (must not exist).
        path: PathBuf,
    },
    /// Tell the seed's story: A, B, C each hold a piece, D gets all three, E gets it from D.
    Demo,
    /// Talk to a running peer through its HTTP API (its --http address).
    Ctl(CtlArgs),
    /// Print a completion script for SHELL on stdout.
    ///
    /// E.g. `p2p-node completions bash > ~/.local/share/bash-completion/completions/p2p-node`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page on stdout (roff), e.g. `p2p-node man > ~/.local/share/man/man1/p2p-node.1`.
    Man,
}

/// Arguments of `p2p-node ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The peer's HTTP API address (its --http).
    #[arg(long, value_parser = parse_addr)]
    pub http: SocketAddr,
    /// The file holding the peer's API token (its --http-token-file, by default
    /// `STORE/http-token`); needed by every subcommand but `ls`.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The subcommands of `p2p-node ctl`.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// List the peer's files: `FILE_ID STATE HAVE/TOTAL NAME` per line.
    Ls,
    /// Start a download (a file id or a unique prefix of at least 8 hex digits).
    Get {
        /// The file.
        file_id: FileIdPrefix,
        /// Where the finished file goes (default: the peer's --out).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Share a file.
    Share {
        /// The file.
        path: PathBuf,
    },
    /// Pause a download: it stops fetching and keeps serving its verified pieces.
    Pause {
        /// The file (an id or a unique prefix of the peer's files).
        file_id: FileIdPrefix,
    },
    /// Resume a paused download.
    Resume {
        /// The file (an id or a unique prefix of the peer's files).
        file_id: FileIdPrefix,
    },
    /// Remove a file: the peer stops serving and fetching it and forgets it.
    Rm {
        /// The file (an id or a unique prefix of the peer's files).
        file_id: FileIdPrefix,
        /// Also delete a download's partial data in the store (never a shared or finished
        /// file).
        #[arg(long)]
        delete_data: bool,
    },
}

/// Arguments of `p2p-node peer`.
#[derive(Debug, Args)]
pub struct PeerArgs {
    /// A tracker's address (repeatable: the peer announces to every tracker and locates from
    /// every one that answers); as ID@ADDR, the tracker must prove peer id ID (its key is
    /// pinned: another key at ADDR is refused).
    #[arg(long = "tracker", required = true, value_parser = parse_tracker, value_name = "[ID@]ADDR")]
    pub trackers: Vec<TrackerAddr>,
    /// Address to accept peer connections on.
    #[arg(long, default_value = "127.0.0.1:0", value_parser = parse_addr)]
    pub listen: SocketAddr,
    /// Store directory: partial downloads and their state.
    #[arg(long)]
    pub store: PathBuf,
    /// A file, or a directory tree as one item, to share (repeatable).
    #[arg(long)]
    pub share: Vec<PathBuf>,
    /// Share only these pieces of each --share, e.g. `0,2-3`.
    #[arg(long, value_parser = parse_piece_list)]
    pub only_pieces: Option<PieceList>,
    /// A file id (64 hex digits, or a unique prefix of at least 8) to download (repeatable).
    #[arg(long)]
    pub get: Vec<FileIdPrefix>,
    /// Where finished downloads go (default: the store directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Exit once every --get is complete.
    #[arg(long)]
    pub exit_when_done: bool,
    /// Upload cap in bytes per second.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub upload_limit: Option<u64>,
    /// Piece size of shared files in bytes (a power of two, 16 KiB to 16 MiB; default: from
    /// the file size).
    #[arg(long, value_parser = parse_piece_size)]
    pub piece_size: Option<u32>,
    /// Serve the HTTP API, /metrics, the event stream and the live page on this address (port
    /// 0: any free port); prints `http on ADDR`.
    #[arg(long, value_parser = parse_addr)]
    pub http: Option<SocketAddr>,
    /// The API token for changes (share, download) is read from this file (default:
    /// `STORE/http-token`, created on first run, readable by the owner only).
    #[arg(long, requires = "http")]
    pub http_token_file: Option<PathBuf>,
    /// Also print every event as a JSON line on stdout, beside the text lines.
    #[arg(long)]
    pub json: bool,
    /// A private swarm's key: only nodes holding the same key connect.
    #[arg(long)]
    pub swarm_key: Option<PathBuf>,
    /// Connect only with the peer ids in FILE (one a line, `#` starts a comment), both ways;
    /// its trackers' ids must be on it too.
    #[arg(long, value_name = "FILE")]
    pub allow: Option<PathBuf>,
    /// Read options from this TOML file (keys: the long options above, e.g. `tracker =
    /// ["192.0.2.10:7000"]`, `exit-when-done = true`); options on the command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl Cli {
    /// Parses the command line, with the options of its `--config` file (`config.rs`) and
    /// the checks clap cannot express: at most `TRACKERS_PER_PEER_MAX` `--tracker`s.
    pub fn try_parse_checked() -> Result<Cli, clap::Error> {
        let args = crate::config::expand(std::env::args_os().collect(), &Cli::command())?;
        Cli::try_parse_from(args)?.checked()
    }

    fn checked(self) -> Result<Cli, clap::Error> {
        if let NodeCommand::Peer(peer) = &self.command {
            if peer.trackers.len() > TRACKERS_PER_PEER_MAX {
                let message = format!("at most {TRACKERS_PER_PEER_MAX} --tracker, got {}", peer.trackers.len());
                return Err(Cli::command().error(ErrorKind::TooManyValues, message));
            }
        }
        Ok(self)
    }
}

/// A `--tracker`: its address and, when pinned, the peer id its key must prove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackerAddr {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The id it must prove (`ID@ADDR`).
    pub pinned: Option<PeerId>,
}

impl PeerArgs {
    /// The trackers' addresses, in order.
    pub fn tracker_addrs(&self) -> Vec<SocketAddr> {
        self.trackers.iter().map(|tracker| tracker.addr).collect()
    }
}

/// `ADDR` or `ID@ADDR`.
fn parse_tracker(text: &str) -> Result<TrackerAddr, String> {
    match text.split_once('@') {
        Some((id, addr)) => Ok(TrackerAddr { addr: parse_addr(addr)?, pinned: Some(parse_peer_id(id)?) }),
        None => Ok(TrackerAddr { addr: parse_addr(text)?, pinned: None }),
    }
}

/// Piece numbers typed as `0,2-3`: sorted, without duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PieceList(pub Vec<u32>);

/// A socket address, or a host name and port resolved to its first address.
fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let mut resolved = text.to_socket_addrs().map_err(|e| format!("not an address {text:?}: {e}"))?;
    resolved.next().ok_or_else(|| format!("{text:?} resolves to no address"))
}

fn parse_piece_size(text: &str) -> Result<u32, String> {
    let bytes: u64 = text.parse().map_err(|_| format!("not a number of bytes: {text:?}"))?;
    check_piece_size(bytes).map_err(|e| e.to_string())
}

fn parse_piece_list(text: &str) -> Result<PieceList, String> {
    let mut pieces = Vec::new();
    for part in text.split(',') {
        let bad = || format!("{part:?} is not a piece number or range like 2-5 (in {text:?})");
        let (first, last) = match part.split_once('-') {
            Some((first, last)) => (first, last),
            None => (part, part),
        };
        let first: u32 = first.trim().parse().map_err(|_| bad())?;
        let last: u32 = last.trim().parse().map_err(|_| bad())?;
        if first > last {
            return Err(format!("range {part:?} runs backwards"));
        }
        if last >= PIECES_MAX {
            return Err(format!("piece {last} is beyond the limit of {PIECES_MAX} pieces"));
        }
        pieces.extend(first..=last);
    }
    pieces.sort_unstable();
    pieces.dedup();
    Ok(PieceList(pieces))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_lists_parse_ranges_and_reject_malformed_ones() {
        assert_eq!(parse_piece_list("0,2-3"), Ok(PieceList(vec![0, 2, 3])));
        assert_eq!(parse_piece_list("3,1,1-2"), Ok(PieceList(vec![1, 2, 3])));
        for bad in ["", "1-", "-", "a", "3-1", "1,,2", "99999999"] {
            assert!(parse_piece_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn usage_is_parsed_per_the_contract() {
        let cli = Cli::try_parse_from([
            "p2p-node",
            "peer",
            "--tracker",
            "127.0.0.1:7000",
            "--store",
            "s",
            "--share",
            "a",
            "--share",
            "b",
            "--get",
            "abcdef01",
            "--exit-when-done",
            "--piece-size",
            "262144",
        ])
        .expect("valid");
        let NodeCommand::Peer(peer) = cli.command else { panic!("a peer command") };
        assert_eq!(peer.share.len(), 2);
        assert_eq!(peer.piece_size, Some(262_144));
        assert!(Cli::try_parse_from(["p2p-node", "id", "f", "--piece-size", "1000"]).is_err());
        assert!(Cli::try_parse_from(["p2p-node", "peer", "--tracker", "127.0.0.1:1"]).is_err(), "--store is required");
        assert!(Cli::try_parse_from(["p2p-node", "peer", "--store", "s"]).is_err(), "--tracker is required");
    }

    #[test]
    fn a_tracker_may_be_pinned_to_a_peer_id() {
        let id = "0123456789abcdef0123456789abcdef";
        let pinned = parse_tracker(&format!("{id}@127.0.0.1:7000")).expect("valid");
        assert_eq!(pinned.addr, SocketAddr::from(([127, 0, 0, 1], 7000)));
        assert_eq!(pinned.pinned.map(|id| id.to_string()), Some(id.to_owned()));
        assert_eq!(parse_tracker("127.0.0.1:7000").expect("valid").pinned, None);
        assert!(parse_tracker("0123@127.0.0.1:7000").expect_err("a short id").contains("not a peer id"));
    }

    #[test]
    fn tracker_may_be_repeated_up_to_its_bound() {
        let with_trackers = |count: u16| {
            let mut args = vec!["p2p-node".to_owned(), "peer".into(), "--store".into(), "s".into()];
            for port in 0..count {
                args.extend(["--tracker".to_owned(), format!("127.0.0.1:{}", 7000 + port)]);
            }
            Cli::try_parse_from(args).and_then(Cli::checked)
        };
        let cli = with_trackers(2).expect("two trackers");
        let NodeCommand::Peer(peer) = cli.command else { panic!("a peer command") };
        assert_eq!(
            peer.tracker_addrs(),
            [SocketAddr::from(([127, 0, 0, 1], 7000)), SocketAddr::from(([127, 0, 0, 1], 7001))]
        );
        let max = u16::try_from(TRACKERS_PER_PEER_MAX).expect("a small bound");
        assert!(with_trackers(max).is_ok());
        assert_eq!(with_trackers(max + 1).map(drop).map_err(|e| e.kind()), Err(ErrorKind::TooManyValues));
    }
}
