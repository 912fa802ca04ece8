//! An incremental RESP2 request parser (pure: bytes in, commands out).
//!
//! [`Parser::parse`] takes whatever bytes have arrived and returns how many it consumed and,
//! when a whole command is there, its arguments. A multibulk command may arrive over many
//! calls: the arguments read so far stay in the parser, and only the element being read waits in
//! the caller's buffer. Nothing is allocated beyond the limits: a bulk's bytes are allocated only
//! once all of them have arrived (and its length is checked first), a multibulk's element count
//! is checked before any allocation, and every argument is charged against a per-command byte
//! budget (its length plus a fixed overhead, so a million empty arguments are refused too).
//! Inline commands (`PING\r\n`, as typed into telnet or sent by `redis-cli` for some commands)
//! are split on spaces with Redis's quoting rules.

/// Limits on what one command may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk string (`$N`).
    pub max_bulk: usize,
    /// Most elements in one multibulk (`*N`).
    pub max_args: usize,
    /// Most bytes in one command: the sum of its arguments' lengths plus
    /// [`ARG_OVERHEAD`] per argument.
    pub max_command_bytes: usize,
    /// Longest inline command line.
    pub max_inline: usize,
}

/// What each argument costs on top of its bytes, against [`Limits::max_command_bytes`].
pub const ARG_OVERHEAD: usize = 32;

/// Longest `*N` / `$N` header line we wait for before calling it a protocol error.
const MAX_HEADER: usize = 32;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk: (1 << 20) + (64 << 10),
            max_args: 1 << 20,
            max_command_bytes: 64 << 20,
            max_inline: 64 << 10,
        }
    }
}

/// A protocol error: the connection is answered `-ERR Protocol error: {0}` and closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ProtocolError> {
    Err(ProtocolError(msg.into()))
}

/// A command's arguments, name first.
pub type Args = Vec<Vec<u8>>;

/// The parser's state between calls: the multibulk being read, if any.
#[derive(Debug, Default)]
pub struct Parser {
    limits: Limits,
    /// Elements still expected and the arguments read so far.
    partial: Option<(usize, Vec<Vec<u8>>, usize)>,
}

