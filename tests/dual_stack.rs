//! A mixed IPv4/IPv6 swarm between real processes: the tracker listens on `[::]` (both
//! families), A on 127.0.0.1 and B on `::1` each hold one half of a file, and two downloaders,
//! one of each family, each fetch the half held by the other family across it.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use common::{assert_same_file, has_ipv6_loopback, path_str, random_file, subdir, temp_dir, Node, DOWNLOAD_TIMEOUT};

const PIECE_BYTES: usize = 64 * 1024;

#[test]
fn peers_of_both_families_meet_through_a_dual_stack_tracker() {
    if !has_ipv6_loopback() {
        return;
    }
    let dir = temp_dir();
    let original = random_file(dir.path(), "mixed.bin", 2 * PIECE_BYTES, 6);
    let (source, piece_size) = (path_str(&original), PIECE_BYTES.to_string());
    let (_tracker, any_addr) = Node::tracker_on("[::]:0");
    assert!(any_addr.ip().is_unspecified(), "the tracker should print the address it bound, got {any_addr}");
    let on_v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, any_addr.port()));
    let on_v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, any_addr.port()));

    let holder = |name: &str, tracker: SocketAddr, listen: &str, piece: &str| {
        let args = ["--share", source, "--only-pieces", piece, "--piece-size", &piece_size];
        let mut node = Node::peer_on(name, &[tracker], listen, &subdir(dir.path(), name), &args);
        (node.wait_sharing().file_id, node)
    };
    let (file_id, _a) = holder("a", on_v4, "127.0.0.1:0", "0");
    let (b_file_id, _b) = holder("b", on_v6, "[::1]:0", "1");
    assert_eq!(file_id, b_file_id, "one file, one id, whatever the family");

    for (name, tracker, listen) in [("c", on_v4, "127.0.0.1:0"), ("d", on_v6, "[::1]:0")] {
        let out = subdir(dir.path(), &format!("{name}-out"));
        let args = ["--get", &file_id, "--out", path_str(&out), "--exit-when-done"];
        let mut downloader = Node::peer_on(name, &[tracker], listen, &subdir(dir.path(), name), &args);
        assert_same_file(&downloader.wait_complete(&file_id, DOWNLOAD_TIMEOUT), &original);
    }
}
