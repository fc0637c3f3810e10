//! Sorted runs of predicted latencies: the arithmetic under an outlook.
//! A decision builds its distributions as sums of small sorted grids and
//! reads a few statistics from them, some 330 values in all; this is most
//! of its time, so nothing here allocates, the merges keep two independent
//! dependency chains in flight, and the last step (a prediction moved by
//! the residual correction) is never written out ([`Shifted`]).

use crate::estimate::floor_ceil;

/// A list of at most `N` values on the stack.
#[derive(Clone, Copy)]
pub(super) struct Values<const N: usize> {
    buf: [f64; N],
    len: usize,
}

impl<const N: usize> Values<N> {
    pub(super) fn new() -> Self {
        Values {
            buf: [0.0; N],
            len: 0,
        }
    }

    pub(super) fn one(v: f64) -> Self {
        let mut l = Values::new();
        l.push(v);
        l
    }

    /// Panics when full: every caller's sizes are bounded by the grids.
    pub(super) fn push(&mut self, v: f64) {
        self.buf[self.len] = v;
        self.len += 1;
    }

    pub(super) fn as_slice(&self) -> &[f64] {
        &self.buf[..self.len]
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [f64] {
        &mut self.buf[..self.len]
    }
}

/// At most `N` evenly spaced quantiles of sorted data (all of it if short).
pub(super) fn grid<const N: usize>(sorted: &[f64]) -> Values<N> {
    let mut out = Values::new();
    if sorted.len() <= N {
        out.buf[..sorted.len()].copy_from_slice(sorted);
        out.len = sorted.len();
    } else {
        // `quantile` at each point, inline: every point falls strictly
        // inside the data, so each has a value above it to interpolate to.
        let last = (sorted.len() - 1) as f64;
        for (i, slot) in out.buf.iter_mut().enumerate() {
            let pos = (i as f64 + 0.5) / N as f64 * last;
            let lo = pos as usize;
            let (below, above) = (sorted[lo], sorted[lo + 1]);
            *slot = below + (above - below) * (pos - lo as f64);
        }
        out.len = N;
    }
    out
}

fn all_finite(v: &[f64]) -> bool {
    v.iter().all(|x| x.is_finite())
}

/// A sum in four lanes: a single running sum waits on each addition's
/// latency (some 250 in a row for an offload outlook).
pub(super) fn sum(v: &[f64]) -> f64 {
    let mut lanes = [0.0; 4];
    let chunks = v.chunks_exact(4);
    let rest: f64 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + rest
}

/// Two buffers a merge goes back and forth between.
pub(super) type Buffers<const N: usize> = [[f64; N]; 2];

/// Every `f(a_i + b_j)`, sorted, for `a` and `b` sorted and `f`
/// nondecreasing: `b.len()` sorted runs, merged pairwise. Sorting (or
/// selecting quantiles from) the offload outlook's values was most of a
/// decision's time; merging the runs is a few nanoseconds a value. `None`
/// if a value is not finite (or `f` makes one so), or if there are more
/// than the buffers hold.
pub(super) fn sorted_sums<'b, const N: usize>(
    a: &[f64],
    b: &[f64],
    f: impl Fn(f64) -> f64,
    bufs: &'b mut Buffers<N>,
) -> Option<&'b [f64]> {
    let total = a.len() * b.len();
    if !all_finite(a) || !all_finite(b) || total > N {
        return None;
    }
    let [from, to] = bufs;
    let (mut from, mut to) = (&mut from[..total], &mut to[..total]);
    if !a.is_empty() {
        for (run, y) in from.chunks_exact_mut(a.len()).zip(b) {
            for (slot, x) in run.iter_mut().zip(a) {
                *slot = f(x + y);
            }
        }
    }
    let mut run = a.len().max(1);
    while run < total {
        let mut jobs = from
            .chunks(2 * run)
            .zip(to.chunks_mut(2 * run))
            .map(|(src, dst)| {
                let (x, y) = src.split_at(run.min(src.len()));
                (x, y, dst)
            });
        // Two at a time where they are the same length.
        while let Some(a) = jobs.next() {
            match jobs.next() {
                Some(b) if b.2.len() == a.2.len() => merge([a, b]),
                Some(b) => {
                    merge([a]);
                    merge([b]);
                }
                None => merge([a]),
            }
        }
        std::mem::swap(&mut from, &mut to);
        run *= 2;
    }
    let values: &'b [f64] = from;
    // Sums of finite values are never NaN, so an overflow shows as an
    // infinity at one end.
    let finite_ends = [values.first(), values.last()]
        .iter()
        .all(|v| v.is_none_or(|v| v.is_finite()));
    finite_ends.then_some(values)
}

/// Every `max(x_i + shift, 0)` for sorted `x`, read where it lies: an
/// outlook's last step (its prediction moved by the residual correction,
/// a latency staying >= 0) is such a set, 256 values for an offload, of
/// which its mean, count in time and two quantiles need a few.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shifted<'a> {
    x: &'a [f64],
    shift: f64,
}

