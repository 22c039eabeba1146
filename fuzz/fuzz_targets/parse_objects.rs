//! Every parser that reads repository bytes must return an error, never panic, on any input.
#![no_main]
use arca::repo::format::*;
use arca::repo::pack::parse_frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_index(data);
    let _ = decode_pack_header(data);
    let _ = decode_tree(data);
    if let Ok(entries) = arca::repo::tree_bin::decode_tree(data) {
        assert_eq!(arca::repo::tree_bin::encode_tree(&entries), data);
    }
    let _ = parse_frame(data);
    let _ = decode_payload(data, data.len());
    let _ = serde_json::from_slice::<PointRecord>(data);
    let _ = serde_json::from_slice::<ChainRecord>(data);
    let _ = serde_json::from_slice::<EscrowRecord>(data);
});
