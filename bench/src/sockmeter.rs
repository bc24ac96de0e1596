//! Bytes a seeder uploaded, counted by the kernel: `ss -E` reports every TCP socket as it is
//! destroyed together with its final `tcp_info`, whose `bytes_sent` is the payload it sent
//! (retransmissions included; there are none on loopback). The meter listens for the whole case; once the seeders have exited (so all their
//! sockets are gone), the bytes of the sockets bound to a seeder's listen port — the
//! connections downloaders opened to it — are summed per port. Connections a seeder opens
//! itself (to the tracker, or outwards) use other ports and are not counted.

use std::collections::BTreeMap;
use std::path::Path;
use std::thread;
use std::time::Duration;

use crate::node::NodeProc;

/// Time for `ss` to subscribe to socket events before the case starts.
const SUBSCRIBE_DELAY: Duration = Duration::from_millis(300);
/// Time for the last destroy events to be printed after the seeders exited.
const SETTLE_DELAY: Duration = Duration::from_millis(300);

/// A running `ss -E` listener; killed on drop.
#[derive(Debug)]
pub struct UploadMeter {
    ss: NodeProc,
}

impl UploadMeter {
    /// Starts listening, or `None` when `ss` (iproute2) cannot run here.
    pub fn start() -> Option<UploadMeter> {
        // stdbuf keeps ss's output line-buffered in the pipe, so nothing is lost when it is killed.
        let args = ["-oL", "ss", "-E", "-t", "-n", "-i", "-H"].map(str::to_owned);
        let mut ss = NodeProc::spawn("ss -E", Path::new("stdbuf"), &args).ok()?;
        thread::sleep(SUBSCRIBE_DELAY);
        ss.wait_exit(Duration::ZERO).is_err().then_some(UploadMeter { ss })
    }

    /// Bytes sent on destroyed sockets, summed per local port; call once every process
    /// of interest has exited.
    pub fn finish(mut self) -> BTreeMap<u16, u64> {
        thread::sleep(SETTLE_DELAY);
        let lines: Vec<String> = self.ss.lines_with("").into_iter().map(|line| line.text).collect();
        sum_by_local_port(&lines)
    }
}

/// Parses `ss -i` output: a socket line (`STATE RECVQ SENDQ LOCAL PEER`) then an indented
/// `tcp_info` line holding `bytes_sent:N`.
fn sum_by_local_port(lines: &[String]) -> BTreeMap<u16, u64> {
    let mut sums = BTreeMap::new();
    let mut local_port: Option<u16> = None;
    for line in lines {
        if !line.starts_with(char::is_whitespace) {
            let local = line.split_whitespace().nth(3);
            local_port = local.and_then(|addr| addr.rsplit_once(':')).and_then(|(_, port)| port.parse().ok());
            continue;
        }
        let sent = line.split_whitespace().find_map(|field| field.strip_prefix("bytes_sent:"));
        if let (Some(port), Some(sent)) = (local_port.take(), sent.and_then(|n| n.parse::<u64>().ok())) {
            *sums.entry(port).or_insert(0) += sent;
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_summed_per_local_port() {
        let lines: Vec<String> = [
            "UNCONN 0 0 127.0.0.1:4000 127.0.0.1:51000",
            "\t wscale:10,10 bytes_sent:1000 bytes_acked:1001 bytes_received:10",
            "UNCONN 0 0 127.0.0.1:4000 127.0.0.1:51001",
            "\t bytes_sent:2000",
            "UNCONN 0 0 127.0.0.1:51000 127.0.0.1:4000",
            "\t bytes_sent:10",
            "UNCONN 0 0 [::1]:4001 [::1]:5",
        ]
        .map(str::to_owned)
        .to_vec();
        let sums = sum_by_local_port(&lines);
        assert_eq!(sums.get(&4000), Some(&3000));
        assert_eq!(sums.get(&51000), Some(&10));
        assert_eq!(sums.get(&4001), None);
    }
}
