//! The latency-over-time plot of a run, as a PNG written by hand: every operation is a dot at
//! (invocation time, latency) on a log scale, coloured by outcome, over bands that shade the
//! periods of each fault. Text uses a built-in 5x7 pixel font, so no system font is needed.

use std::io::Write;
use std::path::Path;

use crate::history::{Kind, Op, F, NEMESIS};

type Rgb = [u8; 3];

const OK: Rgb = [31, 119, 180];
const FAIL: Rgb = [214, 39, 40];
const INFO: Rgb = [255, 127, 14];
const AXIS: Rgb = [60, 60, 60];
const GRID: Rgb = [225, 225, 225];

/// The shade of a fault's band, by kind.
pub fn fault_color(name: &str) -> Rgb {
    if name.starts_with("kill") {
        [250, 214, 214]
    } else if name.starts_with("pause") {
        [250, 240, 190]
    } else if name.starts_with("replace") {
        [210, 240, 210]
    } else {
        [215, 225, 245]
    }
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas { w, h, px: vec![255; w * h * 3] }
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for y in y0.min(y1)..=y0.max(y1) {
            for x in x0.min(x1)..=x0.max(x1) {
                self.set(x, y, c);
            }
        }
    }

    fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb) {
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.set(x + i as i64 * 6 + col, y + row as i64, c);
                    }
                }
            }
        }
    }

    fn png(&self, path: &Path) -> std::io::Result<()> {
        let mut raw = Vec::with_capacity((self.w * 3 + 1) * self.h);
        for row in self.px.chunks(self.w * 3) {
            raw.push(0); // filter: none
            raw.extend_from_slice(row);
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&raw)?;
        let idat = z.finish()?;
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(self.w as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.h as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in [(b"IHDR", &ihdr), (b"IDAT", &idat), (b"IEND", &Vec::new())] {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut crc = crc32fast::Hasher::new();
            crc.update(kind);
            crc.update(data);
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            out.extend_from_slice(&crc.finalize().to_be_bytes());
        }
        std::fs::write(path, out)
    }
}

/// Fault periods of a history: (name, start µs, end µs).
pub fn fault_periods(ops: &[Op], end_us: u64) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    let mut open: Option<(String, u64)> = None;
    for o in ops.iter().filter(|o| o.process == NEMESIS) {
        let name = o.value.get("fault").and_then(|f| f.as_str()).unwrap_or("?").to_string();
        match (o.f, o.kind) {
            (F::Fault, Kind::Ok) => open = Some((name, o.time_us)),
            (F::Heal, Kind::Ok) => {
                if let Some((n, t)) = open.take() {
                    out.push((n, t, o.time_us));
                }
            }
            _ => {}
        }
    }
    if let Some((n, t)) = open {
        out.push((n, t, end_us));
    }
    out
}

/// Operations as (invoke µs, latency µs, outcome); info latencies are the time until the
/// harness gave up.
pub fn latencies(ops: &[Op]) -> Vec<(u64, u64, Kind)> {
    crate::history::pairs(ops)
        .into_iter()
        .filter_map(|(inv, done)| done.map(|d| (inv.time_us, d.time_us.saturating_sub(inv.time_us), d.kind)))
        .collect()
}

pub fn plot(ops: &[Op], title: &str, path: &Path) -> std::io::Result<()> {
    let (w, h) = (1200usize, 520usize);
    let (left, right, top, bottom) = (70i64, 20i64, 44i64, 60i64);
    let mut c = Canvas::new(w, h);
    let end_us = ops.iter().map(|o| o.time_us).max().unwrap_or(1).max(1);
    let pw = w as i64 - left - right;
    let ph = h as i64 - top - bottom;
    let x_of = |t: u64| left + (t as f64 / end_us as f64 * pw as f64) as i64;
    // Latency axis: 0.1 ms .. 10 s, log scale.
    let (lo, hi) = (2.0f64, 7.0f64); // log10 of µs
    let y_of = |us: u64| {
        let l = (us.max(1) as f64).log10().clamp(lo, hi);
        top + ph - ((l - lo) / (hi - lo) * ph as f64) as i64
    };
    for (name, t0, t1) in fault_periods(ops, end_us) {
        c.rect(x_of(t0), top, x_of(t1), top + ph, fault_color(&name));
        c.text(x_of(t0) + 2, top + 2, &name, AXIS);
    }
    for (us, label) in
        [(100, "0.1MS"), (1_000, "1MS"), (10_000, "10MS"), (100_000, "100MS"), (1_000_000, "1S"), (10_000_000, "10S")]
    {
        let y = y_of(us);
        c.rect(left, y, left + pw, y, GRID);
        c.text(left - 8 - 6 * label.len() as i64, y - 3, label, AXIS);
    }
    let secs = end_us / 1_000_000;
    let step = if secs > 300 {
        60
    } else if secs > 100 {
        20
    } else {
        10
    };
    for s in (0..=secs).step_by(step as usize) {
        let x = x_of(s * 1_000_000);
        c.rect(x, top + ph, x, top + ph + 4, AXIS);
        let label = format!("{s}");
        c.text(x - 3 * label.len() as i64, top + ph + 8, &label, AXIS);
    }
    c.text(left + pw / 2 - 60, top + ph + 22, "TIME SINCE START (S)", AXIS);
    for (t, lat, kind) in latencies(ops) {
        let color = match kind {
            Kind::Ok => OK,
            Kind::Fail => FAIL,
            _ => INFO,
        };
        let (x, y) = (x_of(t), y_of(lat));
        c.rect(x - 1, y - 1, x, y, color);
    }
    c.rect(left, top, left, top + ph, AXIS);
    c.rect(left, top + ph, left + pw, top + ph, AXIS);
    c.text(left, 10, title, AXIS);
    c.text(8, top - 14, "LATENCY", AXIS);
    // Legend.
    let mut x = left;
    let ly = h as i64 - 16;
    for (label, color) in [("OK", OK), ("FAIL", FAIL), ("INFO", INFO)] {
        c.rect(x, ly, x + 6, ly + 6, color);
        c.text(x + 10, ly, label, AXIS);
        x += 16 + 6 * label.len() as i64 + 10;
    }
    for (label, name) in [("KILL", "kill"), ("PAUSE", "pause"), ("PARTITION", "partition"), ("REPLACE", "replace")] {
        c.rect(x, ly - 1, x + 14, ly + 7, fault_color(name));
        c.text(x + 18, ly, label, AXIS);
        x += 24 + 6 * label.len() as i64 + 10;
    }
    c.png(path)
}

fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        _ => [0; 7],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_with_fault_bands() {
        let mut ops = Vec::new();
        let mut push = |p: i64, kind: Kind, f: F, t: u64, v: serde_json::Value| {
            let mut o = Op::new(p, kind, f);
            o.time_us = t;
            o.value = v;
            o.index = ops.len();
            ops.push(o);
        };
        push(NEMESIS, Kind::Ok, F::Fault, 1_000_000, serde_json::json!({"fault": "kill-leader"}));
        push(0, Kind::Invoke, F::Write, 1_500_000, 1.into());
        push(0, Kind::Info, F::Write, 3_500_000, 1.into());
        push(NEMESIS, Kind::Ok, F::Heal, 4_000_000, serde_json::json!({"fault": "kill-leader"}));
        assert_eq!(fault_periods(&ops, 5_000_000), vec![("kill-leader".to_string(), 1_000_000, 4_000_000)]);
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("p.png");
        plot(&ops, "test", &path).expect("writing the plot");
        let bytes = std::fs::read(&path).expect("reading the plot back");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&bytes[12..16], b"IHDR");
    }
}
