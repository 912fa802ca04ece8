//! Redis's glob patterns (`MATCH` of SCAN, KEYS): `*`, `?`, `[abc]`, `[^a-z]`, `\x`.

/// Matches one pattern element at `p` against byte `c`; returns (matched, next pattern index).
fn one(pat: &[u8], mut p: usize, c: u8) -> (bool, usize) {
    match pat[p] {
        b'?' => (true, p + 1),
        b'\\' if p + 1 < pat.len() => (pat[p + 1] == c, p + 2),
        b'[' => {
            p += 1;
            let negate = pat.get(p) == Some(&b'^');
            if negate {
                p += 1;
            }
            let mut hit = false;
            loop {
                match pat.get(p) {
                    None => break, // unterminated class: Redis treats the end as `]`
                    Some(b']') => {
                        p += 1;
                        break;
                    }
                    Some(b'\\') if p + 1 < pat.len() => {
                        hit |= pat[p + 1] == c;
                        p += 2;
                    }
                    Some(&lo) if pat.get(p + 1) == Some(&b'-') && p + 2 < pat.len() => {
                        let hi = pat[p + 2];
                        let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                        hit |= (lo..=hi).contains(&c);
                        p += 3;
                    }
                    Some(&x) => {
                        hit |= x == c;
                        p += 1;
                    }
                }
            }
            (hit != negate, p)
        }
        x => (x == c, p + 1),
    }
}

/// Whether `s` matches the glob `pat` (bytes; O(len(pat) × len(s)) at worst).
pub fn matches(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, string index).
    let mut star: Option<(usize, usize)> = None;
    loop {
        if p < pat.len() && pat[p] == b'*' {
            while p < pat.len() && pat[p] == b'*' {
                p += 1;
            }
            star = Some((p, i));
            continue;
        }
        if i == s.len() {
            if p == pat.len() {
                return true;
            }
        } else if p < pat.len() {
            let (ok, next) = one(pat, p, s[i]);
            if ok {
                p = next;
                i += 1;
                continue;
            }
        }
        // Mismatch: let the last star eat one more byte.
        match star {
            Some((sp, si)) if si < s.len() => {
                star = Some((sp, si + 1));
                p = sp;
                i = si + 1;
            }
            _ => return false,
        }
    }
}

/// The literal prefix every match of `pat` starts with (to narrow a scan).
pub fn literal_prefix(pat: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut p = 0;
    while p < pat.len() {
        match pat[p] {
            b'*' | b'?' | b'[' => break,
            b'\\' if p + 1 < pat.len() => {
                out.push(pat[p + 1]);
                p += 2;
            }
            b'\\' => break,
            c => {
                out.push(c);
                p += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let m = |p: &str, s: &str| matches(p.as_bytes(), s.as_bytes());
        assert!(m("*", ""));
        assert!(m("*", "abc"));
        assert!(m("a*c", "abbbc"));
        assert!(!m("a*c", "abbb"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-c]llo", "hbllo"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("user:*:name", "user:42:name"));
        assert!(!m("user:*:name", "user:42:age"));
        assert!(!m("*a*a*a*a*b", &"a".repeat(30)));
        assert_eq!(literal_prefix(b"user:\\*x*"), b"user:*x".to_vec());
        assert_eq!(literal_prefix(b"*"), Vec::<u8>::new());
    }
}
