//! A picture of a run (`p2p-sim SCENARIO --svg FILE`): one timeline per peer, virtual time from
//! left to right. In a peer's row every chunk it verified is a mark at the time it arrived, at
//! the height of its piece's number, coloured by the peer that sent it (labelled `chunk ← sender`
//! while the row has few marks), over pale bands for the pieces it held from the start; its
//! completion is a black bar; the scenario's faults are
//! marked where they strike: a peer's join, leave, crash, restart and corrupted pieces in its
//! row, partitions and tracker restarts or stops as dashed lines across every row, and whom it
//! banned at the row's end. Every mark carries a tooltip with its exact time.
//!
//! The picture is built from the scenario and the outcome alone, with fixed-precision numbers,
//! so the same run gives the same bytes. It is bounded whatever the run: at most [`ROWS_MAX`]
//! peers and [`MARKS_MAX`] chunk marks are drawn, and a note says what was left out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use p2p_core::Time;

use crate::report::Outcome;
use crate::scenario::{ActionKind, NodeIdx, Scenario};

/// Peers drawn, in scenario order.
pub const ROWS_MAX: usize = 200;
/// Piece marks drawn in all, in the order they were verified.
pub const MARKS_MAX: usize = 50_000;
/// A row with at most this many marks labels each with its piece and sender.
const LABELLED_MARKS_MAX: usize = 16;
/// Senders given a colour of their own in the legend (the others share grey).
const PALETTE: [&str; 10] =
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"];
/// The colour of a sender beyond the palette, or of a piece whose sender is unknown.
const OTHER_COLOUR: &str = "#b0b0b0";

const WIDTH_PX: f64 = 1000.0;
const NAMES_PX: f64 = 90.0;
const RIGHT_PX: f64 = 130.0;
const TOP_PX: f64 = 70.0;
const ROW_GAP_PX: f64 = 14.0;
/// The height of one piece's lane in a row of few pieces.
const LANE_PX_MAX: f64 = 14.0;
/// The height of the pieces in a row, whatever their number.
const ROW_PIECES_PX_MAX: f64 = 56.0;
const LEGEND_PX: f64 = 40.0;
/// Time axis ticks drawn at most.
const TICKS_MAX: u64 = 12;

/// The SVG document of the run `outcome` of `scenario`.
pub fn render(scenario: &Scenario, outcome: &Outcome) -> String {
    let layout = Layout::new(scenario, outcome);
    let mut svg = String::new();
    layout.header(&mut svg, outcome);
    layout.axis(&mut svg);
    for (i, peer) in outcome.peers.iter().take(ROWS_MAX).enumerate() {
        layout.row(&mut svg, i, &peer.name, peer.completed_at);
        if let Some(spec) = scenario.peers.get(i) {
            layout.held(&mut svg, i, &spec.holds);
        }
    }
    let colours = Colours::new(outcome);
    layout.pieces(&mut svg, outcome, &colours);
    layout.actions(&mut svg, scenario);
    layout.bans(&mut svg, outcome);
    layout.legend(&mut svg, outcome, &colours);
    svg.push_str("</svg>\n");
    svg
}

/// Where things go.
struct Layout {
    end_us: u64,
    rows: usize,
    piece_count: u32,
    lane_px: f64,
    row_px: f64,
    height_px: f64,
}

impl Layout {
    fn new(scenario: &Scenario, outcome: &Outcome) -> Layout {
        let end_us = scenario.end.as_micros().max(outcome.ended_at.as_micros()).max(1);
        let rows = outcome.peers.len().min(ROWS_MAX);
        let piece_count = outcome.chunk_count.div_ceil(outcome.chunks_per_piece.max(1)).max(1);
        let lane_px = (ROW_PIECES_PX_MAX / f64::from(piece_count)).min(LANE_PX_MAX);
        let row_px = lane_px * f64::from(piece_count) + ROW_GAP_PX;
        let height_px = TOP_PX + row_px * rows as f64 + LEGEND_PX + 20.0;
        Layout { end_us, rows, piece_count, lane_px, row_px, height_px }
    }

    fn x(&self, at: Time) -> f64 {
        NAMES_PX + (WIDTH_PX - NAMES_PX - RIGHT_PX) * (at.as_micros().min(self.end_us) as f64 / self.end_us as f64)
    }