/// Finds `\r\n` in `buf`, returning the index of `\r`.
fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Parses a header line's number (`*N` or `$N` without the type byte). `None` = not a number.
fn parse_len(line: &[u8]) -> Option<i64> {
    if line.is_empty() || line.len() > 20 {
        return None;
    }
    let (neg, digits) = match line[0] {
        b'-' => (true, &line[1..]),
        _ => (false, line),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: i64 = 0;
    for d in digits {
        v = v.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

impl Parser {
    pub fn new(limits: Limits) -> Parser {
        Parser {
            limits,
            partial: None,
        }
    }

    /// Whether part of a command has been read (so an end of stream now cuts it).
    pub fn in_command(&self) -> bool {
        self.partial.is_some()
    }

    /// Reads from `buf`: returns the bytes consumed (drop them from the front of the buffer)
    /// and the next whole command, if one is complete. `(n, None)` means more bytes are needed;
    /// `n` may be non-zero even then. An empty command (`*0`, `*-1`, a blank inline line) is
    /// skipped, as Redis does.
    pub fn parse(&mut self, buf: &[u8]) -> Result<(usize, Option<Args>), ProtocolError> {
        let mut pos = 0;
        loop {
            if self.partial.is_none() {
                let Some(&first) = buf.get(pos) else {
                    return Ok((pos, None));
                };
                if first == b'*' {
                    let rest = &buf[pos + 1..];
                    let Some(end) = find_crlf(&rest[..rest.len().min(MAX_HEADER)]) else {
                        if rest.len() >= MAX_HEADER {
                            return err("too big mbulk count string");
                        }
                        return Ok((pos, None));
                    };
                    let n = parse_len(&rest[..end])
                        .ok_or_else(|| ProtocolError("invalid multibulk length".into()))?;
                    pos += 1 + end + 2;
                    if n <= 0 {
                        continue; // Redis ignores empty and null multibulks
                    }
                    let n = n as usize;
                    if n > self.limits.max_args
                        || n.saturating_mul(ARG_OVERHEAD) > self.limits.max_command_bytes
                    {
                        return err("invalid multibulk length");
                    }
                    self.partial = Some((n, Vec::with_capacity(n.min(1024)), 0));
                } else {
                    // Inline command.
                    let rest = &buf[pos..];
                    let scan = &rest[..rest.len().min(self.limits.max_inline + 1)];
                    let Some(end) = scan.iter().position(|&b| b == b'\n') else {
                        if rest.len() > self.limits.max_inline {
                            return err("too big inline request");
                        }
                        return Ok((pos, None));
                    };
                    let mut line = &rest[..end];
                    if line.last() == Some(&b'\r') {
                        line = &line[..line.len() - 1];
                    }
                    let args = split_inline(line)?;
                    pos += end + 1;
                    if args.is_empty() {
                        continue;
                    }
                    return Ok((pos, Some(args)));
                }
            }
            // Inside a multibulk: read bulk strings.
            let Some((remaining, args, bytes)) = self.partial.as_mut() else {
                continue;
            };
            while *remaining > 0 {
                let Some(&first) = buf.get(pos) else {
                    return Ok((pos, None));
                };
                if first != b'$' {
                    return err(format!(
                        "expected '$', got '{}'",
                        char::from(first).escape_default()
                    ));
                }
                let rest = &buf[pos + 1..];
                let Some(end) = find_crlf(&rest[..rest.len().min(MAX_HEADER)]) else {
                    if rest.len() >= MAX_HEADER {
                        return err("too big bulk count string");
                    }
                    return Ok((pos, None));
                };
                let len = match parse_len(&rest[..end]) {
                    Some(n) if n >= 0 && (n as u64) <= self.limits.max_bulk as u64 => n as usize,
                    _ => return err("invalid bulk length"),
                };
                let cost = len + ARG_OVERHEAD;
                if *bytes + cost > self.limits.max_command_bytes {
                    return err("command too large");
                }
                let body = pos + 1 + end + 2;
                if buf.len() < body + len + 2 {
                    return Ok((pos, None)); // wait for the whole bulk
                }
                if &buf[body + len..body + len + 2] != b"\r\n" {
                    return err("expected CRLF after bulk string");
                }
                args.push(buf[body..body + len].to_vec());
                *bytes += cost;
                *remaining -= 1;
                pos = body + len + 2;
            }
            let (_, args, _) = self.partial.take().unwrap_or_default();
            return Ok((pos, Some(args)));
        }
    }
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Splits an inline command as Redis's `sdssplitargs` does: spaces separate arguments;
/// `"..."` takes `\n \r \t \b \a \\ \" \xHH` escapes; `'...'` takes `\'`; a closing quote must
/// be followed by a space or the end.
pub fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut args = Vec::new();
    let mut i = 0;
    let n = line.len();
    loop {
        while i < n && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == n {
            return Ok(args);
        }
        let mut cur = Vec::new();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            if in_dq {
                if i >= n {
                    return err("unbalanced quotes in request");
                }
                let c = line[i];
                if c == b'\\'
                    && i + 3 < n
                    && line[i + 1] == b'x'
                    && hex_val(line[i + 2]).is_some()
                    && hex_val(line[i + 3]).is_some()
                {
                    let hi = hex_val(line[i + 2]).unwrap_or(0);
                    let lo = hex_val(line[i + 3]).unwrap_or(0);
                    cur.push(hi * 16 + lo);
                    i += 3;
                } else if c == b'\\' && i + 1 < n {
                    i += 1;
                    cur.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                } else if c == b'"' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return err("unbalanced quotes in request");
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else if in_sq {
                if i >= n {
                    return err("unbalanced quotes in request");
                }
                let c = line[i];
                if c == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    i += 1;
                    cur.push(b'\'');
                } else if c == b'\'' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return err("unbalanced quotes in request");
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else {
                if i >= n || line[i].is_ascii_whitespace() {
                    break;
                }
                match line[i] {
                    b'"' => in_dq = true,
                    b'\'' => in_sq = true,
                    c => cur.push(c),
                }
            }
            i += 1;
        }
        args.push(cur);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_bulk: 100,
            max_args: 10,
            max_command_bytes: 10 * ARG_OVERHEAD + 200,
            max_inline: 64,
        }
    }

    /// Feeds `input` in pieces of `chunk` bytes (the way reads arrive) and collects every
    /// command, or the first protocol error.
    fn feed(input: &[u8], chunk: &[usize]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut p = Parser::new(limits());
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut at = 0;
        let mut pieces = chunk.iter().copied().chain(std::iter::repeat(usize::MAX));
        while at < input.len() {
            let step = pieces.next().unwrap_or(usize::MAX).min(input.len() - at);
            buf.extend_from_slice(&input[at..at + step]);
            at += step;
            loop {
                let (used, cmd) = p.parse(&buf)?;
                buf.drain(..used);
                match cmd {
                    Some(c) => out.push(c),
                    None => break,
                }
            }
        }
        Ok(out)
    }

    fn args(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn split_at_every_byte_gives_the_same_commands() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\na\r\nb\0\r\n*1\r\n$4\r\nPING\r\nECHO \"x y\"\r\n*0\r\n*2\r\n$3\r\nGET\r\n$0\r\n\r\n";
        let want = vec![
            vec![b"SET".to_vec(), b"k".to_vec(), b"a\r\nb\0".to_vec()],
            args(&["PING"]),
            args(&["ECHO", "x y"]),
            vec![b"GET".to_vec(), Vec::new()],
        ];
        assert_eq!(feed(input, &[]).unwrap(), want);
        for split in 0..=input.len() {
            assert_eq!(feed(input, &[split]).unwrap(), want, "split at {split}");
        }
        // One byte at a time.
        assert_eq!(feed(input, &[1; 200]).unwrap(), want);
    }

    #[test]
    fn inline_commands_and_quotes() {
        assert_eq!(
            feed(b"set a 'b c'\n  \r\nget \"\\x41\\n\"\r\n", &[]).unwrap(),
            vec![args(&["set", "a", "b c"]), args(&["get", "A\n"])]
        );
        assert_eq!(
            feed(b"get \"abc\r\n", &[]).unwrap_err().0,
            "unbalanced quotes in request"
        );
        assert_eq!(
            feed(b"get \"a\"b\r\n", &[]).unwrap_err().0,
            "unbalanced quotes in request"
        );
        let long = vec![b'a'; 100];
        assert_eq!(feed(&long, &[]).unwrap_err().0, "too big inline request");
    }

    #[test]
    fn protocol_errors() {
        let e = |input: &[u8]| feed(input, &[]).unwrap_err().0;
        assert_eq!(e(b"*x\r\n"), "invalid multibulk length");
        assert_eq!(e(b"*11\r\n"), "invalid multibulk length");
        assert_eq!(e(b"*99999999999999999999\r\n"), "invalid multibulk length");
        assert_eq!(e(b"*1\r\n$-1\r\n"), "invalid bulk length");
        assert_eq!(e(b"*1\r\n$101\r\n"), "invalid bulk length");
        assert_eq!(e(b"*1\r\n$9223372036854775807\r\n"), "invalid bulk length");
        assert_eq!(e(b"*1\r\n$abc\r\n"), "invalid bulk length");
        assert_eq!(e(b"*1\r\n:1\r\n"), "expected '$', got ':'");
        assert_eq!(e(b"*1\r\n*1\r\n"), "expected '$', got '*'");
        assert_eq!(e(b"*1\r\n$1\r\nabc\r\n"), "expected CRLF after bulk string");
        assert_eq!(e(&[b'*'; 40]), "too big mbulk count string");
        let mut long = b"*1\r\n$".to_vec();
        long.extend_from_slice(&[b'1'; 40]);
        assert_eq!(e(&long), "too big bulk count string");
        // Ten arguments of 100 bytes pass the count and bulk limits but not the byte budget.
        let mut big = b"*10\r\n".to_vec();
        for _ in 0..10 {
            big.extend_from_slice(b"$100\r\n");
            big.extend_from_slice(&[b'x'; 100]);
            big.extend_from_slice(b"\r\n");
        }
        assert_eq!(e(&big), "command too large");
        // Null and empty multibulks are skipped.
        assert_eq!(
            feed(b"*-1\r\n*0\r\nPING\r\n", &[]).unwrap(),
            vec![args(&["PING"])]
        );
    }

    #[test]
    fn an_unterminated_bulk_waits_and_allocates_nothing() {
        let mut p = Parser::new(limits());
        assert_eq!(
            p.parse(b"*2\r\n$3\r\nGET\r\n$100\r\nab").unwrap(),
            (13, None)
        );
        assert!(p.in_command());
        // The caller keeps only the element being read.
        assert_eq!(p.parse(b"$100\r\nab").unwrap(), (0, None));
        // A huge declared multibulk does not reserve its count.
        let mut p = Parser::new(Limits::default());
        assert_eq!(p.parse(b"*1000000\r\n").unwrap(), (10, None));
        let cap = p
            .partial
            .as_ref()
            .map(|(_, a, _)| a.capacity())
            .unwrap_or(0);
        assert!(cap <= 1024, "{cap}");
    }
}
