//! Reading a job's stdout or stderr as raw bytes and cutting it into lines.
//!
//! Programs print whatever bytes they like, so nothing here assumes UTF-8. A line is what comes
//! before a `\n` (which is dropped; a `\r` before it is kept), plus whatever is left at the end
//! of the stream. Lines longer than [`MAX_LINE_BYTES`] are cut into chunks of that size, so a
//! program printing gigabytes without a newline cannot exhaust the worker's memory.

use bytes::Bytes;
use hodei_proto::v1::LogStream;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::batch::LineSender;

/// The longest line sent as one piece.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// Splits a byte stream into lines across arbitrary read boundaries.
#[derive(Debug, Default)]
pub struct LineSplitter {
    /// The start of a line whose end has not been read yet; never longer than `MAX_LINE_BYTES`.
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Appends the complete lines (and full-length chunks) found in `data` to `lines`.
    pub fn push(&mut self, mut data: &[u8], lines: &mut Vec<Bytes>) {
        while !data.is_empty() {
            let room = MAX_LINE_BYTES - self.partial.len();
            // A newline right after `room` bytes still ends a line of exactly the maximum length.
            let window = &data[..data.len().min(room + 1)];
            match window.iter().position(|&b| b == b'\n') {
                Some(newline) => {
                    lines.push(self.take_with(&data[..newline]));
                    data = &data[newline + 1..];
                }
                None if data.len() <= room => {
                    self.partial.extend_from_slice(data);
                    return;
                }
                None => {
                    lines.push(self.take_with(&data[..room]));
                    data = &data[room..];
                }
            }
        }
    }

    /// The unterminated last line, if the stream did not end with a newline.
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.partial.is_empty()).then(|| self.take_with(&[]))
    }

    fn take_with(&mut self, rest: &[u8]) -> Bytes {
        if self.partial.is_empty() {
            Bytes::copy_from_slice(rest)
        } else {
            self.partial.extend_from_slice(rest);
            Bytes::from(std::mem::take(&mut self.partial))
        }
    }
}

/// Reads `reader` to its end, sending each line as soon as it is complete. Returns early if
/// nobody takes lines any more (the job is being torn down).
pub async fn read_lines<R>(mut reader: R, stream: LogStream, lines: LineSender)
where
    R: AsyncRead + Unpin,
{
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    let mut splitter = LineSplitter::default();
    let mut complete = Vec::new();
    loop {
        let read = match reader.read(&mut buffer).await {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::warn!(?stream, error = %err, "cannot read the job's output; the rest is lost");
                break;
            }
        };
        splitter.push(&buffer[..read], &mut complete);
        for line in complete.drain(..) {
            if lines.send(stream, line).await.is_err() {
                return;
            }
        }
    }
    if let Some(line) = splitter.finish() {
        let _ = lines.send(stream, line).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(reads: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        for read in reads {
            splitter.push(read, &mut lines);
        }
        lines.extend(splitter.finish());
        lines.into_iter().map(|line| line.to_vec()).collect()
    }

    #[test]
    fn lines_are_cut_at_newlines_which_are_dropped() {
        assert_eq!(
            split(&[b"one\ntwo\n"]),
            vec![b"one".to_vec(), b"two".to_vec()]
        );
    }

    #[test]
    fn a_line_split_across_reads_is_joined() {
        assert_eq!(
            split(&[b"hel", b"lo\nwor", b"ld\n"]),
            vec![b"hello".to_vec(), b"world".to_vec()]
        );
    }

    #[test]
    fn empty_lines_are_lines_but_an_empty_stream_has_none() {
        assert_eq!(split(&[b"\n\n"]), vec![Vec::<u8>::new(), Vec::new()]);
        assert!(split(&[]).is_empty());
        assert!(split(&[b""]).is_empty());
    }

    #[test]
    fn a_final_unterminated_line_is_still_a_line() {
        assert_eq!(split(&[b"a\nlast"]), vec![b"a".to_vec(), b"last".to_vec()]);
    }

    #[test]
    fn crlf_keeps_the_carriage_return() {
        assert_eq!(split(&[b"dos\r\n"]), vec![b"dos\r".to_vec()]);
    }

    #[test]
    fn non_utf8_bytes_pass_through_unchanged() {
        let bytes: &[u8] = b"\xff\xfe caf\xe9 \x00\x80\n";
        assert_eq!(split(&[bytes]), vec![bytes[..bytes.len() - 1].to_vec()]);
    }

    #[test]
    fn a_line_longer_than_the_maximum_is_cut_into_maximum_sized_chunks() {
        let mut input = vec![b'x'; 2 * MAX_LINE_BYTES + 10];
        input.push(b'\n');
        input.extend_from_slice(b"next\n");
        // Fed in odd-sized reads so chunk boundaries do not coincide with reads.
        let reads: Vec<&[u8]> = input.chunks(7_919).collect();
        let lines = split(&reads);
        let lengths: Vec<usize> = lines.iter().map(Vec::len).collect();
        assert_eq!(lengths, vec![MAX_LINE_BYTES, MAX_LINE_BYTES, 10, 4]);
        assert_eq!(lines[3], b"next");
    }

    #[test]
    fn a_line_of_exactly_the_maximum_length_is_one_line() {
        let mut input = vec![b'y'; MAX_LINE_BYTES];
        input.push(b'\n');
        let lines = split(&[&input[..100], &input[100..]]);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        // Also when the line fills the buffer exactly and the newline comes in the next read.
        let lines = split(&[&input[..MAX_LINE_BYTES], b"\nz"]);
        let lengths: Vec<usize> = lines.iter().map(Vec::len).collect();
        assert_eq!(lengths, vec![MAX_LINE_BYTES, 1]);
    }

    #[tokio::test]
    async fn the_reader_sends_lines_of_a_pipe_in_order_including_the_unterminated_last() {
        let (sender, mut receiver) = crate::batch::line_channel();
        let input: &[u8] = b"first\nsecond\r\n\xffthird";
        read_lines(input, LogStream::Stderr, sender).await;
        let batch = receiver.next_batch().await.expect("a batch");
        let data: Vec<&[u8]> = batch.iter().map(|chunk| chunk.data.as_ref()).collect();
        assert_eq!(data, vec![&b"first"[..], b"second\r", b"\xffthird"]);
        assert!(
            batch
                .iter()
                .all(|chunk| chunk.stream == LogStream::Stderr as i32)
        );
        assert!(receiver.next_batch().await.is_none());
    }
}
