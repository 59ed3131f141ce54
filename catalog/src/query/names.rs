//! Matching names: the trigram index and the SQL functions that test a whole pattern.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};

use super::Sql;
use crate::Catalog;
use crate::error::Result;

/// The longest run of literal characters of a glob, for the trigram prefilter.
pub(super) fn glob_literal(glob: &str) -> String {
    let (mut best, mut cur) = (String::new(), String::new());
    let flush = |best: &mut String, cur: &mut String| {
        if cur.chars().count() > best.chars().count() {
            *best = std::mem::take(cur);
        }
        cur.clear();
    };
    let (mut depth, mut escaped) = (0u32, false);
    for c in glob.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                cur.push(c);
            }
            continue;
        }
        match c {
            '\\' => escaped = true,
            '[' | '{' => {
                flush(&mut best, &mut cur);
                depth += 1;
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            '*' | '?' => flush(&mut best, &mut cur),
            _ if depth == 0 => cur.push(c),
            _ => {}
        }
    }
    flush(&mut best, &mut cur);
    best
}

/// One character case-folded for the trigram counts (an approximation of the FTS5 index's own
/// folding, which matters only for choosing trigrams, never for results).
pub(super) fn fold(c: char) -> char {
    let mut l = c.to_lowercase();
    match (l.next(), l.next()) {
        (Some(x), None) => x,
        _ => c,
    }
}

/// The trigrams of a name or pattern, folded, in order (with repeats).
pub(crate) fn trigrams(s: &str) -> Vec<[char; 3]> {
    let chars: Vec<char> = s.chars().map(fold).collect();
    chars.windows(3).map(|w| [w[0], w[1], w[2]]).collect()
}

/// How many trigrams of a pattern go to the FTS5 index: each costs time in proportion to the
/// names holding it, and three well-chosen ones pin a pattern down.
pub(super) const TRIGRAMS_PER_QUERY: usize = 3;

/// What [`Catalog::candidates`] found.
pub(super) enum Candidates {
    Few,
    Common,
    Many,
}

/// The clause that reads the names [`Catalog::candidates`] found.
pub(super) const NAMES_FOUND: &str = "v.name IN (SELECT id FROM temp.names_found)";

/// SQL functions the queries use: `rw_glob(pattern, name)` and `rw_icontains(name, lowered)`.
pub(crate) fn register_functions(conn: &Connection) -> Result<()> {
    use rusqlite::functions::FunctionFlags;
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("rw_glob", 2, flags, |ctx| {
        let matcher =
            ctx.get_or_create_aux(0, |v| -> std::result::Result<_, Box<dyn std::error::Error + Send + Sync>> {
                let pat = v.as_str()?;
                Ok(globset::GlobBuilder::new(pat).case_insensitive(true).build()?.compile_matcher())
            })?;
        let name = ctx.get_raw(1).as_str().unwrap_or("");
        Ok(matcher.is_match(name))
    })?;
    conn.create_scalar_function("rw_icontains", 2, flags, |ctx| {
        let name = ctx.get_raw(0).as_str().unwrap_or("");
        let needle = ctx.get_raw(1).as_str().unwrap_or("");
        if name.is_ascii() && needle.is_ascii() {
            // The same answer without a lowered copy per row (`needle` is lowercase already).
            let (name, needle) = (name.as_bytes(), needle.as_bytes());
            return Ok(needle.is_empty() || name.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle)));
        }
        Ok(name.to_lowercase().contains(needle))
    })?;
    Ok(())
}

/// A pattern whose trigrams are in at most this many names has them tested one by one.
pub(super) const MAX_CANDIDATES: i64 = 20_000;

/// A pattern that matches at most this many names is answered through them at once; one that
/// matches more is first tried by a scan in result order (it is common).
pub(super) const FEW_NAMES: i64 = 10_000;

/// A test of a name in SQL over `n.name`, `{}` where its parameter goes, and that parameter.
pub(super) struct NameTest {
    pub(super) sql: &'static str,
    pub(super) arg: Value,
}

impl Catalog {
    /// The name test in its two forms: per row, for a scan in result order, and through the
    /// trigram index of `lit` (the pattern's literal text), for selective patterns; the function
    /// then tests the whole pattern, as the per-row form does, to the letter. True when the
    /// matching names are in `temp.names_found`; `selectivity` drops to 0 when they are few.
    pub(super) fn push_name_test(
        &self,
        lit: &str,
        test: NameTest,
        sql: &mut Sql,
        per_row: &mut Sql,
        selectivity: &mut f64,
    ) -> Result<bool> {
        let with = |param: &str| test.sql.replace("{}", param);
        per_row.push(&with("?"), [test.arg.clone()]);
        let Some(expr) = self.trigram_plan(lit)? else {
            sql.push(&format!("v.name IN (SELECT n.id FROM names n WHERE {})", with("?")), [test.arg]);
            return Ok(false);
        };
        match self.candidates(&expr, &with("?1"), &test.arg)? {
            Candidates::Few => {
                *selectivity = 0.0;
                sql.push(NAMES_FOUND, []);
                Ok(true)
            }
            Candidates::Common => {
                sql.push(NAMES_FOUND, []);
                Ok(true)
            }
            Candidates::Many => {
                sql.push(
                    &format!(
                        "v.name IN (SELECT n.id FROM names n WHERE n.id IN (SELECT rowid FROM names_fts WHERE names_fts MATCH ?) AND {})",
                        with("?")
                    ),
                    [Value::Text(expr), test.arg],
                );
                Ok(false)
            }
        }
    }

