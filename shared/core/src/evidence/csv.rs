//! A small RFC 4180 reader: quoted fields, `""` escapes, CRLF or LF line ends.
//!
//! Hand-written so the evidence crate stays dependency-light. Rows are numbered from 1 with the
//! header as row 1 (as a spreadsheet shows them); blank lines are skipped and not numbered.

use serde_json::{Map, Value};

/// A structural problem; the reason never quotes cell contents, which may be sensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CsvError {
    pub row: usize,
    pub reason: String,
}

impl CsvError {
    fn new(row: usize, reason: impl Into<String>) -> Self {
        CsvError {
            row,
            reason: reason.into(),
        }
    }
}

/// Splits text into rows of cells, without any header semantics (the secret scan needs raw cells
/// even when the header is unusable).
pub(crate) fn parse_rows(text: &str) -> Result<Vec<Vec<String>>, CsvError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut row: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut quoted = false; // the current field began with a quote
    let mut in_quotes = false; // still inside that quote
    let mut chars = text.chars().peekable();

    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            ',' => {
                row.push(std::mem::take(&mut field));
                quoted = false;
            }
            '\r' | '\n' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                end_row(&mut rows, &mut row, &mut field, quoted);
                quoted = false;
            }
            _ if quoted => {
                return Err(CsvError::new(
                    rows.len() + 1,
                    "unexpected character after a closing quote",
                ))
            }
            '"' if field.is_empty() => {
                quoted = true;
                in_quotes = true;
            }
            '"' => {
                return Err(CsvError::new(
                    rows.len() + 1,
                    "quote inside an unquoted field",
                ))
            }
            _ => field.push(c),
        }
    }
    if in_quotes {
        return Err(CsvError::new(rows.len() + 1, "unterminated quoted field"));
    }
    if quoted || !field.is_empty() || !row.is_empty() {
        end_row(&mut rows, &mut row, &mut field, quoted);
    }
    Ok(rows)
}

/// Closes the current row; a row holding one empty unquoted cell is a blank line and dropped.
fn end_row(rows: &mut Vec<Vec<String>>, row: &mut Vec<String>, field: &mut String, quoted: bool) {
    row.push(std::mem::take(field));
    let done = std::mem::take(row);
    if !(done.len() == 1 && done[0].is_empty() && !quoted) {
        rows.push(done);
    }
}

/// Turns header + data rows into one JSON object per data row (cells stay strings; header names
/// are trimmed and must be unique and non-empty).
pub(crate) fn into_records(rows: &[Vec<String>]) -> Result<Vec<Map<String, Value>>, CsvError> {
    let (header, data) = rows
        .split_first()
        .ok_or_else(|| CsvError::new(1, "missing header row"))?;
    let mut names: Vec<&str> = Vec::with_capacity(header.len());
    for (i, h) in header.iter().enumerate() {
        let h = h.trim();
        if h.is_empty() {
            return Err(CsvError::new(
                1,
                format!("header column {} is empty", i + 1),
            ));
        }
        if names.contains(&h) {
            return Err(CsvError::new(
                1,
                format!("header column {} repeats an earlier column name", i + 1),
            ));
        }
        names.push(h);
    }
    data.iter()
        .enumerate()
        .map(|(i, cells)| {
            if cells.len() != names.len() {
                return Err(CsvError::new(
                    i + 2,
                    format!(
                        "has {} fields but the header has {}",
                        cells.len(),
                        names.len()
                    ),
                ));
            }
            Ok(names
                .iter()
                .zip(cells)
                .map(|(n, v)| (n.to_string(), Value::String(v.clone())))
                .collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Vec<Vec<String>> {
        parse_rows(text).expect("parses")
    }

    #[test]
    fn quoted_fields_with_commas_quotes_and_newlines() {
        let text = "name,note\r\n\"report, final.pdf\",\"say \"\"hi\"\"\"\r\n\"two\nlines\",\"\"\n";
        assert_eq!(
            rows(text),
            vec![
                vec!["name", "note"],
                vec!["report, final.pdf", "say \"hi\""],
                vec!["two\nlines", ""],
            ]
        );
    }

    #[test]
    fn lf_crlf_blank_lines_bom_and_missing_final_newline() {
        assert_eq!(
            rows("\u{feff}a,b\n\n1,2\r\n3,\r\n\r\n4,5"),
            vec![
                vec!["a", "b"],
                vec!["1", "2"],
                vec!["3", ""],
                vec!["4", "5"]
            ]
        );
        assert_eq!(rows(""), Vec::<Vec<String>>::new());
        assert_eq!(rows("\"\"\n"), vec![vec![""]]);
    }

    #[test]
    fn malformed_input_names_the_row() {
        assert_eq!(
            parse_rows("a\n\"open"),
            Err(CsvError::new(2, "unterminated quoted field"))
        );
        assert_eq!(
            parse_rows("a,b\nx\"y,1"),
            Err(CsvError::new(2, "quote inside an unquoted field"))
        );
        assert_eq!(
            parse_rows("a\n\"x\"y"),
            Err(CsvError::new(
                2,
                "unexpected character after a closing quote"
            ))
        );
    }

    #[test]
    fn records_follow_the_header() {
        let recs = into_records(&rows(" id , qty\nu1,3\nu2,4\n")).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1]["id"], "u2");
        assert_eq!(recs[1]["qty"], "4");
        assert_eq!(
            into_records(&rows("a,b\n1,2,3\n")),
            Err(CsvError::new(2, "has 3 fields but the header has 2"))
        );
        assert_eq!(
            into_records(&rows("a,a\n")),
            Err(CsvError::new(
                1,
                "header column 2 repeats an earlier column name"
            ))
        );
        assert_eq!(
            into_records(&[]),
            Err(CsvError::new(1, "missing header row"))
        );
    }
}
