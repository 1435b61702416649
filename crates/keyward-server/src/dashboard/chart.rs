//! Usage charts drawn on the server as inline SVG: verifications per hour (last 24 hours) or
//! per day (last 30 days), stacked by outcome (valid at the bottom, then each denial code).
//!
//! No script and no inline style (the CSP allows neither): colours and sizes come from classes
//! in `assets/style.css`. Horizontal positions are percentages and vertical ones pixels, so the
//! chart stretches to its card's width while its text keeps its size on a laptop and a phone;
//! the y-axis labels sit in the container's left padding (the SVG's overflow is visible).
//! Every slot carries a `<title>` (a native tooltip), the SVG a `<title>` and `<desc>` for
//! screen readers, and `data-*` attributes with the figures, which tests read.

use std::collections::BTreeMap;

use keyward_core::kinds::Granularity;
use keyward_core::time::Timestamp;
use keyward_core::verify::Code;
use keyward_store::Bucket;
use maud::{html, Markup};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// Pixels above the plot (room for the top label) and below it (the x-axis labels).
const TOP: f64 = 10.0;
const BOTTOM: f64 = 26.0;

/// The period a chart covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum View {
    /// The last 24 hours, one bar per hour (the last bar is the current hour so far).
    Day,
    /// The last 30 days, one bar per day (UTC days; the last bar is today so far).
    Month,
}

impl View {
    /// From a `?usage=` query value; anything else is the 24-hour view.
    pub(crate) fn parse(s: Option<&str>) -> View {
        match s {
            Some("30d") => View::Month,
            _ => View::Day,
        }
    }
    pub(crate) fn param(self) -> &'static str {
        match self {
            View::Day => "24h",
            View::Month => "30d",
        }
    }
    /// The store's bucket granularity for this view.
    pub(crate) fn granularity(self) -> Granularity {
        match self {
            View::Day => Granularity::Hour,
            View::Month => Granularity::Day,
        }
    }
    fn slot_ms(self) -> i64 {
        match self {
            View::Day => HOUR_MS,
            View::Month => DAY_MS,
        }
    }
    fn slots(self) -> usize {
        match self {
            View::Day => 24,
            View::Month => 30,
        }
    }
    /// `last 24 hours`, `last 30 days`.
    pub(crate) fn period(self) -> &'static str {
        match self {
            View::Day => "last 24 hours",
            View::Month => "last 30 days",
        }
    }
    /// The bucket range `[from, to)` of the view at `now`: whole slots, the current one last.
    pub(crate) fn range(self, now: Timestamp) -> (Timestamp, Timestamp) {
        let slot = self.slot_ms();
        let last = now.millis().div_euclid(slot) * slot;
        let first = last - slot * (self.slots() as i64 - 1);
        (
            Timestamp::from_millis(first),
            Timestamp::from_millis(last + slot),
        )
    }
}

/// Verifications per slot and outcome code, over one view.
#[derive(Clone, Debug)]
pub struct Usage {
    pub(crate) view: View,
    /// Start of the first slot (ms).
    first: i64,
    /// Per slot, oldest first: outcome code → count.
    slots: Vec<BTreeMap<String, i64>>,
}

/// Stacking and legend order: valid first, then the denial codes in the API's check order;
/// codes this version does not know go last.
fn code_rank(code: &str) -> usize {
    Code::parse(code).map_or(usize::MAX, Code::index)
}

fn sort_codes(v: &mut [(String, i64)]) {
    v.sort_by(|a, b| code_rank(&a.0).cmp(&code_rank(&b.0)).then(a.0.cmp(&b.0)));
}

/// The CSS class of an outcome's colour.
pub(crate) fn code_class(code: &str) -> String {
    match Code::parse(code) {
        Some(c) => format!("o-{}", c.as_str().to_ascii_lowercase().replace('_', "-")),
        None => "o-other".to_string(),
    }
}

/// A short, readable name of an outcome code.
pub(crate) fn code_label(code: &str) -> &str {
    match code {
        "VALID" => "Valid",
        "NOT_FOUND" => "Not found",
        "REVOKED" => "Revoked",
        "EXPIRED" => "Expired",
        "DISABLED" => "Disabled",
        "IP_NOT_ALLOWED" => "Address not allowed",
        "INSUFFICIENT_SCOPE" => "Insufficient scope",
        "RATE_LIMITED" => "Rate limited",
        "USAGE_EXCEEDED" => "Quota exceeded",
        other => other,
    }
}