    /// Narrow the names through the trigram index (`expr`, an FTS5 query) and `test` (the whole
    /// pattern, with `pattern` as `?1`). When the index finds at most [`MAX_CANDIDATES`] names,
    /// the ones that really match go to `temp.names_found` ([`NAMES_FOUND`] reads them): `Few`
    /// if there are at most [`FEW_NAMES`] of them, `Common` if more. `Many`: the index found
    /// more, nothing was stored.
    pub(super) fn candidates(&self, expr: &str, test: &str, pattern: &Value) -> Result<Candidates> {
        self.conn.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS name_hits(id INTEGER PRIMARY KEY);
             CREATE TEMP TABLE IF NOT EXISTS names_found(id INTEGER PRIMARY KEY);
             DELETE FROM temp.name_hits; DELETE FROM temp.names_found;",
        )?;
        let n = self
            .conn
            .prepare_cached("INSERT INTO temp.name_hits SELECT rowid FROM names_fts WHERE names_fts MATCH ?1 LIMIT ?2")?
            .execute(rusqlite::params![expr, MAX_CANDIDATES + 1])?;
        if n as i64 > MAX_CANDIDATES {
            return Ok(Candidates::Many);
        }
        let found = self
            .conn
            .prepare_cached(&format!(
                "INSERT INTO temp.names_found SELECT n.id FROM temp.name_hits t CROSS JOIN names n ON n.id = t.id WHERE {test}"
            ))?
            .execute([pattern])?;
        Ok(if found as i64 <= FEW_NAMES { Candidates::Few } else { Candidates::Common })
    }

    /// An FTS5 query for rare trigrams of `lit` that together pin it down; `None` when `lit` is
    /// shorter than a trigram. The trigrams are quoted as typed: the index folds case itself.
    ///
    /// By the counts in `trigrams`: the rarest first, which is often the one across a separator
    /// (`t-r` of `budget-report`: each word is common, the pair is rare); then the rarest of a
    /// word not yet covered (`bud`, `epo`), since the trigrams of one word say little more than
    /// one of them; trigrams that overlap a chosen one only when nothing else is left.
    pub(super) fn trigram_plan(&self, lit: &str) -> Result<Option<String>> {
        let chars: Vec<char> = lit.chars().collect();
        let folded = trigrams(lit);
        if folded.is_empty() || folded.len() + 2 != chars.len() {
            return Ok(None);
        }
        // The word (run of letters and digits) each character is in.
        let mut word = Vec::with_capacity(chars.len());
        let mut w = 0;
        for (i, c) in chars.iter().enumerate() {
            if c.is_alphanumeric() {
                word.push(Some(w));
            } else {
                word.push(None);
                if i > 0 && word[i - 1].is_some() {
                    w += 1;
                }
            }
        }
        let mut count = self.conn.prepare_cached("SELECT names FROM trigrams WHERE tri = ?1")?;
        // (names holding it, position, word it lies in)
        let mut left: Vec<(i64, usize, Option<usize>)> = Vec::new();
        for (i, t) in folded.iter().enumerate() {
            if folded[..i].contains(t) {
                continue;
            }
            let n: Option<i64> = count.query_row([t.iter().collect::<String>()], |r| r.get(0)).optional()?;
            let inside =
                if word[i].is_some() && word[i] == word[i + 1] && word[i] == word[i + 2] { word[i] } else { None };
            left.push((n.unwrap_or(0), i, inside));
        }
        let mut chosen: Vec<(i64, usize, Option<usize>)> = Vec::new();
        while chosen.len() < TRIGRAMS_PER_QUERY && !left.is_empty() {
            let key = |t: &(i64, usize, Option<usize>)| {
                let overlaps = chosen.iter().any(|c| c.1.abs_diff(t.1) < 3);
                let covered = t.2.is_some() && chosen.iter().any(|c| c.2 == t.2);
                (overlaps, covered, t.0, t.1)
            };
            let best = (0..left.len()).min_by_key(|&k| key(&left[k])).expect("not empty");
            chosen.push(left.swap_remove(best));
        }
        Ok(Some(
            chosen
                .iter()
                .map(|&(_, i, _)| format!("\"{}\"", chars[i..i + 3].iter().collect::<String>().replace('"', "\"\"")))
                .collect::<Vec<_>>()
                .join(" AND "),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_literals() {
        assert_eq!(glob_literal("*.txt"), ".txt");
        assert_eq!(glob_literal("report-*-final.doc"), "-final.doc");
        assert_eq!(glob_literal("[ab]cd*"), "cd");
        assert_eq!(glob_literal("{foo,barbaz}qq*"), "qq");
        assert_eq!(glob_literal("a\\*bcd"), "a*bcd");
    }
}
