//! Statement fingerprints: SQL text with every literal replaced, for metric labels and logs.

/// The longest fingerprint kept, in bytes; longer ones end in `…`.
pub const MAX_FINGERPRINT_LEN: usize = 160;

/// Normalises `sql` into a fingerprint: string, dollar-quoted and numeric literals become `?`,
/// a run of literals in a list (`IN (1, 2, 3)`) becomes one `?, …`, comments are dropped,
/// whitespace is collapsed and the result is cut at [`MAX_FINGERPRINT_LEN`] bytes. Bind
/// parameters (`$1`) stay as they are: their values are never part of the SQL text.
///
/// # Example
/// ```
/// use arq_tenancy::db::fingerprint;
///
/// assert_eq!(
///     fingerprint("SELECT * FROM t  WHERE name = 'alice' AND id IN (1, 2, 3) -- hi\n AND x = $1"),
///     "SELECT * FROM t WHERE name = ? AND id IN (?, …) AND x = $1"
/// );
/// ```
pub fn fingerprint(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len().min(MAX_FINGERPRINT_LEN + 4));
    let mut i = 0;
    // Whether the previous token was a literal placeholder, and whether a `, ` list of them
    // has already been collapsed.
    let mut last_literal = false;
    let mut collapsed = false;
    let mut pending_space = false;
    let push = |out: &mut String, s: &str, pending_space: &mut bool| {
        if *pending_space && !out.is_empty() {
            out.push(' ');
        }
        *pending_space = false;
        out.push_str(s);
    };
    while i < b.len() && out.len() <= MAX_FINGERPRINT_LEN {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                pending_space = true;
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                pending_space = true;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i = (i + 2).min(b.len());
                pending_space = true;
            }
            b'\'' => {
                i = skip_quoted(b, i, b'\'');
                literal(
                    &mut out,
                    &mut last_literal,
                    &mut collapsed,
                    &mut pending_space,
                );
                continue;
            }
            b'"' => {
                let end = skip_quoted(b, i, b'"');
                push(&mut out, &sql[i..end], &mut pending_space);
                i = end;
                last_literal = false;
                collapsed = false;
            }
            b'$' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i > start + 1 {
                    // A bind parameter.
                    push(&mut out, &sql[start..i], &mut pending_space);
                    last_literal = false;
                    collapsed = false;
                    continue;
                }
                // A dollar-quoted string: $$...$$ or $tag$...$tag$.
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                if b.get(i) == Some(&b'$') {
                    let tag = &sql[start..=i];
                    i = sql[i + 1..]
                        .find(tag)
                        .map_or(b.len(), |p| i + 1 + p + tag.len());
                    literal(
                        &mut out,
                        &mut last_literal,
                        &mut collapsed,
                        &mut pending_space,
                    );
                } else {
                    push(&mut out, &sql[start..i], &mut pending_space);
                }
            }
            b'0'..=b'9' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    i += 1;
                }
                literal(
                    &mut out,
                    &mut last_literal,
                    &mut collapsed,
                    &mut pending_space,
                );
            }
            b',' if last_literal => {
                // Look past the comma: another literal continues the list.
                let mut j = i + 1;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                let next_is_literal = matches!(b.get(j), Some(b'\'' | b'0'..=b'9'));
                if next_is_literal {
                    if !collapsed {
                        out.push_str(", …");
                        collapsed = true;
                    }
                    // Swallow the comma and the next literal.
                    let end = if b[j] == b'\'' {
                        skip_quoted(b, j, b'\'')
                    } else {
                        let mut k = j;
                        while k < b.len()
                            && (b[k].is_ascii_alphanumeric() || b[k] == b'.' || b[k] == b'_')
                        {
                            k += 1;
                        }
                        k
                    };
                    i = end;
                    pending_space = false;
                } else {
                    push(&mut out, ",", &mut pending_space);
                    i += 1;
                    last_literal = false;
                    collapsed = false;
                }
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || !c.is_ascii() => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || !b[i].is_ascii())
                {
                    i += 1;
                }
                // E'...', B'...', X'...', U&'...': the prefix belongs to the literal.
                let word = &sql[start..i];
                if b.get(i) == Some(&b'\'')
                    && matches!(word, "E" | "e" | "B" | "b" | "X" | "x" | "N" | "n")
                {
                    i = skip_quoted(b, i, b'\'');
                    literal(
                        &mut out,
                        &mut last_literal,
                        &mut collapsed,
                        &mut pending_space,
                    );
                    continue;
                }
                push(&mut out, word, &mut pending_space);
                last_literal = false;
                collapsed = false;
            }
            _ => {
                let end = i + 1;
                push(&mut out, &sql[i..end], &mut pending_space);
                i = end;
                last_literal = false;
                collapsed = false;
            }
        }
    }
    // Drop spaces the punctuation rules above left before `)`, `,` and `;`, and after `(`.
    let mut tidy = out
        .replace("( ", "(")
        .replace(" )", ")")
        .replace(" ,", ",")
        .replace(" ;", ";");
    while tidy.ends_with(';') || tidy.ends_with(' ') {
        tidy.pop();
    }
    if tidy.len() > MAX_FINGERPRINT_LEN || i < b.len() {
        let mut cut = MAX_FINGERPRINT_LEN.min(tidy.len());
        while !tidy.is_char_boundary(cut) {
            cut -= 1;
        }
        tidy.truncate(cut);
        tidy.push('…');
    }
    tidy
}

