//! Plain-text tables: left-aligned columns separated by two spaces, the last column unpadded,
//! every row on exactly one line.

/// A table built row by row and rendered once, when all widths are known.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: Vec<&'static str>) -> Self {
        Self {
            headers,
            rows: Vec::new(),
        }
    }

    /// Adds a row; control characters (a newline in a command) become spaces so the row stays on
    /// one line. Missing cells are empty, extra cells are dropped.
    pub fn push(&mut self, cells: Vec<String>) {
        let mut row: Vec<String> = cells
            .into_iter()
            .take(self.headers.len())
            .map(|cell| single_line(&cell))
            .collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.extend(std::iter::repeat_n(' ', w - width(cell)));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// At most `max` characters, the last one `…` when something was cut.
pub fn truncate(text: &str, max: usize) -> String {
    if width(text) <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn single_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Width in characters; good enough for ids, states and commands, which are mostly ASCII.
fn width(text: &str) -> usize {
    text.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_and_the_last_is_not_padded() {
        let mut table = Table::new(vec!["ID", "STATE", "COMMAND"]);
        table.push(vec!["a".into(), "running".into(), "sleep 1".into()]);
        table.push(vec!["bbbb".into(), "queued".into(), "true".into()]);
        assert_eq!(
            table.render(),
            "ID    STATE    COMMAND\n\
             a     running  sleep 1\n\
             bbbb  queued   true\n"
        );
    }

    #[test]
    fn empty_trailing_cells_leave_no_trailing_spaces() {
        let mut table = Table::new(vec!["ID", "REASON"]);
        table.push(vec!["x".into()]);
        assert_eq!(table.render(), "ID  REASON\nx\n");
    }

    #[test]
    fn a_cell_with_a_newline_stays_on_one_line() {
        let mut table = Table::new(vec!["COMMAND"]);
        table.push(vec!["echo a\necho\tb".into()]);
        assert_eq!(table.render(), "COMMAND\necho a echo b\n");
    }

    #[test]
    fn long_text_is_truncated_with_an_ellipsis() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abcd", 4), "abcd");
        assert_eq!(truncate("ééééé", 3), "éé…");
    }

    #[test]
    fn wide_cells_widen_their_column_by_characters_not_bytes() {
        let mut table = Table::new(vec!["A", "B"]);
        table.push(vec!["é".into(), "x".into()]);
        assert_eq!(table.render(), "A  B\né  x\n");
    }
}