    fn row_top(&self, row: usize) -> f64 {
        TOP_PX + self.row_px * row as f64
    }

    /// The top of `piece`'s lane in `row` (piece 0 on top).
    fn lane_top(&self, row: usize, piece: u32) -> f64 {
        self.row_top(row) + self.lane_px * f64::from(piece.min(self.piece_count - 1))
    }

    fn header(&self, svg: &mut String, outcome: &Outcome) {
        let (width, height) = (WIDTH_PX, self.height_px);
        // Writing into a String cannot fail (here and below).
        let _ = writeln!(
            svg,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
             viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"11\">"
        );
        let _ = writeln!(svg, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
        let title = format!(
            "{} (seed {}): {} chunks, {} peers; chunks received (in their pieces' lanes), by sender",
            outcome.scenario,
            outcome.seed,
            outcome.chunk_count,
            outcome.peers.len()
        );
        let _ =
            writeln!(svg, "<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{}</text>", escape(&title));
        if outcome.peers.len() > ROWS_MAX {
            let note = format!("the first {ROWS_MAX} of {} peers are drawn", outcome.peers.len());
            let _ = writeln!(svg, "<text x=\"10\" y=\"36\" fill=\"#a00\">{note}</text>");
        }
    }

    fn axis(&self, svg: &mut String) {
        let bottom = self.row_top(self.rows);
        let step_us = tick_step_us(self.end_us);
        for tick in 0..=self.end_us / step_us {
            let at = Time::from_micros(tick * step_us);
            let x = self.x(at);
            let _ = writeln!(
                svg,
                "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\" stroke=\"#eee\"/>\
                 <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#666\">{}</text>",
                TOP_PX - 12.0,
                TOP_PX - 16.0,
                seconds(at)
            );
        }
    }

    fn row(&self, svg: &mut String, row: usize, name: &str, completed_at: Option<Time>) {
        let top = self.row_top(row);
        let pieces_px = self.row_px - ROW_GAP_PX;
        let (left, right) = (self.x(Time::ZERO), self.x(Time::from_micros(self.end_us)));
        let _ = writeln!(
            svg,
            "<text x=\"8\" y=\"{:.1}\" font-weight=\"bold\">{}</text>\
             <rect x=\"{left:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{pieces_px:.1}\" fill=\"#f6f6f6\"/>",
            top + pieces_px / 2.0 + 4.0,
            escape(name),
            right - left
        );
        if let Some(at) = completed_at {
            let x = self.x(at);
            let _ = writeln!(
                svg,
                "<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"2\" height=\"{pieces_px:.1}\" fill=\"black\">\
                 <title>{} complete at {at}</title></rect>",
                x - 1.0,
                escape(name)
            );
        }
    }

    /// The pieces a peer holds from the start: a pale band along each run of their lanes.
    fn held(&self, svg: &mut String, row: usize, holds: &BTreeSet<u32>) {
        let (left, right) = (self.x(Time::ZERO), self.x(Time::from_micros(self.end_us)));
        let mut pieces = holds.iter().copied().peekable();
        while let Some(first) = pieces.next() {
            let mut last = first;
            while let Some(next) = pieces.next_if(|next| *next == last + 1) {
                last = next;
            }
            let (top, bottom) = (self.lane_top(row, first), self.lane_top(row, last) + self.lane_px);
            let _ = writeln!(
                svg,
                "<rect x=\"{left:.1}\" y=\"{top:.2}\" width=\"{:.1}\" height=\"{:.2}\" fill=\"#d8e8d0\">\
                 <title>holds pieces {first}-{last} from the start</title></rect>",
                right - left,
                bottom - top
            );
        }
    }

    fn pieces(&self, svg: &mut String, outcome: &Outcome, colours: &Colours) {
        let mut per_row = vec![0usize; self.rows];
        for (downloader, _, _) in &outcome.chunk_sources {
            if let Some(count) = downloader.0.checked_sub(1).and_then(|row| per_row.get_mut(row)) {
                *count += 1;
            }
        }
        let arrivals = outcome.chunk_sources.iter().zip(&outcome.chunk_verified_at).take(MARKS_MAX);
        for (&(downloader, chunk, source), &at) in arrivals {
            let Some(row) = downloader.0.checked_sub(1).filter(|row| *row < self.rows) else { continue };
            let (x, y) = (self.x(at), self.lane_top(row, chunk / outcome.chunks_per_piece.max(1)));
            let height = self.lane_px.max(1.0);
            let sender = name_of(outcome, source);
            let _ = write!(
                svg,
                "<rect x=\"{:.1}\" y=\"{y:.2}\" width=\"3\" height=\"{height:.2}\" fill=\"{}\">\
                 <title>chunk {chunk} from {} at {at}</title></rect>",
                x - 1.5,
                colours.colour(source),
                escape(sender)
            );
            if per_row[row] <= LABELLED_MARKS_MAX {
                let _ = write!(
                    svg,
                    "<text x=\"{:.1}\" y=\"{:.2}\" font-size=\"10\">{chunk} \u{2190} {}</text>",
                    x + 4.0,
                    y + height / 2.0 + 3.5,
                    escape(sender)
                );
            }
            svg.push('\n');
        }
        if outcome.chunk_sources.len() > MARKS_MAX {
            let note = format!("the first {MARKS_MAX} of {} chunks are drawn", outcome.chunk_sources.len());
            let _ = writeln!(svg, "<text x=\"10\" y=\"50\" fill=\"#a00\">{note}</text>");
        }
    }

    fn actions(&self, svg: &mut String, scenario: &Scenario) {
        for action in &scenario.actions {
            let (node, text, colour) = match &action.kind {
                ActionKind::Join(node) => (Some(*node), "joins".to_owned(), "#2ca02c"),
                ActionKind::Leave(node) => (Some(*node), "leaves".to_owned(), "#555"),
                ActionKind::Crash(node) => (Some(*node), "CRASHES".to_owned(), "#d00"),
                ActionKind::Restart(node) => (Some(*node), "restarts".to_owned(), "#2ca02c"),
                ActionKind::Corrupt(node, pieces) => (Some(*node), format!("pieces {pieces:?} go bad"), "#d00"),
                ActionKind::Partition(nodes) => {
                    let names: Vec<&str> = nodes.iter().map(|node| node_name(scenario, *node)).collect();
                    (None, format!("partition: {}", names.join(", ")), "#d00")
                }
                ActionKind::Heal => (None, "partition heals".to_owned(), "#2ca02c"),
                ActionKind::TrackerRestart => (None, "tracker restarts empty".to_owned(), "#d00"),
                ActionKind::TrackerStop(node) => (None, format!("{} stops", node_name(scenario, *node)), "#d00"),
                ActionKind::TrackerStart(node) => (None, format!("{} starts", node_name(scenario, *node)), "#2ca02c"),
            };
            match node.and_then(|node| node.0.checked_sub(1)) {
                Some(row) if row < self.rows => self.row_mark(svg, row, action.at, &text, colour),
                Some(_) => {}
                None => self.line_mark(svg, action.at, &text, colour),
            }
        }
    }

    /// A fault or change of one peer: a triangle under its row with the words beside it.
    fn row_mark(&self, svg: &mut String, row: usize, at: Time, text: &str, colour: &str) {
        let (x, y) = (self.x(at), self.row_top(row) + self.row_px - ROW_GAP_PX);
        let _ = writeln!(
            svg,
            "<path d=\"M{x:.1} {y:.1} l-4 8 h8 z\" fill=\"{colour}\"><title>{} at {at}</title></path>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" fill=\"{colour}\">{}</text>",
            escape(text),
            x + 5.0,
            y + 9.0,
            escape(text)
        );
    }

    /// A change of the whole swarm: a dashed line across every row, the words on top.
    fn line_mark(&self, svg: &mut String, at: Time, text: &str, colour: &str) {
        let (x, bottom) = (self.x(at), self.row_top(self.rows));
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\" stroke=\"{colour}\" \
             stroke-dasharray=\"4 3\"><title>{} at {at}</title></line>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" fill=\"{colour}\">{}</text>",
            TOP_PX - 8.0,
            escape(text),
            x + 3.0,
            TOP_PX - 2.0,
            escape(text)
        );
    }

