//! Turning ring-buffer [`Record`]s into [`ProbeEvent`]s, and the two pieces
//! of kernel knowledge that needs: the clock (`bpf_ktime_get_ns` is
//! CLOCK_MONOTONIC) and the tracepoint field layout.

use agent_common::{
    Decoded, Flow, Record, TracepointLayout, AF_INET, AF_INET6, SOURCE_QUIC_SPIN, SOURCE_SOCKOPS,
    SOURCE_TC_TCP_TS, TCP_CLOSE, TCP_ESTABLISHED,
};
use agent_core::{ProbeEvent, ProbeEventKind, SampleSource};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Maps kernel timestamps to [`Instant`]s. `Instant` on Linux is
/// CLOCK_MONOTONIC too, but opaque, so one pair of readings taken
/// back to back anchors the two.
#[derive(Debug, Clone, Copy)]
pub struct MonoClock {
    mono_ns: u64,
    at: Instant,
}

impl MonoClock {
    pub fn now() -> Self {
        let at = Instant::now();
        let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .expect("CLOCK_MONOTONIC is always available on Linux");
        MonoClock {
            mono_ns: ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64,
            at,
        }
    }

    pub fn instant(&self, ts_ns: u64) -> Instant {
        if ts_ns >= self.mono_ns {
            self.at + Duration::from_nanos(ts_ns - self.mono_ns)
        } else {
            self.at
                .checked_sub(Duration::from_nanos(self.mono_ns - ts_ns))
                .unwrap_or(self.at)
        }
    }
}

fn addr(family: u8, words: &[u32; 4]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(words[0])))),
        AF_INET6 => {
            let mut bytes = [0u8; 16];
            for (chunk, w) in bytes.chunks_exact_mut(4).zip(words) {
                chunk.copy_from_slice(&w.to_ne_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            // A dual-stack socket talking IPv4 reports a mapped address.
            Some(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            })
        }
        _ => None,
    }
}

/// The flow's remote endpoint as an address.
pub fn remote_ip(flow: &Flow) -> Option<IpAddr> {
    addr(flow.family, &flow.remote)
}

/// The flow's local (near) endpoint as an address.
#[cfg(test)]
pub fn local_ip(flow: &Flow) -> Option<IpAddr> {
    addr(flow.family, &flow.local)
}

/// Counters the probe keeps while converting, read through `EbpfProbe::stats`.
#[derive(Debug, Default)]
pub struct Counters {
    pub records: AtomicU64,
    pub sockops_rtt: AtomicU64,
    /// sock_ops samples left out: taken across a retransmission.
    pub sockops_rtt_in_recovery: AtomicU64,
    pub tc_tcp_ts_rtt: AtomicU64,
    pub quic_spin_rtt: AtomicU64,
    pub retransmits: AtomicU64,
    pub flows_started: AtomicU64,
    pub flows_ended: AtomicU64,
    pub channel_drops: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Most sockets whose segment counters are remembered; past it the memory
/// is reset (a reset only costs one flow's first delta).
const MAX_TRACKED_SOCKETS: usize = 65536;

/// Stateful conversion: sock_ops records carry cumulative per-socket
/// counters, turned here into per-sample deltas.
pub struct Converter {
    clock: MonoClock,
    /// Whether tcp:tcp_retransmit_skb is attached; if not, retransmits come
    /// from the sock_ops counters instead.
    retransmit_tracepoint: bool,
    /// (data segments out, total retransmits) last seen per socket.
    sockets: HashMap<Flow, (u32, u32)>,
}

impl Converter {
    pub fn new(clock: MonoClock, retransmit_tracepoint: bool) -> Self {
        Converter {
            clock,
            retransmit_tracepoint,
            sockets: HashMap::new(),
        }
    }