fn literal(out: &mut String, last: &mut bool, collapsed: &mut bool, pending_space: &mut bool) {
    if *pending_space && !out.is_empty() {
        out.push(' ');
    }
    *pending_space = false;
    out.push('?');
    *last = true;
    *collapsed = false;
}

/// The index just past the quoted token starting at `start` (a doubled quote is an escape).
fn skip_quoted(b: &[u8], start: usize, quote: u8) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        // Backslash escapes only matter in E'' strings; skipping one extra byte there is harmless.
        if b[i] == b'\\' && quote == b'\'' {
            i += 1;
        }
        i += 1;
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn literals_are_replaced_and_parameters_kept() {
        assert_eq!(
            fingerprint("select payload from items where id = $1"),
            "select payload from items where id = $1"
        );
        assert_eq!(
            fingerprint("UPDATE t SET secret = 'hunter2', n = 42.5e3 WHERE id = 7;"),
            "UPDATE t SET secret = ?, n = ? WHERE id = ?"
        );
        assert_eq!(
            fingerprint("select $$it's $tag$ secret$$, $x$ a $x$, E'\\'q', x'ff'"),
            "select ?, ?, ?, ?"
        );
        assert_eq!(fingerprint("select 'a''b'"), "select ?");
        assert_eq!(
            fingerprint("select \"Col 1\" from t1"),
            "select \"Col 1\" from t1"
        );
        assert_eq!(
            fingerprint("insert into t values (1, 'x', 3), (4, 'y', 6)"),
            "insert into t values (?, …), (?, …)"
        );
        assert_eq!(fingerprint("select pg_sleep(0.2)"), "select pg_sleep(?)");
        assert_eq!(fingerprint("/* c */ select  1 /* d */"), "select ?");
    }

    #[test]
    fn long_statements_are_cut_on_a_char_boundary() {
        let sql = format!("select {} from t", "é".repeat(200));
        let fp = fingerprint(&sql);
        assert!(fp.len() <= super::MAX_FINGERPRINT_LEN + '…'.len_utf8());
        assert!(fp.ends_with('…'));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_never_keeps_a_quoted_value(s in ".{0,200}", v in "[a-z]{12}") {
            let _ = fingerprint(&s);
            let fp = fingerprint(&format!("select * from t where a = '{v}' and b = $1"));
            proptest::prop_assert!(!fp.contains(&v));
        }
    }
}