    fn bans(&self, svg: &mut String, outcome: &Outcome) {
        let mut banned: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for (banner, bannee) in &outcome.bans {
            if let Some(row) = banner.0.checked_sub(1).filter(|row| *row < self.rows) {
                banned.entry(row).or_default().push(name_of(outcome, *bannee));
            }
        }
        let x = self.x(Time::from_micros(self.end_us)) + 6.0;
        for (row, names) in banned {
            let y = self.row_top(row) + 12.0;
            let _ = writeln!(
                svg,
                "<text x=\"{x:.1}\" y=\"{y:.1}\" fill=\"#d00\">bans {}</text>",
                escape(&names.join(", "))
            );
        }
    }

    fn legend(&self, svg: &mut String, outcome: &Outcome, colours: &Colours) {
        let y = self.row_top(self.rows) + 24.0;
        let _ = write!(svg, "<text x=\"8\" y=\"{y:.1}\" fill=\"#666\">sender:</text>");
        let mut x = NAMES_PX;
        for (&node, colour) in &colours.by_sender {
            let name = escape(name_of(outcome, node));
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{colour}\"/>\
                 <text x=\"{:.1}\" y=\"{y:.1}\">{name}</text>",
                y - 9.0,
                x + 13.0
            );
            x += 20.0 + 7.0 * name.chars().count() as f64;
        }
        let _ = writeln!(svg, "<text x=\"{x:.1}\" y=\"{y:.1}\" fill=\"#666\">(black bar: complete)</text>");
    }
}

