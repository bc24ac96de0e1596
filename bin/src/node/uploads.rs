//! What this peer sends, told to the person watching at the default log level: the first block
//! a remote gets from it says so (once per remote), and leaving sums up the bytes sent to each.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use indicatif::HumanBytes;
use p2p_core::limits::CONNECTIONS_MAX;
use p2p_core::FileId;

use crate::report;

/// Remotes named one by one in the summary; the rest are counted.
const SUMMARY_REMOTES_MAX: usize = 8;

/// Bytes sent per remote in this run.
#[derive(Debug, Default)]
pub struct Uploads {
    /// Bytes sent to each remote, for at most [`CONNECTIONS_MAX`] remotes (then the counts
    /// start again; the totals below go on).
    sent_bytes: BTreeMap<SocketAddr, u64>,
    total_bytes: u64,
    remotes_count: u32,
}

impl Uploads {
    /// A block of `len_bytes` of `file_id` went to `to`.
    pub fn served(&mut self, file_id: FileId, to: SocketAddr, len_bytes: u32) {
        if !self.sent_bytes.contains_key(&to) {
            if self.sent_bytes.len() >= CONNECTIONS_MAX {
                self.sent_bytes.clear();
            }
            tracing::info!("sending {} to {to}", file_id.short());
            self.remotes_count = self.remotes_count.saturating_add(1);
        }
        *self.sent_bytes.entry(to).or_default() += u64::from(len_bytes);
        self.total_bytes += u64::from(len_bytes);
    }

    /// The summary for the end of the run, if anything was sent.
    pub fn summary(&self) -> Option<String> {
        if self.total_bytes == 0 {
            return None;
        }
        let mut most: Vec<(&SocketAddr, &u64)> = self.sent_bytes.iter().collect();
        most.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let named: Vec<String> = most
            .iter()
            .take(SUMMARY_REMOTES_MAX)
            .map(|(addr, bytes)| format!("{addr} {}", HumanBytes(**bytes)))
            .collect();
        let remotes = report::count(self.remotes_count, "peer");
        Some(format!("sent {} to {remotes}: {}", HumanBytes(self.total_bytes), named.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use p2p_core::Digest;

    use super::*;

    #[test]
    fn the_summary_names_the_biggest_takers_first() {
        let mut uploads = Uploads::default();
        assert_eq!(uploads.summary(), None);
        let file_id = FileId(Digest([1; 32]));
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        let b = SocketAddr::from(([127, 0, 0, 1], 2));
        uploads.served(file_id, a, 1024);
        uploads.served(file_id, b, 2048);
        uploads.served(file_id, b, 1024);
        assert_eq!(
            uploads.summary().as_deref(),
            Some("sent 4.00 KiB to 2 peers: 127.0.0.1:2 3.00 KiB, 127.0.0.1:1 1.00 KiB")
        );
    }
}
