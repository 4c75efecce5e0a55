//! The tables people read (`walflow lag`, `walflow doctor`), laid out by comfy-table: columns
//! as wide as their widest cell, two spaces between them, no borders, and a cell of several
//! lines continued under its own column. Scripts read `--json` instead.

use comfy_table::presets::NOTHING;
use comfy_table::{CellAlignment, ContentArrangement, Table};

/// `rows` (and `header`, when given) as text, one line per row, no trailing spaces.
pub fn render<const N: usize>(header: Option<[&str; N]>, rows: &[[String; N]]) -> String {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    if let Some(header) = header {
        table.set_header(header);
    }
    for row in rows {
        table.add_row(row.iter().map(String::as_str));
    }
    for (index, column) in table.column_iter_mut().enumerate() {
        let gap = if index + 1 < N { 2 } else { 0 };
        column.set_padding((0, gap));
        column.set_cell_alignment(CellAlignment::Left);
    }
    let mut text = String::new();
    for line in table.lines() {
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_a_cell_of_two_lines_continues_under_its_column() {
        let rows = [
            [
                "kafka".to_owned(),
                "g t[0]".to_owned(),
                "3 behind".to_owned(),
            ],
            [
                "postgres slot".to_owned(),
                "s".to_owned(),
                "INACTIVE\n  fix: start cdc".to_owned(),
            ],
        ];
        assert_eq!(
            render(Some(["HOP", "WHAT", "STATE"]), &rows),
            "HOP            WHAT    STATE\n\
             kafka          g t[0]  3 behind\n\
             postgres slot  s       INACTIVE\n\
             \x20                        fix: start cdc\n"
        );
        assert_eq!(render(None, &rows[..1]), "kafka  g t[0]  3 behind\n");
    }
}
