//! A lexical pass over a template's source that runs before tera parses it.
//!
//! tera's parser, its renderer and the drop of its syntax tree all recurse once per level of
//! nesting. A few kilobytes of `{% if %}` or `(` nesting, or one `{{ a + a + … }}` of ten
//! thousand terms, overflow a 2 MiB thread stack and abort the process (`catch_unwind` cannot
//! catch that). Counting is cheap and needs no tree, so the depth is checked here, on the text,
//! before any of that recursion can start.
//!
//! The scan over-approximates (every `-` counts as an operator, for instance): a refusal of an
//! odd but harmless template is acceptable, a recursion that tera could not survive is not.

/// `{% if %}`, `{% for %}`, `{% filter %}` … open inside each other, at most this deep.
pub const MAX_BLOCK_NESTING: usize = 16;
/// Parentheses and brackets open inside one tag, at most this deep. tera's grammar re-parses
/// a nested expression for each alternative it tries, so parse time grows exponentially with
/// this depth (ten nested calls took 16 s); real templates rarely go past three.
pub const MAX_EXPRESSION_NESTING: usize = 8;
/// Operators in one tag. tera nests `a + b + c` as `((a + b) + c)`: the tree is as deep as
/// the chain is long, and evaluating it recurses that deep.
pub const MAX_OPERATORS_PER_TAG: usize = 256;

/// Why a source was refused before parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `template-too-deep` or `template-too-complex`, as the review reports them.
    pub code: &'static str,
    pub line: usize,
    pub message: String,
}

const OPENERS: [&str; 6] = ["if", "for", "filter", "block", "macro", "raw"];
const CLOSERS: [&str; 5] = ["endif", "endfor", "endfilter", "endblock", "endmacro"];
const WORD_OPERATORS: [&str; 5] = ["and", "or", "not", "in", "is"];

/// Checks the nesting and operator limits of `source`; an unterminated tag ends the scan (tera
/// reports it as a syntax error).
pub fn prescan(source: &str) -> Result<(), Refusal> {
    let bytes = source.as_bytes();
    let mut scan = Scan { bytes, at: 0, blocks: 0 };
    while let Some(start) = scan.next_tag() {
        match &bytes[start..start + 2] {
            b"{#" => scan.skip_past(b"#}"),
            b"{%" => scan.statement(start)?,
            _ => scan.tag(start)?,
        }
    }
    Ok(())
}

struct Scan<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Block tags open around the current position.
    blocks: usize,
}

impl Scan<'_> {
    fn line(&self, at: usize) -> usize {
        self.bytes[..at.min(self.bytes.len())].iter().filter(|&&b| b == b'\n').count() + 1
    }

    /// Moves to the next `{{`, `{%` or `{#` and returns where it starts.
    fn next_tag(&mut self) -> Option<usize> {
        while self.at + 1 < self.bytes.len() {
            if self.bytes[self.at] == b'{' && matches!(self.bytes[self.at + 1], b'{' | b'%' | b'#') {
                let start = self.at;
                self.at += 2;
                return Some(start);
            }
            self.at += 1;
        }
        None
    }

    fn skip_past(&mut self, end: &[u8]) {
        match find(&self.bytes[self.at..], end) {
            Some(offset) => self.at += offset + end.len(),
            None => self.at = self.bytes.len(),
        }
    }

    /// A `{% … %}` tag: its first word opens or closes a block; `raw` skips to `endraw`.
    fn statement(&mut self, start: usize) -> Result<(), Refusal> {
        let rest = &self.bytes[self.at..];
        let skip = rest.iter().take_while(|b| **b == b'-' || b.is_ascii_whitespace()).count();
        let word: Vec<u8> =
            rest[skip..].iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').copied().collect();
        let word = String::from_utf8_lossy(&word);
        if OPENERS.contains(&word.as_ref()) {
            self.blocks += 1;
            if self.blocks > MAX_BLOCK_NESTING {
                return Err(Refusal {
                    code: "template-too-deep",
                    line: self.line(start),
                    message: format!("blocks are nested more than {MAX_BLOCK_NESTING} deep"),
                });
            }
        } else if CLOSERS.contains(&word.as_ref()) {
            self.blocks = self.blocks.saturating_sub(1);
        }
        self.tag(start)?;
        if word == "raw" {
            // Everything up to `{% endraw %}` is text, whatever it looks like. Without one, the
            // rest is too (and tera refuses the template): scanning on would be quadratic.
            self.blocks = self.blocks.saturating_sub(1);
            let mut closed = false;
            while let Some(offset) = find(&self.bytes[self.at..], b"endraw") {
                self.at += offset + b"endraw".len();
                let before = &self.bytes[..self.at - b"endraw".len()];
                let opened = before.iter().rev().find(|b| !(b.is_ascii_whitespace() || **b == b'-'));
                if opened == Some(&b'%') {
                    self.skip_past(b"%}");
                    closed = true;
                    break;
                }
            }
            if !closed {
                self.at = self.bytes.len();
            }
        }
        Ok(())
    }

    /// The inside of a `{{ … }}` or `{% … %}` tag, up to its end: bracket depth and operators.
    fn tag(&mut self, start: usize) -> Result<(), Refusal> {
        let close = if self.bytes[start + 1] == b'{' { b'}' } else { b'%' };
        let (mut depth, mut operators) = (0usize, 0usize);
        while self.at < self.bytes.len() {
            let byte = self.bytes[self.at];
            if byte == close && self.bytes.get(self.at + 1) == Some(&b'}') {
                self.at += 2;
                return Ok(());
            }
            match byte {
                b'"' | b'\'' | b'`' => {
                    // tera strings have no escapes: a string ends at the next same quote.
                    self.at += 1;
                    self.skip_past(&[byte]);
                    continue;
                }
                b'(' | b'[' => {
                    depth += 1;
                    if depth > MAX_EXPRESSION_NESTING {
                        return Err(Refusal {
                            code: "template-too-deep",
                            line: self.line(self.at),
                            message: format!(
                                "brackets and calls are nested more than {MAX_EXPRESSION_NESTING} deep in one tag"
                            ),
                        });
                    }
                }
                b')' | b']' => depth = depth.saturating_sub(1),
                b'+' | b'-' | b'*' | b'/' | b'%' | b'~' | b'<' | b'>' | b'=' | b'!' => operators += 1,
                b if b.is_ascii_alphabetic() || b == b'_' => {
                    let word_end = self.bytes[self.at..]
                        .iter()
                        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                        .map_or(self.bytes.len(), |offset| self.at + offset);
                    let word = &self.bytes[self.at..word_end];
                    if WORD_OPERATORS.iter().any(|operator| operator.as_bytes() == word) {
                        operators += 1;
                    }
                    self.at = word_end;
                    continue;
                }
                _ => {}
            }
            if operators > MAX_OPERATORS_PER_TAG {
                return Err(Refusal {
                    code: "template-too-complex",
                    line: self.line(start),
                    message: format!("a tag has more than {MAX_OPERATORS_PER_TAG} operators; split it with `set`"),
                });
            }
            self.at += 1;
        }
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}
