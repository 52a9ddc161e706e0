//! Streaming over the objects of a JSON array without holding the file: a byte-level
//! scanner that tracks nesting and strings and yields the raw bytes of each object
//! whose container is an array at a given depth (1 for a top-level array, 2 for an
//! array that is a value of the top-level object, such as Maloja's `scrobbles`).

use std::io::BufRead;

/// Largest single object; a bigger one is reported and skipped.
pub const MAX_OBJECT_BYTES: usize = 1 << 20;
/// Deepest nesting read. No export nests past a handful of levels; past this the file
/// is refused (the nesting stack is the only thing here that grows with the input).
pub const MAX_DEPTH: usize = 64;

pub struct ArrayObjects<R> {
    reader: R,
    st: State,
}

struct State {
    /// Refused (too deep): nothing more is read.
    refused: bool,
    depth: usize,
    stack: Vec<u8>,
    in_string: bool,
    escape: bool,
    capturing: bool,
    too_long: bool,
    cur: Vec<u8>,
    index: u64,
    started: bool,
    /// A key seen at the current level (the last string before a ':'), to match
    /// `only_key`.
    last_string: Vec<u8>,
    string_buf: Vec<u8>,
    only_key: Option<&'static [u8]>,
    key_of_array: Vec<Option<Vec<u8>>>,
}