impl<'a> Shifted<'a> {
    /// `None` unless `x` is non-empty and it, the shift and their sums
    /// are finite.
    pub(super) fn new(x: &'a [f64], shift: f64) -> Option<Self> {
        let ok = !x.is_empty()
            && all_finite(x)
            && shift.is_finite()
            && (x[x.len() - 1] + shift).is_finite();
        debug_assert!(!ok || x.is_sorted());
        ok.then_some(Shifted { x, shift })
    }

    pub(super) fn len(&self) -> usize {
        self.x.len()
    }

    #[inline(always)]
    fn at(&self, i: usize) -> f64 {
        (self.x[i] + self.shift).max(0.0)
    }

    /// The sum of every value: `x`'s sum shifted, less what the clamp at
    /// 0 took.
    pub(super) fn sum(&self, x_sum: f64) -> f64 {
        match self.x.partition_point(|v| v + self.shift < 0.0) {
            0 => x_sum + self.x.len() as f64 * self.shift,
            z => self.x[z..].iter().map(|v| v + self.shift).sum(),
        }
    }

    /// How many values are at most `limit`.
    pub(super) fn count_at_most(&self, limit: f64) -> usize {
        self.x
            .partition_point(|v| (v + self.shift).max(0.0) <= limit)
    }

    /// The type-7 quantile of the values, as `quantile` gives it.
    pub(super) fn quantile(&self, q: f64) -> f64 {
        let pos = q.clamp(0.0, 1.0) * (self.len() - 1) as f64;
        let (lo, hi) = floor_ceil(pos);
        let (v_lo, v_hi) = (self.at(lo), self.at(hi));
        v_lo + (v_hi - v_lo) * (pos - lo as f64)
    }
}

/// One merge to do: sorted `x` and `y` into `out` (their length together).
type Job<'a> = (&'a [f64], &'a [f64], &'a mut [f64]);

/// Runs `M` merges of equal lengths side by side, each without a branch
/// on the data (a merge's comparisons are coin flips to a branch
/// predictor) and from both ends at once: each step waits on the one
/// before it, so 2 x `M` independent chains in flight run several times
/// faster than one. Both ends follow the same order (on ties, `x` first),
/// so the front's smallest half and the back's largest half make up all
/// the values; they are not NaN (see [`sorted_sums`]).
fn merge<const M: usize>(jobs: [Job<'_>; M]) {
    let n = jobs.first().map_or(0, |j| j.2.len());
    debug_assert!(jobs
        .iter()
        .all(|j| j.2.len() == n && j.0.len() + j.1.len() == n));
    let mut fronts = jobs.each_ref().map(|j| Front::new(j.0, j.1));
    let mut backs = jobs.each_ref().map(|j| Back::new(j.0, j.1));
    let outs = jobs.map(|j| j.2);
    let half = n / 2;
    for k in 0..half {
        for m in 0..M {
            outs[m][k] = fronts[m].step();
            outs[m][n - 1 - k] = backs[m].step();
        }
    }
    // The back holds one more when the length is odd.
    if n % 2 == 1 {
        for m in 0..M {
            outs[m][half] = backs[m].step();
        }
    }
}

/// A merge's front: the smallest value left. An exhausted run reads as
/// an infinity past its end, so that a step is a comparison and a select.
struct Front<'a> {
    x: &'a [f64],
    y: &'a [f64],
    i: usize,
    j: usize,
}

impl<'a> Front<'a> {
    fn new(x: &'a [f64], y: &'a [f64]) -> Self {
        Front { x, y, i: 0, j: 0 }
    }

    #[inline(always)]
    fn step(&mut self) -> f64 {
        let xv = self.x.get(self.i).copied().unwrap_or(f64::INFINITY);
        let yv = self.y.get(self.j).copied().unwrap_or(f64::INFINITY);
        let take_y = yv < xv;
        self.i += usize::from(!take_y);
        self.j += usize::from(take_y);
        if take_y {
            yv
        } else {
            xv
        }
    }
}

/// A merge's back: the largest value left (on ties, `y`'s, the later in
/// the merged order).
struct Back<'a> {
    x: &'a [f64],
    y: &'a [f64],
    /// How many of each are left.
    i: usize,
    j: usize,
}

impl<'a> Back<'a> {
    fn new(x: &'a [f64], y: &'a [f64]) -> Self {
        Back {
            x,
            y,
            i: x.len(),
            j: y.len(),
        }
    }

    #[inline(always)]
    fn step(&mut self) -> f64 {
        let xv = self.x.get(self.i.wrapping_sub(1)).copied();
        let yv = self.y.get(self.j.wrapping_sub(1)).copied();
        let (xv, yv) = (
            xv.unwrap_or(f64::NEG_INFINITY),
            yv.unwrap_or(f64::NEG_INFINITY),
        );
        let take_x = xv > yv;
        self.i -= usize::from(take_x);
        self.j -= usize::from(!take_x);
        if take_x {
            xv
        } else {
            yv
        }
    }
}
