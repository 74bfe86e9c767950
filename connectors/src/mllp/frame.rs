//! MLLP framing: a message is `0x0B <bytes> 0x1C 0x0D` on a TCP stream. [`FrameReader`] cuts a
//! stream into frames whatever the reads look like (a frame split over reads, several frames in
//! one read), keeps at most `max_bytes` of a frame in memory and reports a longer one as
//! [`Frame::Oversized`] once its end is seen. Bytes between frames are skipped.

/// Start of block.
pub const SB: u8 = 0x0B;
/// End of block (followed by a carriage return).
pub const EB: u8 = 0x1C;
pub const CR: u8 = 0x0D;
/// How much of an oversized frame is kept.
pub const HEAD: usize = 1024;

/// One frame cut from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The bytes between the start and end marks.
    Message(Vec<u8>),
    /// A frame longer than the limit: its length and its first bytes (up to [`HEAD`], enough
    /// for the MSH an ACK echoes); the rest was not kept.
    Oversized { bytes: usize, head: Vec<u8> },
}

/// Wrap a message in MLLP framing.
pub fn wrap(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(SB);
    out.extend_from_slice(message);
    out.extend_from_slice(&[EB, CR]);
    out
}

/// Cuts frames out of the bytes [`FrameReader::feed`] is given.
#[derive(Debug)]
pub struct FrameReader {
    max_bytes: usize,
    /// Inside a frame: its bytes so far (at most `max_bytes`).
    frame: Option<Vec<u8>>,
    /// Inside an oversized frame: its length so far and its first bytes.
    oversized: Option<(usize, Vec<u8>)>,
    done: std::collections::VecDeque<Frame>,
}

impl FrameReader {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            frame: None,
            oversized: None,
            done: Default::default(),
        }
    }

    /// Take in bytes as read from the stream.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if let Some((n, head)) = self.oversized.as_mut() {
                let end = data.iter().position(|&b| b == EB);
                let upto = end.unwrap_or(data.len());
                let room = HEAD.saturating_sub(head.len()).min(upto);
                head.extend_from_slice(&data[..room]);
                *n += upto;
                match end {
                    Some(end) => {
                        if let Some((bytes, head)) = self.oversized.take() {
                            self.done.push_back(Frame::Oversized { bytes, head });
                        }
                        data = &data[end + 1..];
                    }
                    None => return,
                }
            } else if let Some(frame) = self.frame.as_mut() {
                let end = data.iter().position(|&b| b == EB || b == SB);
                let take = end.unwrap_or(data.len());
                if frame.len() + take > self.max_bytes {
                    // Keep counting, stop keeping (but the head).
                    let mut head = self.frame.take().unwrap_or_default();
                    let so_far = head.len();
                    head.truncate(HEAD);
                    self.oversized = Some((so_far, head));
                    continue;
                }
                frame.extend_from_slice(&data[..take]);
                match end {
                    Some(i) if data[i] == EB => {
                        if let Some(f) = self.frame.take() {
                            self.done.push_back(Frame::Message(f));
                        }
                        data = &data[i + 1..];
                    }
                    // A start mark inside a frame: the sender began again; drop the partial.
                    Some(i) => {
                        self.frame = Some(Vec::new());
                        data = &data[i + 1..];
                    }
                    None => return,
                }
            } else {
                match data.iter().position(|&b| b == SB) {
                    Some(start) => {
                        self.frame = Some(Vec::new());
                        data = &data[start + 1..];
                    }
                    None => return, // between frames: CR after an end mark, keep-alive noise
                }
            }
        }
    }

    /// The next complete frame, if one was cut.
    pub fn next_frame(&mut self) -> Option<Frame> {
        self.done.pop_front()
    }

    /// Whether part of a frame has been read and not finished.
    pub fn mid_frame(&self) -> bool {
        self.frame.is_some() || self.oversized.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(r: &mut FrameReader) -> Vec<Frame> {
        std::iter::from_fn(|| r.next_frame()).collect()
    }

    #[test]
    fn split_frames_and_two_in_one_read_are_cut_alike() {
        let mut r = FrameReader::new(100);
        let mut stream = wrap(b"MSH|one");
        stream.extend(wrap(b"MSH|two"));
        r.feed(&stream[..4]);
        assert!(frames(&mut r).is_empty());
        assert!(r.mid_frame());
        r.feed(&stream[4..]);
        assert_eq!(
            frames(&mut r),
            vec![
                Frame::Message(b"MSH|one".to_vec()),
                Frame::Message(b"MSH|two".to_vec())
            ]
        );
        assert!(!r.mid_frame());
    }

    #[test]
    fn an_oversized_frame_is_counted_not_kept_and_the_next_frame_still_arrives() {
        let mut r = FrameReader::new(10);
        let mut stream = wrap(&[b'x'; 25]);
        stream.extend(wrap(b"MSH|ok"));
        for chunk in stream.chunks(7) {
            r.feed(chunk);
        }
        assert_eq!(
            frames(&mut r),
            vec![
                Frame::Oversized {
                    bytes: 25,
                    head: vec![b'x'; 25]
                },
                Frame::Message(b"MSH|ok".to_vec())
            ]
        );
    }

    #[test]
    fn noise_between_frames_and_a_restarted_frame_are_skipped() {
        let mut r = FrameReader::new(100);
        r.feed(b"\r\n junk");
        r.feed(&[SB]);
        r.feed(b"MSH|half");
        r.feed(&wrap(b"MSH|whole"));
        assert_eq!(frames(&mut r), vec![Frame::Message(b"MSH|whole".to_vec())]);
    }

    proptest! {
        /// However the stream is cut into reads, the same frames come out, none longer than
        /// the limit.
        #[test]
        fn reads_do_not_change_the_frames(
            msgs in proptest::collection::vec(proptest::collection::vec(0x20u8..0x7f, 0..40), 0..6),
            cuts in proptest::collection::vec(1usize..17, 1..20),
        ) {
            let stream: Vec<u8> = msgs.iter().flat_map(|m| wrap(m)).collect();
            let mut whole = FrameReader::new(30);
            whole.feed(&stream);
            let expected = frames(&mut whole);
            let mut pieces = FrameReader::new(30);
            let mut at = 0;
            for c in cuts.iter().cycle() {
                if at >= stream.len() { break; }
                let end = (at + c).min(stream.len());
                pieces.feed(&stream[at..end]);
                at = end;
            }
            prop_assert_eq!(frames(&mut pieces), expected.clone());
            prop_assert_eq!(expected.len(), msgs.len());
            for (f, m) in expected.iter().zip(&msgs) {
                match f {
                    Frame::Message(b) => prop_assert!(b == m && m.len() <= 30),
                    Frame::Oversized { bytes, head } => prop_assert!(
                        *bytes == m.len() && m.len() > 30 && m.starts_with(head)
                    ),
                }
            }
        }

        /// Arbitrary bytes never panic and never keep more than the limit.
        #[test]
        fn arbitrary_bytes_are_safe(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut r = FrameReader::new(16);
            r.feed(&data);
            while let Some(f) = r.next_frame() {
                if let Frame::Message(b) = f { prop_assert!(b.len() <= 16); }
            }
        }
    }
}