    /// Appends the events `rec` stands for to `out`.
    pub fn convert(&mut self, rec: &Record, counters: &Counters, out: &mut Vec<ProbeEvent>) {
        bump(&counters.records);
        let Some(dest) = remote_ip(&rec.flow) else {
            return;
        };
        let at = self.clock.instant(rec.ts_ns);
        let event = |source, kind| ProbeEvent {
            dest,
            source,
            at,
            kind,
        };
        match rec.decode() {
            Some(Decoded::Rtt(body)) => {
                let source = match rec.source {
                    SOURCE_SOCKOPS => SampleSource::SockOps,
                    SOURCE_TC_TCP_TS => SampleSource::TcTimestamp,
                    SOURCE_QUIC_SPIN => SampleSource::QuicSpin,
                    _ => return,
                };
                let rtt = event(
                    source,
                    ProbeEventKind::Rtt(Duration::from_nanos(body.rtt_ns)),
                );
                if source != SampleSource::SockOps {
                    bump(match source {
                        SampleSource::TcTimestamp => &counters.tc_tcp_ts_rtt,
                        _ => &counters.quic_spin_rtt,
                    });
                    out.push(rtt);
                    return;
                }
                let (segs, retrans) =
                    self.socket_deltas(&rec.flow, body.data_segs_out, body.total_retrans);
                // A sample taken across a retransmission measured the loss's
                // recovery (a segment acknowledged only once the hole before
                // it was filled), not the path: the loss rate prices that,
                // and counted here too it would read as seconds of jitter.
                if retrans == 0 {
                    bump(&counters.sockops_rtt);
                    out.push(rtt);
                } else {
                    bump(&counters.sockops_rtt_in_recovery);
                }
                if segs > 0 {
                    out.push(event(
                        SampleSource::SockOps,
                        ProbeEventKind::SegmentsSent(segs),
                    ));
                }
                if !self.retransmit_tracepoint && retrans > 0 {
                    out.push(event(
                        SampleSource::SockOps,
                        ProbeEventKind::Retransmits(retrans),
                    ));
                }
            }
            Some(Decoded::Retransmit(_)) => {
                bump(&counters.retransmits);
                if self.retransmit_tracepoint {
                    // The loss ratio pairs these with sock_ops segment counts: same source.
                    out.push(event(SampleSource::SockOps, ProbeEventKind::Retransmits(1)));
                }
            }
            Some(Decoded::State(s)) => {
                if s.new_state == TCP_ESTABLISHED {
                    bump(&counters.flows_started);
                } else if s.new_state == TCP_CLOSE {
                    bump(&counters.flows_ended);
                    self.sockets.remove(&rec.flow);
                }
            }
            None => {}
        }
    }

    /// Segments sent and retransmits since this socket's previous sample.
    fn socket_deltas(&mut self, flow: &Flow, segs: u32, retrans: u32) -> (u32, u32) {
        if self.sockets.len() >= MAX_TRACKED_SOCKETS && !self.sockets.contains_key(flow) {
            self.sockets.clear();
        }
        let last = self.sockets.entry(*flow).or_insert((0, 0));
        let deltas = (segs.wrapping_sub(last.0), retrans.wrapping_sub(last.1));
        *last = (segs, retrans);
        deltas
    }
}

/// A ring-buffer item as a record; `None` when it is shorter than one (the
/// kernel side writes whole records; bytes past one are ignored).
pub fn record_from_bytes(item: &[u8]) -> Option<Record> {
    if item.len() < std::mem::size_of::<Record>() {
        return None;
    }
    // SAFETY: the length is checked; a Record is integers without padding
    // (agent-common asserts its size), so any bytes are a valid one, and
    // read_unaligned copes with the ring buffer's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Record>()) })
}

/// Ring-buffer items converted as the probe's reader converts them, with a
/// fresh converter: the whole path from the kernel's bytes to events, for
/// the property tests and the fuzz target.
pub fn convert_ring_items<'a>(
    items: impl IntoIterator<Item = &'a [u8]>,
    retransmit_tracepoint: bool,
) -> Vec<ProbeEvent> {
    let mut conv = Converter::new(MonoClock::now(), retransmit_tracepoint);
    let counters = Counters::default();
    let mut out = Vec::new();
    for rec in items.into_iter().filter_map(record_from_bytes) {
        conv.convert(&rec, &counters, &mut out);
    }
    out
}

/// Field name -> (offset, size) from a tracefs `format` file.
pub fn parse_format(text: &str) -> HashMap<String, (u16, u16)> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for part in line.split(';') {
            let part = part.trim();
            if let Some(d) = part.strip_prefix("field:") {
                decl = Some(d);
            } else if let Some(o) = part.strip_prefix("offset:") {
                offset = o.parse::<u16>().ok();
            } else if let Some(s) = part.strip_prefix("size:") {
                size = s.parse::<u16>().ok();
            }
        }
        let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
            continue;
        };
        // "const void * skbaddr", "__u8 saddr[4]": the name is the last word before any '['.
        let name = decl
            .split('[')
            .next()
            .and_then(|d| d.split_whitespace().last())
            .map(|n| n.trim_start_matches('*'));
        if let Some(name) = name {
            fields.insert(name.to_string(), (offset, size));
        }
    }
    fields
}

