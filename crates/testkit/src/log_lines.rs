//! Output lines as the end-to-end suites read them back from `SubscribeLogs`.

use hodei_proto::v1 as pb;

/// The text of each line, lossily decoded.
pub fn texts(lines: &[pb::LogLine]) -> Vec<String> {
    lines
        .iter()
        .map(|l| String::from_utf8_lossy(&l.data).into_owned())
        .collect()
}

/// Sequence numbers must be 1, 2, 3, ... without gap or duplicate.
#[track_caller]
pub fn assert_contiguous(lines: &[pb::LogLine]) {
    let sequences: Vec<u64> = lines.iter().map(|l| l.sequence).collect();
    let expected: Vec<u64> = (1..=lines.len() as u64).collect();
    assert_eq!(sequences, expected, "sequences have a gap or a duplicate");
}
