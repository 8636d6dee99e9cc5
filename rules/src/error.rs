//! Errors of the rules crate: every problem in a rule set, each with its `FILE:LINE:COL`.

use std::fmt::{self, Write as _};
use std::path::PathBuf;

/// One problem found in a rule file, printed as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    /// The rule file, as it was named to the loader.
    pub file: PathBuf,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub col: u32,
    /// What is wrong and, where there is one, the fix.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.col)?;
        // A message quotes keys and values from the file, which may hold line breaks or
        // terminal escapes: written escaped, each problem stays on its one line.
        for c in self.message.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Why a rule set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A directory was named that holds no `.yaml` or `.yml` file.
    #[error("{}: no rule files (*.yaml, *.yml) in this directory", path.display())]
    EmptyDirectory {
        /// The directory.
        path: PathBuf,
    },
    /// The HMAC key file is empty.
    #[error("{}: the HMAC key file is empty", path.display())]
    EmptyHmacKey {
        /// The key file.
        path: PathBuf,
    },
    /// The files were read but hold problems: all of them, sorted by file and position.
    #[error("{}", DiagnosticList(.0))]
    Invalid(Vec<Diagnostic>),
}

impl RulesError {
    /// The problems, when the error is about rule content.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            RulesError::Invalid(list) => list,
            _ => &[],
        }
    }
}

struct DiagnosticList<'a>(&'a [Diagnostic]);

impl fmt::Display for DiagnosticList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// ` (did you mean "x"?)` when one of `known` is close to `word`, else an empty string.
pub(crate) fn did_you_mean(word: &str, known: &[&str]) -> String {
    let lower = word.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| format!(" (did you mean \"{k}\"?)"))
        .unwrap_or_default()
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbours each count one, because each is one typo.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("methd", &["method", "path"]),
            " (did you mean \"method\"?)"
        );
        assert_eq!(
            did_you_mean("opration", &["operation", "description"]),
            " (did you mean \"operation\"?)"
        );
        assert_eq!(did_you_mean("zzz", &["method", "path"]), "");
        assert_eq!(
            did_you_mean("PATHC", &["PATCH", "PUT"]),
            " (did you mean \"PATCH\"?)"
        );
    }
}