/// Reads the two tracepoints' formats under `tracefs` and checks that every
/// field the programs read is there with the size they expect.
pub fn tracepoint_layout(tracefs: &Path) -> Result<TracepointLayout, String> {
    let read = |event: &str| {
        let path = tracefs.join("events").join(event).join("format");
        std::fs::read_to_string(&path)
            .map(|t| parse_format(&t))
            .map_err(|e| format!("reading {}: {e}", path.display()))
    };
    let rt = read("tcp/tcp_retransmit_skb")?;
    let ss = read("sock/inet_sock_set_state")?;
    let field =
        |fields: &HashMap<String, (u16, u16)>, event: &str, name: &str, size: u16| match fields
            .get(name)
        {
            Some(&(offset, s)) if s == size => Ok(offset),
            Some(&(_, s)) => Err(format!(
                "{event}: field {name} has size {s}, expected {size}"
            )),
            None => Err(format!("{event}: no field {name}")),
        };
    let r = |name, size| field(&rt, "tcp_retransmit_skb", name, size);
    let s = |name, size| field(&ss, "inet_sock_set_state", name, size);
    Ok(TracepointLayout {
        rt_state: r("state", 4)?,
        rt_sport: r("sport", 2)?,
        rt_dport: r("dport", 2)?,
        rt_family: r("family", 2)?,
        rt_saddr: r("saddr", 4)?,
        rt_daddr: r("daddr", 4)?,
        rt_saddr_v6: r("saddr_v6", 16)?,
        rt_daddr_v6: r("daddr_v6", 16)?,
        ss_oldstate: s("oldstate", 4)?,
        ss_newstate: s("newstate", 4)?,
        ss_sport: s("sport", 2)?,
        ss_dport: s("dport", 2)?,
        ss_family: s("family", 2)?,
        ss_protocol: s("protocol", 2)?,
        ss_saddr: s("saddr", 4)?,
        ss_daddr: s("daddr", 4)?,
        ss_saddr_v6: s("saddr_v6", 16)?,
        ss_daddr_v6: s("daddr_v6", 16)?,
        // Optional: older kernels trace successful retransmissions only.
        rt_err: r("err", 4).unwrap_or(0),
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{RecordBody, RetransmitBody, RttBody, StateBody, IPPROTO_TCP};
    use agent_common::{KIND_RETRANSMIT, KIND_RTT, KIND_STATE, SOURCE_TRACEPOINT};

    const RETRANSMIT_FORMAT: &str = "name: tcp_retransmit_skb
ID: 2281
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;

print fmt: \"skbaddr=%p\", REC->skbaddr
";

    #[test]
    fn format_fields_parse_with_arrays_and_pointers() {
        let f = parse_format(RETRANSMIT_FORMAT);
        assert_eq!(f["skbaddr"], (8, 8));
        assert_eq!(f["state"], (24, 4));
        assert_eq!(f["sport"], (28, 2));
        assert_eq!(f["saddr_v6"], (42, 16));
        assert_eq!(f["common_pid"], (4, 4));
        assert!(!f.contains_key("print"));
    }

    #[test]
    fn running_kernel_layout_parses_when_tracefs_is_mounted() {
        let tracefs = Path::new("/sys/kernel/tracing");
        if !tracefs
            .join("events/tcp/tcp_retransmit_skb/format")
            .exists()
        {
            return; // tracefs not mounted here; the eBPF integration tests cover it
        }
        let layout = tracepoint_layout(tracefs).unwrap();
        assert!(layout.rt_daddr_v6 > layout.rt_saddr_v6);
        if parse_format(
            &std::fs::read_to_string(tracefs.join("events/tcp/tcp_retransmit_skb/format")).unwrap(),
        )
        .contains_key("err")
        {
            assert!(layout.rt_err > layout.rt_daddr_v6, "{layout:?}");
        }
        assert!(layout.ss_newstate > layout.ss_oldstate);
    }

    fn v4_flow(remote: [u8; 4], lport: u16) -> Flow {
        Flow {
            local: [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0],
            remote: [u32::from_ne_bytes(remote), 0, 0, 0],
            local_port: lport,
            remote_port: 443,
            family: AF_INET,
            proto: IPPROTO_TCP,
            _pad: [0; 2],
        }
    }

    #[test]
    fn addresses_decode_from_network_order_words() {
        let f = v4_flow([192, 0, 2, 7], 1);
        assert_eq!(remote_ip(&f), Some("192.0.2.7".parse().unwrap()));
        assert_eq!(local_ip(&f), Some("10.0.0.1".parse().unwrap()));
        let v6: Ipv6Addr = "2001:db8::5".parse().unwrap();
        let mapped: Ipv6Addr = "::ffff:198.51.100.9".parse().unwrap();
        let words = |a: Ipv6Addr| {
            let o = a.octets();
            let mut w = [0u32; 4];
            for (i, c) in o.chunks_exact(4).enumerate() {
                w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            }
            w
        };
        let mut f6 = f;
        f6.family = AF_INET6;
        f6.remote = words(v6);
        assert_eq!(remote_ip(&f6), Some(IpAddr::V6(v6)));
        f6.remote = words(mapped);
        assert_eq!(remote_ip(&f6), Some("198.51.100.9".parse().unwrap()));
    }

    #[test]
    fn clock_maps_kernel_time_onto_instants() {
        let clock = MonoClock::now();
        let later = clock.instant(clock.mono_ns + 5_000_000);
        assert_eq!(later - clock.at, Duration::from_millis(5));
        let earlier = clock.instant(clock.mono_ns - 3_000_000);
        assert_eq!(clock.at - earlier, Duration::from_millis(3));
        // A fresh reading agrees with Instant::now() to well under a millisecond.
        let again = MonoClock::now();
        let predicted = clock.instant(again.mono_ns);
        let diff = if predicted > again.at {
            predicted - again.at
        } else {
            again.at - predicted
        };
        assert!(diff < Duration::from_millis(1), "{diff:?}");
    }

    fn rtt_record(source: u8, flow: Flow, rtt_us: u64, segs: u32, retrans: u32) -> Record {
        let mut r = Record::new(KIND_RTT, source, 1_000, flow);
        r.body = RecordBody {
            rtt: RttBody {
                rtt_ns: rtt_us * 1000,
                srtt_ns: 0,
                data_segs_out: segs,
                total_retrans: retrans,
            },
        };
        r
    }

    #[test]
    fn sockops_records_become_rtt_and_segment_deltas() {
        let counters = Counters::default();
        let mut conv = Converter::new(MonoClock::now(), true);
        let flow = v4_flow([192, 0, 2, 7], 40000);
        let mut out = Vec::new();
        conv.convert(
            &rtt_record(SOURCE_SOCKOPS, flow, 1500, 10, 0),
            &counters,
            &mut out,
        );
        conv.convert(
            &rtt_record(SOURCE_SOCKOPS, flow, 1700, 25, 0),
            &counters,
            &mut out,
        );
        let kinds: Vec<_> = out.iter().map(|e| e.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                ProbeEventKind::Rtt(Duration::from_micros(1500)),
                ProbeEventKind::SegmentsSent(10),
                ProbeEventKind::Rtt(Duration::from_micros(1700)),
                ProbeEventKind::SegmentsSent(15),
            ]
        );
        assert!(out.iter().all(|e| e.source == SampleSource::SockOps));
        assert!(out
            .iter()
            .all(|e| e.dest == "192.0.2.7".parse::<IpAddr>().unwrap()));
        assert_eq!(counters.sockops_rtt.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn samples_taken_across_a_retransmission_are_left_out() {
        let counters = Counters::default();
        let mut conv = Converter::new(MonoClock::now(), true);
        let flow = v4_flow([192, 0, 2, 7], 40002);
        let mut out = Vec::new();
        // (rtt us, segments out, total retransmits) of one socket's samples.
        for (rtt, segs, retrans) in [
            (40_000, 10, 0),
            // A loss between this sample and the last: the ACK that took
            // it came after the recovery.
            (310_000, 20, 1),
            (41_000, 30, 1),
            (39_000, 40, 1),
            (650_000, 45, 3),
            (40_500, 50, 3),
        ] {
            conv.convert(
                &rtt_record(SOURCE_SOCKOPS, flow, rtt, segs, retrans),
                &counters,
                &mut out,
            );
        }
        let rtts: Vec<_> = out
            .iter()
            .filter_map(|e| match e.kind {
                ProbeEventKind::Rtt(d) => Some(d.as_micros()),
                _ => None,
            })
            .collect();
        assert_eq!(rtts, [40_000, 41_000, 39_000, 40_500]);
        assert_eq!(counters.sockops_rtt.load(Ordering::Relaxed), 4);
        assert_eq!(counters.sockops_rtt_in_recovery.load(Ordering::Relaxed), 2);
        // The segment counts go on regardless: the loss rate needs them.
        let segs: u32 = out
            .iter()
            .filter_map(|e| match e.kind {
                ProbeEventKind::SegmentsSent(n) => Some(n),
                _ => None,
            })
            .sum();
        assert_eq!(segs, 50);
    }

    #[test]
    fn retransmits_come_from_the_tracepoint_or_else_the_counters() {
        let counters = Counters::default();
        let flow = v4_flow([192, 0, 2, 7], 40000);
        let mut rt = Record::new(KIND_RETRANSMIT, SOURCE_TRACEPOINT, 1_000, flow);
        rt.body = RecordBody {
            retransmit: RetransmitBody {
                state: TCP_ESTABLISHED,
                _pad: [0; 5],
            },
        };
        let mut with_tp = Converter::new(MonoClock::now(), true);
        let mut out = Vec::new();
        with_tp.convert(&rt, &counters, &mut out);
        assert_eq!(out[0].kind, ProbeEventKind::Retransmits(1));

        let mut without_tp = Converter::new(MonoClock::now(), false);
        let mut out = Vec::new();
        without_tp.convert(
            &rtt_record(SOURCE_SOCKOPS, flow, 900, 50, 3),
            &counters,
            &mut out,
        );
        assert!(out.contains(&ProbeEvent {
            kind: ProbeEventKind::Retransmits(3),
            ..out[0].clone()
        }));
    }

    #[test]
    fn closing_a_flow_forgets_its_counters() {
        let counters = Counters::default();
        let mut conv = Converter::new(MonoClock::now(), true);
        let flow = v4_flow([192, 0, 2, 7], 40001);
        let mut out = Vec::new();
        conv.convert(
            &rtt_record(SOURCE_SOCKOPS, flow, 100, 7, 0),
            &counters,
            &mut out,
        );
        let mut st = Record::new(KIND_STATE, SOURCE_TRACEPOINT, 2_000, flow);
        st.body = RecordBody {
            state: StateBody {
                old_state: 4,
                new_state: TCP_CLOSE,
                _pad: [0; 4],
            },
        };
        conv.convert(&st, &counters, &mut out);
        assert!(conv.sockets.is_empty());
        assert_eq!(counters.flows_ended.load(Ordering::Relaxed), 1);
        // tc sources carry no counters.
        let mut out = Vec::new();
        conv.convert(
            &rtt_record(SOURCE_TC_TCP_TS, flow, 100, 0, 0),
            &counters,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].source, SampleSource::TcTimestamp);
    }
}

/// Property tests of the ring-buffer records: whatever bytes arrive (a
/// kernel program of another version, a corrupted item), conversion never
/// panics, and a well-formed record converts to its fields.
#[cfg(test)]
mod proptests {
    use super::*;
    use agent_common::{RecordBody, RttBody, IPPROTO_TCP, KIND_RTT};
    use proptest::prelude::*;

    const RECORD: usize = std::mem::size_of::<Record>();

    fn bytes_of(rec: &Record) -> Vec<u8> {
        // SAFETY: Record has no padding (80 bytes of integers), so all of it is initialised.
        unsafe { std::slice::from_raw_parts((rec as *const Record).cast::<u8>(), RECORD) }.to_vec()
    }

    prop_compose! {
        fn flow()(
            local in any::<[u32; 4]>(),
            remote in any::<[u32; 4]>(),
            local_port in any::<u16>(),
            remote_port in any::<u16>(),
            family in prop_oneof![Just(AF_INET), Just(AF_INET6), any::<u8>()],
        ) -> Flow {
            Flow { local, remote, local_port, remote_port, family, proto: IPPROTO_TCP, _pad: [0; 2] }
        }
    }

    /// A record that shrinks and prints (Record has no Debug: its body is a union).
    #[derive(Clone, Copy)]
    struct Rec(Record);

    impl std::fmt::Debug for Rec {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let r = &self.0;
            f.debug_struct("Record")
                .field("kind", &r.kind)
                .field("source", &r.source)
                .field("ts_ns", &r.ts_ns)
                .field("flow", &r.flow)
                // SAFETY: every body variant is plain integers.
                .field("body", &unsafe { r.body.rtt })
                .finish()
        }
    }

    prop_compose! {
        fn record()(
            kind in prop_oneof![1..=3u8, any::<u8>()],
            source in prop_oneof![1..=4u8, any::<u8>()],
            ts_ns in any::<u64>(),
            flow in flow(),
            body in any::<[u64; 3]>(),
        ) -> Rec {
            let mut r = Record::new(kind, source, ts_ns, flow);
            r.body = RecordBody {
                rtt: RttBody {
                    rtt_ns: body[0],
                    srtt_ns: body[1],
                    data_segs_out: body[2] as u32,
                    total_retrans: (body[2] >> 32) as u32,
                },
            };
            Rec(r)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_items_convert_without_panicking(
            items in prop::collection::vec(
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..RECORD),
                    prop::collection::vec(any::<u8>(), RECORD..RECORD + 16),
                    record().prop_map(|r| bytes_of(&r.0)),
                ],
                0..8,
            ),
            tracepoint in any::<bool>(),
        ) {
            let events = convert_ring_items(items.iter().map(Vec::as_slice), tracepoint);
            // At most an RTT, a segment count and a retransmit count per whole record.
            let whole = items.iter().filter(|i| i.len() >= RECORD).count();
            prop_assert!(events.len() <= 3 * whole, "{} events from {whole} records", events.len());
            // Short items are dropped, never read past their end.
            let short: Vec<&[u8]> = items.iter().map(Vec::as_slice).filter(|i| i.len() < RECORD).collect();
            prop_assert!(convert_ring_items(short, tracepoint).is_empty());
        }

        #[test]
        fn records_read_back_from_their_bytes_at_any_alignment(Rec(rec) in record(), shift in 0..8usize, tail in 0..16usize) {
            let mut buf = vec![0xAA; shift];
            buf.extend_from_slice(&bytes_of(&rec));
            buf.extend(std::iter::repeat_n(0x55, tail));
            let back = record_from_bytes(&buf[shift..]).unwrap();
            prop_assert_eq!((back.kind, back.source, back.ts_ns), (rec.kind, rec.source, rec.ts_ns));
            prop_assert_eq!(back.flow, rec.flow);
            prop_assert_eq!(back.decode(), rec.decode());
            prop_assert!(record_from_bytes(&buf[shift..shift + RECORD - 1]).is_none());
        }

        #[test]
        fn sockops_rtt_records_become_their_fields(
            remote in any::<[u8; 4]>(),
            rtt_ns in any::<u64>(),
            segs in any::<u32>(),
            retrans in any::<u32>(),
            tracepoint in any::<bool>(),
        ) {
            let flow = Flow {
                remote: [u32::from_ne_bytes(remote), 0, 0, 0],
                family: AF_INET,
                proto: IPPROTO_TCP,
                ..Flow::default()
            };
            let mut rec = Record::new(KIND_RTT, SOURCE_SOCKOPS, 5, flow);
            rec.body = RecordBody { rtt: RttBody { rtt_ns, srtt_ns: 0, data_segs_out: segs, total_retrans: retrans } };
            let events = convert_ring_items([bytes_of(&rec).as_slice()], tracepoint);
            // A socket's first sample counts the retransmits before it (of
            // the handshake too): with any, it measured a recovery.
            let mut want = Vec::new();
            if retrans == 0 {
                want.push(ProbeEventKind::Rtt(Duration::from_nanos(rtt_ns)));
            }
            if segs > 0 {
                want.push(ProbeEventKind::SegmentsSent(segs));
            }
            if !tracepoint && retrans > 0 {
                want.push(ProbeEventKind::Retransmits(retrans));
            }
            prop_assert_eq!(events.iter().map(|e| e.kind.clone()).collect::<Vec<_>>(), want);
            let dest = IpAddr::V4(Ipv4Addr::from(remote));
            prop_assert!(events.iter().all(|e| e.dest == dest && e.source == SampleSource::SockOps));
        }

        #[test]
        fn unknown_families_and_kinds_yield_nothing(Rec(rec) in record(), family in 11..=255u8, kind in 4..=255u8) {
            let mut bad_family = rec;
            bad_family.flow.family = family;
            prop_assert!(convert_ring_items([bytes_of(&bad_family).as_slice()], false).is_empty());
            let mut bad_kind = rec;
            bad_kind.kind = kind;
            if bad_kind.flow.family != AF_INET && bad_kind.flow.family != AF_INET6 {
                bad_kind.flow.family = AF_INET;
            }
            prop_assert!(convert_ring_items([bytes_of(&bad_kind).as_slice()], false).is_empty());
        }
    }
}