impl Usage {
    /// Sums buckets (of any keys) into the view's slots; buckets outside the view are ignored.
    pub(crate) fn from_buckets(view: View, now: Timestamp, buckets: &[Bucket]) -> Usage {
        let (from, to) = view.range(now);
        let mut slots = vec![BTreeMap::new(); view.slots()];
        for b in buckets {
            let t = b.start.millis();
            if t < from.millis() || t >= to.millis() || b.n <= 0 {
                continue;
            }
            let i = ((t - from.millis()) / view.slot_ms()) as usize;
            if let Some(slot) = slots.get_mut(i) {
                *slot.entry(b.code.clone()).or_insert(0) += b.n;
            }
        }
        Usage {
            view,
            first: from.millis(),
            slots,
        }
    }

    fn start(&self, i: usize) -> i64 {
        self.first + i as i64 * self.view.slot_ms()
    }

    /// Totals per outcome code over the view, in legend order.
    pub(crate) fn totals(&self) -> Vec<(String, i64)> {
        let mut t: BTreeMap<&str, i64> = BTreeMap::new();
        for s in &self.slots {
            for (c, n) in s {
                *t.entry(c.as_str()).or_insert(0) += n;
            }
        }
        let mut v: Vec<(String, i64)> = t.into_iter().map(|(c, n)| (c.to_string(), n)).collect();
        sort_codes(&mut v);
        v
    }

    pub(crate) fn valid(&self) -> i64 {
        self.slots
            .iter()
            .filter_map(|s| s.get("VALID"))
            .copied()
            .sum()
    }

    pub(crate) fn denied(&self) -> i64 {
        self.slots
            .iter()
            .flat_map(|s| s.iter())
            .filter(|(c, _)| c.as_str() != "VALID")
            .map(|(_, n)| *n)
            .sum()
    }

    /// The label of slot `i` in a tooltip: `Nov 26, 14:00–15:00 UTC` or `Nov 26 (UTC day)`.
    fn slot_label(&self, i: usize) -> String {
        let start = self.start(i);
        match self.view {
            View::Day => {
                let end = (hour_of(start) + 1) % 24;
                format!(
                    "{}, {:02}:00–{:02}:00 UTC",
                    month_day(start),
                    hour_of(start),
                    end
                )
            }
            View::Month => format!("{} (UTC day)", month_day(start)),
        }
    }

    /// The x-axis label of slot `i`, if it has one, and whether it is a minor one (hidden on
    /// narrow screens).
    fn tick(&self, i: usize) -> Option<(String, bool)> {
        let start = self.start(i);
        match self.view {
            View::Day => {
                let h = hour_of(start);
                (h % 3 == 0).then(|| (format!("{h:02}:00"), h % 6 != 0))
            }
            View::Month => {
                // Counted from today backwards, so today always has its label.
                let back = self.slots.len() - 1 - i;
                back.is_multiple_of(4)
                    .then(|| (month_day(start), !back.is_multiple_of(8)))
            }
        }
    }
}

fn hour_of(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS).rem_euclid(24)
}

/// `Nov 26`.
pub(crate) fn month_day(ms: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let s = Timestamp::from_millis(ms).to_rfc3339();
    let month: usize = s.get(5..7).and_then(|m| m.parse().ok()).unwrap_or(1);
    let day: u32 = s.get(8..10).and_then(|d| d.parse().ok()).unwrap_or(1);
    format!("{} {day}", MONTHS[(month.clamp(1, 12)) - 1])
}

/// `12,345`.
pub(crate) fn group(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// An axis label: `950`, `1.2k`, `12k`, `3.5M`.
fn compact(n: i64) -> String {
    let f = |v: f64, unit: &str| {
        if v < 10.0 && (v * 10.0).round() % 10.0 != 0.0 {
            format!("{v:.1}{unit}")
        } else {
            format!("{}{unit}", v.round() as i64)
        }
    };
    if n >= 1_000_000 {
        f(n as f64 / 1e6, "M")
    } else if n >= 1_000 {
        f(n as f64 / 1e3, "k")
    } else {
        n.to_string()
    }
}

/// A step of 1, 2 or 5 times a power of ten giving about four gridlines up to `max`.
fn nice_step(max: i64) -> i64 {
    let raw = (max + 3) / 4;
    let mut mag = 1i64;
    while mag.saturating_mul(10) <= raw {
        mag = mag.saturating_mul(10);
    }
    [1, 2, 5, 10]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10 * mag)
        .max(1)
}