/// One object: its index in the array (from 1) and its bytes, or why it cannot be read
/// (over `MAX_OBJECT_BYTES`, or cut off by the end of the file).
pub type Item = (u64, Result<Vec<u8>, &'static str>);

impl<R: BufRead> ArrayObjects<R> {
    /// Objects of a top-level array.
    pub fn top_level(reader: R) -> ArrayObjects<R> {
        ArrayObjects::new(reader, 1, None)
    }

    /// Objects of the array under `key` of the top-level object.
    pub fn under_key(reader: R, key: &'static str) -> ArrayObjects<R> {
        ArrayObjects::new(reader, 2, Some(key.as_bytes()))
    }

    fn new(reader: R, depth: usize, only_key: Option<&'static [u8]>) -> ArrayObjects<R> {
        ArrayObjects { reader, st: State::new(depth, only_key) }
    }
}

impl State {
    fn new(depth: usize, only_key: Option<&'static [u8]>) -> State {
        State {
            refused: false,
            depth,
            stack: Vec::new(),
            in_string: false,
            escape: false,
            capturing: false,
            too_long: false,
            cur: Vec::new(),
            index: 0,
            started: false,
            last_string: Vec::new(),
            string_buf: Vec::new(),
            only_key,
            key_of_array: Vec::new(),
        }
    }

    /// Whether the array we are directly inside is the one we want.
    fn in_target_array(&self) -> bool {
        self.stack.len() == self.depth
            && self.stack.last() == Some(&b'[')
            && match self.only_key {
                None => true,
                Some(k) => self.key_of_array.last().and_then(Option::as_deref) == Some(k),
            }
    }
}

impl<R: BufRead> Iterator for ArrayObjects<R> {
    type Item = std::io::Result<Item>;

    fn next(&mut self) -> Option<Self::Item> {
        let st = &mut self.st;
        if st.refused {
            return None;
        }
        loop {
            let buf = match self.reader.fill_buf() {
                Ok(b) => b,
                Err(e) => return Some(Err(e)),
            };
            if buf.is_empty() {
                if st.capturing {
                    st.capturing = false;
                    st.index += 1;
                    return Some(Ok((st.index, Err("the file ends inside this record (truncated)"))));
                }
                return None;
            }
            let mut start = 0;
            if !st.started {
                st.started = true;
                if buf.starts_with(b"\xEF\xBB\xBF") {
                    start = 3;
                }
            }
            let mut consumed = buf.len();
            let mut out = None;
            for (i, &c) in buf.iter().enumerate().skip(start) {
                if st.capturing && !st.too_long {
                    if st.cur.len() >= MAX_OBJECT_BYTES {
                        st.too_long = true;
                        st.cur = Vec::new();
                    } else {
                        st.cur.push(c);
                    }
                }
                if st.in_string {
                    if st.escape {
                        st.escape = false;
                    } else if c == b'\\' {
                        st.escape = true;
                    } else if c == b'"' {
                        st.in_string = false;
                        st.last_string = std::mem::take(&mut st.string_buf);
                    } else if st.string_buf.len() < 64 {
                        st.string_buf.push(c);
                    }
                    continue;
                }
                match c {
                    b'"' => {
                        st.in_string = true;
                        st.string_buf.clear();
                    }
                    b'{' | b'[' => {
                        if c == b'{' && !st.capturing && st.in_target_array() {
                            st.capturing = true;
                            st.too_long = false;
                            st.cur.clear();
                            st.cur.push(c);
                        }
                        if st.stack.len() >= MAX_DEPTH {
                            st.refused = true;
                            return Some(Err(std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                format!("JSON nested deeper than {MAX_DEPTH} levels: not an export"),
                            )));
                        }
                        if c == b'[' {
                            st.key_of_array.push(Some(std::mem::take(&mut st.last_string)));
                        }
                        st.stack.push(c);
                    }
                    b'}' | b']' => {
                        let open = st.stack.pop();
                        if open == Some(b'[') {
                            st.key_of_array.pop();
                        }
                        if c == b'}' && st.capturing && st.in_target_array() {
                            st.capturing = false;
                            st.index += 1;
                            let bytes =
                                if st.too_long { Err("record over 1 MiB") } else { Ok(std::mem::take(&mut st.cur)) };
                            out = Some((st.index, bytes));
                            consumed = i + 1;
                            break;
                        }
                    }
                    b',' => st.last_string.clear(),
                    _ => {}
                }
            }
            self.reader.consume(consumed);
            if let Some(item) = out {
                return Some(Ok(item));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(text: &str, key: Option<&'static str>) -> Vec<String> {
        let reader = std::io::BufReader::with_capacity(7, text.as_bytes());
        let it: Box<dyn Iterator<Item = std::io::Result<Item>>> = match key {
            None => Box::new(ArrayObjects::top_level(reader)),
            Some(k) => Box::new(ArrayObjects::under_key(reader, k)),
        };
        it.map(|r| String::from_utf8(r.expect("io").1.expect("fits")).expect("utf8")).collect()
    }

    #[test]
    fn a_truncated_last_record_is_reported() {
        let reader = std::io::BufReader::new(&b"[{\"a\": 1}, {\"b\": "[..]);
        let items: Vec<Item> = ArrayObjects::top_level(reader).map(|r| r.expect("io")).collect();
        assert_eq!(
            items,
            vec![(1, Ok(b"{\"a\": 1}".to_vec())), (2, Err("the file ends inside this record (truncated)"))]
        );
    }

    #[test]
    fn yields_each_object_of_the_array_with_strings_and_nesting() {
        let text = "\u{feff}[{\"a\":\"x}]{\\\"\",\"b\":[1,{\"c\":2}]}, {\"d\":{}}]";
        assert_eq!(objects(text, None), vec!["{\"a\":\"x}]{\\\"\",\"b\":[1,{\"c\":2}]}", "{\"d\":{}}"]);
    }

    #[test]
    fn deep_nesting_is_refused_without_growing() {
        let bomb = "[".repeat(10_000_000);
        let reader = std::io::BufReader::new(bomb.as_bytes());
        let first = ArrayObjects::top_level(reader).next().expect("an item");
        let e = first.expect_err("refused");
        assert!(e.to_string().contains("deeper than 64"), "{e}");
    }

    #[test]
    fn finds_the_array_under_a_key() {
        let text = r#"{"maloja": {"x": [{"no": 1}]}, "scrobbles": [{"time": 1}, {"time": 2}]}"#;
        assert_eq!(objects(text, Some("scrobbles")), vec![r#"{"time": 1}"#, r#"{"time": 2}"#]);
    }
}