/// A colour per sender: the palette in order of the senders' node numbers.
struct Colours {
    by_sender: BTreeMap<NodeIdx, &'static str>,
}

impl Colours {
    fn new(outcome: &Outcome) -> Colours {
        let mut senders: Vec<NodeIdx> = outcome.chunk_sources.iter().map(|(_, _, source)| *source).collect();
        senders.sort_unstable();
        senders.dedup();
        let by_sender = senders.into_iter().zip(PALETTE).collect();
        Colours { by_sender }
    }

    fn colour(&self, sender: NodeIdx) -> &'static str {
        self.by_sender.get(&sender).copied().unwrap_or(OTHER_COLOUR)
    }
}

/// A node's name as the outcome knows it (`tracker` for a piece of unknown origin).
fn name_of(outcome: &Outcome, node: NodeIdx) -> &str {
    node.0.checked_sub(1).and_then(|i| outcome.peers.get(i)).map_or("tracker", |peer| peer.name.as_str())
}

/// A node's name as the scenario gives it (trackers by number).
fn node_name(scenario: &Scenario, node: NodeIdx) -> &str {
    node.0.checked_sub(1).and_then(|i| scenario.peers.get(i)).map_or("tracker", |peer| peer.name.as_str())
}

/// A round step between axis ticks (1, 2 or 5 times a power of ten, in microseconds) giving at
/// most [`TICKS_MAX`] ticks over `end_us`.
fn tick_step_us(end_us: u64) -> u64 {
    let mut unit = 1_000u64;
    loop {
        for factor in [1, 2, 5] {
            let step = unit.saturating_mul(factor);
            if end_us / step <= TICKS_MAX {
                return step;
            }
        }
        unit = unit.saturating_mul(10);
    }
}

/// `12s`, `1.5s`, `0.25s`: a tick's label.
fn seconds(at: Time) -> String {
    let millis = at.as_micros() / 1_000;
    let text = format!("{}.{:03}", millis / 1_000, millis % 1_000);
    format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
}

/// `text` safe inside an SVG element or attribute.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_steps_are_round_and_few() {
        assert_eq!(tick_step_us(30_000_000), 5_000_000);
        assert_eq!(tick_step_us(1_000_000), 100_000);
        assert_eq!(tick_step_us(5_000), 1_000);
        assert!(tick_step_us(u64::MAX) > 0);
        assert_eq!(seconds(Time::from_millis(12_000)), "12s");
        assert_eq!(seconds(Time::from_millis(1_500)), "1.5s");
        assert_eq!(seconds(Time::from_millis(250)), "0.25s");
    }

    #[test]
    fn names_are_escaped() {
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