/// One-line summary of counts: `12 valid, 3 denied (2 Revoked, 1 Rate limited)`.
pub(crate) fn describe(counts: &[(String, i64)]) -> String {
    let valid: i64 = counts
        .iter()
        .filter(|(c, _)| c == "VALID")
        .map(|(_, n)| n)
        .sum();
    let denials: Vec<String> = counts
        .iter()
        .filter(|(c, n)| c != "VALID" && *n > 0)
        .map(|(c, n)| format!("{} {}", group(*n), code_label(c)))
        .collect();
    let denied: i64 = counts
        .iter()
        .filter(|(c, _)| c != "VALID")
        .map(|(_, n)| n)
        .sum();
    if denials.is_empty() {
        format!("{} valid, 0 denied", group(valid))
    } else {
        format!(
            "{} valid, {} denied ({})",
            group(valid),
            group(denied),
            denials.join(", ")
        )
    }
}

/// One outcome's part of a bar.
struct Seg {
    code: String,
    n: i64,
    y: f64,
    h: f64,
}

fn pct(v: f64) -> String {
    format!("{v:.3}%")
}

fn px(v: f64) -> String {
    format!("{v:.1}")
}

/// The stacked bar chart. `id` must be unique in the page (it names the title and desc);
/// `subject` completes the title ("Verifications of billing prod").
pub(crate) fn render(u: &Usage, id: &str, subject: &str, height: u32) -> Markup {
    let h = f64::from(height.max(80));
    let plot = h - TOP - BOTTOM;
    let max = u
        .slots
        .iter()
        .map(|s| s.values().sum::<i64>())
        .max()
        .unwrap_or(0);
    let step = nice_step(max);
    let top = if max == 0 {
        4
    } else {
        step * ((max + step - 1) / step)
    };
    let y = |v: i64| TOP + plot * (1.0 - v as f64 / top as f64);
    let ticks: Vec<i64> = if max == 0 {
        vec![0]
    } else {
        (0..=top / step).map(|k| k * step).collect()
    };
    let n = u.slots.len().max(1) as f64;
    let slot_w = 100.0 / n;
    let bar_w = slot_w * 0.68;
    let totals = u.totals();
    let title = format!(
        "{subject}, {}, {}",
        u.view.period(),
        match u.view {
            View::Day => "per hour (UTC)",
            View::Month => "per day (UTC)",
        }
    );
    let busiest = u
        .slots
        .iter()
        .enumerate()
        .map(|(i, s)| (i, s.values().sum::<i64>()))
        .filter(|(_, t)| *t > 0)
        .max_by_key(|(i, t)| (*t, *i));
    // Each slot's segments, bottom up; a segment of one verification stays visible on a
    // tall axis.
    let mut bars: Vec<Vec<Seg>> = Vec::with_capacity(u.slots.len());
    let mut tips: Vec<String> = Vec::with_capacity(u.slots.len());
    for (i, slot) in u.slots.iter().enumerate() {
        let mut counts: Vec<(String, i64)> = slot.iter().map(|(c, n)| (c.clone(), *n)).collect();
        sort_codes(&mut counts);
        tips.push(format!(
            "{}: {}",
            u.slot_label(i),
            if counts.is_empty() {
                "no verifications".to_string()
            } else {
                describe(&counts)
            }
        ));
        let (mut acc, mut prev) = (0, y(0));
        let mut segs = Vec::new();
        for (code, n) in counts {
            acc += n;
            let top_y = y(acc).min(prev - 1.5);
            segs.push(Seg {
                code,
                n,
                y: top_y,
                h: prev - top_y,
            });
            prev = top_y;
        }
        bars.push(segs);
    }
    let desc = match busiest {
        None => format!("No verifications in the {}.", u.view.period()),
        Some((i, t)) => format!(
            "{} in the {}. Busiest: {}, with {} verifications.",
            describe(&totals),
            u.view.period(),
            u.slot_label(i),
            group(t)
        ),
    };
    html! {
        div.chart {
            svg.chart-svg role="img" width="100%" height=(height) aria-labelledby={ (id) "-title " (id) "-desc" }
                data-valid=(u.valid()) data-denied=(u.denied()) data-view=(u.view.param()) {
                title id={ (id) "-title" } { (title) }
                desc id={ (id) "-desc" } { (desc) }
                g.grid aria-hidden="true" {
                    @for t in &ticks {
                        line class=(if *t == 0 { "baseline" } else { "gridline" }) x1="0" x2="100%" y1=(px(y(*t))) y2=(px(y(*t))) {}
                        text.ylabel x="-8" y=(px(y(*t) + 4.0)) text-anchor="end" { (compact(*t)) }
                    }
                }
                @if max == 0 {
                    text.nodata x="50%" y=(px(TOP + plot / 2.0)) text-anchor="middle" { "No verifications in the " (u.view.period()) }
                }
                g.bars {
                    @for (i, segs) in bars.iter().enumerate() {
                        @let x = slot_w * i as f64;
                        g.slot {
                            title { (tips[i]) }
                            rect.hit x=(pct(x)) width=(pct(slot_w)) y=(px(TOP)) height=(px(plot)) {}
                            @for s in segs {
                                rect class=(code_class(&s.code)) x=(pct(x + (slot_w - bar_w) / 2.0)) width=(pct(bar_w))
                                    y=(px(s.y)) height=(px(s.h)) data-code=(s.code) data-n=(s.n) {}
                            }
                        }
                    }
                }
                g.xaxis aria-hidden="true" {
                    @for i in 0..u.slots.len() {
                        @if let Some((label, minor)) = u.tick(i) {
                            text class=(if minor { "xlabel minor" } else { "xlabel" }) x=(pct(slot_w * (i as f64 + 0.5))) y=(px(h - 8.0)) text-anchor="middle" { (label) }
                        }
                    }
                }
            }
        }
    }
}

