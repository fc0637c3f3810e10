//! Ring-buffer items as the eBPF probe's reader converts them into probe
//! events. The first byte picks the item size (64..=127 bytes, around the
//! 80-byte record) and whether the retransmit tracepoint is attached.
#![no_main]

use agent_probe::convert_ring_items;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let size = 64 + usize::from(first & 63);
    let items: Vec<&[u8]> = rest.chunks(size).collect();
    let whole = items.iter().filter(|i| i.len() >= 80).count();
    let events = convert_ring_items(items, first & 64 != 0);
    assert!(events.len() <= 3 * whole);
});