/// The legend: a swatch, the outcome's name and its total, for every outcome in the view
/// (valid always).
pub(crate) fn legend(u: &Usage) -> Markup {
    let mut totals = u.totals();
    if !totals.iter().any(|(c, _)| c == "VALID") {
        totals.insert(0, ("VALID".to_string(), 0));
    }
    html! {
        ul.legend aria-label="Outcomes" {
            @for (code, n) in &totals {
                li title=(code) {
                    span class={ "swatch " (code_class(code)) } aria-hidden="true" {}
                    (code_label(code)) " " strong { (group(*n)) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(start: i64, code: &str, n: i64) -> Bucket {
        Bucket {
            key_id: "key_x".into(),
            start: Timestamp::from_millis(start),
            code: code.into(),
            n,
        }
    }

    #[test]
    fn the_day_view_covers_24_whole_hours_ending_with_the_current_one() {
        let now = Timestamp::from_millis(1_800_000_000_000 + 25 * 60_000);
        let (from, to) = View::Day.range(now);
        assert_eq!((to.millis() - from.millis()) / HOUR_MS, 24);
        assert!(from.millis() % HOUR_MS == 0 && to > now && to.millis() - now.millis() <= HOUR_MS);
        let (from, to) = View::Month.range(now);
        assert_eq!((to.millis() - from.millis()) / DAY_MS, 30);
    }

    #[test]
    fn buckets_are_summed_per_slot_and_code_and_outsiders_ignored() {
        let now = Timestamp::from_millis(1_800_000_000_000);
        let (from, _) = View::Day.range(now);
        let f = from.millis();
        let u = Usage::from_buckets(
            View::Day,
            now,
            &[
                bucket(f, "VALID", 3),
                bucket(f, "VALID", 2),
                bucket(f + HOUR_MS, "REVOKED", 4),
                bucket(f - HOUR_MS, "VALID", 100),
                bucket(f + 23 * HOUR_MS, "RATE_LIMITED", 1),
                bucket(f + 24 * HOUR_MS, "VALID", 100),
            ],
        );
        assert_eq!((u.valid(), u.denied()), (5, 5));
        assert_eq!(
            u.totals(),
            vec![
                ("VALID".to_string(), 5),
                ("REVOKED".to_string(), 4),
                ("RATE_LIMITED".to_string(), 1)
            ]
        );
        let svg = render(&u, "c", "Verifications", 200).into_string();
        assert!(svg.contains(r#"data-valid="5""#) && svg.contains(r#"data-denied="5""#));
        assert!(svg.contains("<title id=\"c-title\">") && svg.contains("<desc id=\"c-desc\">"));
        assert!(svg.contains(r#"data-code="REVOKED" data-n="4""#));
        assert!(!svg.contains("style="), "no inline style");
        assert!(legend(&u).into_string().contains("Rate limited"));
    }

    #[test]
    fn an_empty_period_says_so() {
        let u = Usage::from_buckets(View::Month, Timestamp::from_millis(1_800_000_000_000), &[]);
        let svg = render(&u, "c", "Verifications", 200).into_string();
        assert!(svg.contains("No verifications in the last 30 days"));
        assert!(legend(&u).into_string().contains("Valid"));
    }

    #[test]
    fn axis_steps_and_labels_read_well() {
        assert_eq!(nice_step(3), 1);
        assert_eq!(nice_step(10), 5);
        assert_eq!(nice_step(37), 10);
        assert_eq!(nice_step(1234), 500);
        assert_eq!(compact(1500), "1.5k");
        assert_eq!(compact(20_000), "20k");
        assert_eq!(compact(950), "950");
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(month_day(0), "Jan 1");
        assert_eq!(
            describe(&[("VALID".into(), 2), ("REVOKED".into(), 1)]),
            "2 valid, 1 denied (1 Revoked)"
        );
    }
}
