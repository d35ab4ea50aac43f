//! Imports: JSON Lines, CSV and XLSX files turned into submitted records, row by row.
//!
//! JSON Lines carry one whole record per line. CSV and XLSX carry the flat sheets focal
//! points already keep: one row per item, one column per field (`docs/api.md` lists them);
//! rows sharing a `record_ref` become one record with several items, and
//! `originating_state` defaults to this node's State. A row that cannot become a record is
//! reported with its row number, the record pointer and, for sheets, the column; nothing here
//! stores anything.

use std::collections::BTreeMap;
use std::io::Cursor;

use calamine::{DataRef, Reader, Xlsx};
use serde_json::{Map, Value, json};

use crate::record::FieldError;

/// What the body of an import is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    Csv,
    Xlsx,
}

pub const XLSX_MEDIA_TYPE: &str =
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

impl Format {
    /// From a Content-Type header (parameters ignored).
    pub fn from_media_type(media: &str) -> Option<Format> {
        let essence = media
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/x-ndjson" | "application/jsonl" | "application/jsonlines" => {
                Some(Format::JsonLines)
            }
            "text/csv" => Some(Format::Csv),
            XLSX_MEDIA_TYPE => Some(Format::Xlsx),
            _ => None,
        }
    }

    /// From a file name's extension.
    pub fn from_path(path: &std::path::Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" => Some(Format::JsonLines),
            "csv" => Some(Format::Csv),
            "xlsx" => Some(Format::Xlsx),
            _ => None,
        }
    }

    pub fn media_type(self) -> &'static str {
        match self {
            Format::JsonLines => "application/x-ndjson",
            Format::Csv => "text/csv",
            Format::Xlsx => XLSX_MEDIA_TYPE,
        }
    }
}

/// One record read from an import, or why its row(s) could not be read.
#[derive(Debug)]
pub struct Row {
    /// 1-based line (JSON Lines) or sheet row (CSV/XLSX, the header is row 1) of the record's
    /// first row.
    pub row: usize,
    pub record: Result<Value, Vec<FieldError>>,
    /// Sheet column of each record field, to name the column of an error.
    pub columns: BTreeMap<String, String>,
}

/// Reads an import body. An error here concerns the whole file (unreadable sheet, unknown
/// column) and means nothing can be imported.
pub fn parse(format: Format, body: &[u8], node_id: &str) -> Result<Vec<Row>, FieldError> {
    match format {
        Format::JsonLines => Ok(parse_json_lines(body)),
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(body);
            let mut rows = Vec::new();
            for (i, record) in reader.records().enumerate() {
                let record = record.map_err(|e| {
                    FieldError::new(format!("/rows/{}", i + 1), format!("unreadable CSV: {e}"))
                })?;
                rows.push((i + 1, record.iter().map(str::to_owned).collect()));
            }
            // A quoted field left open runs to the end of the file, swallowing every row after
            // it; the reader does not say so. Quotes inside a field are doubled, so a file
            // whose quotes are all closed has an even number of them.
            if body.iter().filter(|b| **b == b'"').count() % 2 == 1 {
                let row = rows.last().map_or(1, |(n, _)| *n);
                return Err(FieldError::new(
                    format!("/rows/{row}"),
                    format!(
                        "unreadable CSV: a quoted field in row {row} is never closed (it runs to \
                         the end of the file)"
                    ),
                ));
            }
            sheet_rows(rows, node_id)
        }
        Format::Xlsx => {
            let mut book = Xlsx::new(Cursor::new(body.to_vec()))
                .map_err(|e| FieldError::new("", format!("not a readable XLSX workbook: {e}")))?;
            let name = book
                .sheet_names()
                .first()
                .cloned()
                .ok_or_else(|| FieldError::new("", "the workbook has no sheet"))?;
            let mut reader = book
                .worksheet_cells_reader(&name)
                .map_err(|e| FieldError::new("", format!("unreadable first sheet: {e}")))?;
            // Read cell by cell, keeping only the cells that hold something: a sheet's declared
            // size (one cell at XFD1048576) says nothing about what it holds.
            let max_cells = MIN_SHEET_CELLS.max(body.len().saturating_mul(4));
            let mut rows: BTreeMap<u32, Vec<String>> = BTreeMap::new();
            let mut count = 0usize;
            while let Some(cell) = reader
                .next_cell_with_formula()
                .map_err(|e| FieldError::new("", format!("unreadable first sheet: {e}")))?
            {
                let (row, col) = cell.pos;
                let text = match (cell_text(&cell.value), &cell.formula) {
                    // A formula whose result was never saved (written by a program, not by a
                    // spreadsheet): its value is unknown, not empty.
                    (text, Some(f)) if text.trim().is_empty() => format!(
                        "{SHEET_ERROR}={f} with no saved result: open and save the sheet in a \
                         spreadsheet program"
                    ),
                    (text, _) => text,
                };
                if text.trim().is_empty() {
                    continue;
                }
                if col as usize >= MAX_SHEET_COLUMNS {
                    return Err(FieldError::new(
                        format!("/rows/{}", row as usize + 1),
                        format!(
                            "row {} has a cell in column {}: a sheet of records has at most \
                             {MAX_SHEET_COLUMNS} columns",
                            row as usize + 1,
                            col as usize + 1
                        ),
                    ));
                }
                count += 1;
                if count > max_cells {
                    return Err(FieldError::new(
                        "",
                        format!("the sheet holds more than {max_cells} cells"),
                    ));
                }
                let cells = rows.entry(row).or_default();
                if cells.len() <= col as usize {
                    cells.resize(col as usize + 1, String::new());
                }
                cells[col as usize] = text;
            }
            let rows = rows
                .into_iter()
                .map(|(row, cells)| (row as usize + 1, cells))
                .collect();
            sheet_rows(rows, node_id)
        }
    }
}

/// The most columns a sheet of records may use (the known columns are far fewer).
const MAX_SHEET_COLUMNS: usize = 256;
/// A sheet may always hold this many cells; a larger one at most 4 per byte of the file.
const MIN_SHEET_CELLS: usize = 100_000;
/// Marks the text of a cell that holds a spreadsheet error (`#DIV/0!`): the row is refused.
/// XML cannot carry U+0000, so no sheet cell begins with it by accident.
const SHEET_ERROR: char = '\u{0}';

fn cell_text(cell: &DataRef<'_>) -> String {
    match cell {
        DataRef::Empty => String::new(),
        DataRef::String(s) => s.clone(),
        DataRef::SharedString(s) => (*s).to_owned(),
        DataRef::Int(i) => i.to_string(),
        // Spreadsheets store numbers as floats: integral ones are written as integers, others
        // as the decimal text the sheet shows (never a float in a record).
        DataRef::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", *f as i64),
        DataRef::Float(f) => f.to_string(),
        DataRef::Bool(b) => b.to_string(),
        DataRef::DateTime(d) => {
            let (y, m, day, ..) = d.to_ymd_hms_milli();
            format!("{y:04}-{m:02}-{day:02}")
        }
        DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => s.chars().take(10).collect(),
        DataRef::Error(e) => format!("{SHEET_ERROR}{e}"),
    }
}

fn parse_json_lines(body: &[u8]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record = serde_json::from_slice::<Value>(line)
            .map_err(|e| vec![FieldError::new("", format!("not JSON: {e}"))]);
        rows.push(Row {
            row: i + 1,
            record,
            columns: BTreeMap::new(),
        });
    }
    rows
}

/// Sheet columns and where each goes in a record (`items/0/…` paths are per row/item).
const COLUMNS: &[(&str, &str)] = &[
    ("record_ref", ""),
    ("record_id", "/record_id"),
    ("originating_state", "/originating_state"),
    ("tlp", "/sharing/tlp"),
    ("event_type", "/event/event_type"),
    ("context", "/event/context"),
    ("date", "/event/date/start"),
    ("date_precision", "/event/date/precision"),
    ("country", "/event/location/country"),
    ("admin1", "/event/location/admin1"),
    ("place_name", "/event/location/place_name"),
    ("location_precision", "/event/location/precision"),
    ("facility_type", "/event/location/facility_type"),
    ("lat", "/event/location/point/lat"),
    ("lon", "/event/location/point/lon"),
    ("agency_name", "/event/seizing_agency/name"),
    ("agency_type", "/event/seizing_agency/type"),
    ("case_ref", "/case_refs"),
    ("notes", "/notes"),
    ("item_id", "item_id"),
    ("item_category", "item_category"),
    ("calibre", "calibre/raw"),
    ("headstamp", "headstamp/raw_transcription"),
    ("lot", "lot/raw"),
    ("sub_lot", "lot/sub_lot"),
    ("quantity", "quantity/count"),
    ("unit", "quantity/unit"),
    ("condition", "condition"),
    ("ammo_type", "ammo_type/raw"),
];

/// A header as a column name: `Record Ref`, `record-ref` and `record_ref` are one column.
fn column_name(header: &str) -> String {
    header.trim().to_ascii_lowercase().replace([' ', '-'], "_")
}

fn column_target(name: &str) -> Option<&'static str> {
    let key = column_name(name);
    COLUMNS.iter().find(|(c, _)| *c == key).map(|(_, t)| *t)
}

fn set_path(root: &mut Map<String, Value>, path: &str, value: Value) {
    let mut parts = path.trim_start_matches('/').split('/').peekable();
    let mut current = root;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part.to_owned(), value);
            return;
        }
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        match entry.as_object_mut() {
            Some(next) => current = next,
            None => return,
        }
    }
}

/// Turns sheet rows (1-based row number, cells) into records; the first row is the header.
fn sheet_rows(rows: Vec<(usize, Vec<String>)>, node_id: &str) -> Result<Vec<Row>, FieldError> {
    let mut iter = rows.into_iter();
    let Some((_, header)) = iter.next() else {
        return Ok(Vec::new());
    };
    let mut targets: Vec<(String, &'static str)> = Vec::with_capacity(header.len());
    for (i, name) in header.iter().enumerate() {
        match column_target(name) {
            Some(_)
                if targets
                    .iter()
                    .any(|(n, _)| column_name(n) == column_name(name)) =>
            {
                return Err(FieldError::new(
                    format!("/columns/{i}"),
                    format!("column {:?} appears twice", name.trim()),
                ));
            }
            Some(t) => targets.push((name.trim().to_owned(), t)),
            None if name.trim().is_empty() => targets.push((String::new(), "")),
            None => {
                return Err(FieldError::new(
                    format!("/columns/{i}"),
                    format!(
                        "unknown column {name:?}; known columns: {}",
                        COLUMNS.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
    }
    // Group rows into records by record_ref (or one record per row).
    let mut order: Vec<String> = Vec::new();
    let mut groups: BTreeMap<String, Vec<(usize, Vec<String>)>> = BTreeMap::new();
    for (row, cells) in iter {
        if cells.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        if cells
            .iter()
            .skip(targets.len())
            .any(|c| !c.trim().is_empty())
        {
            return Err(FieldError::new(
                format!("/rows/{row}"),
                format!(
                    "row {row} has more cells than the header has columns ({})",
                    targets.len()
                ),
            ));
        }
        let reference = targets
            .iter()
            .position(|(n, _)| column_name(n) == "record_ref")
            .and_then(|p| cells.get(p))
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| format!("row:{row}"));
        if !groups.contains_key(&reference) {
            order.push(reference.clone());
        }
        groups.entry(reference).or_default().push((row, cells));
    }
    let mut out = Vec::new();
    for reference in order {
        let Some(group) = groups.remove(&reference) else {
            continue;
        };
        out.push(sheet_record(&targets, group, node_id));
    }
    out.sort_by_key(|r| r.row);
    Ok(out)
}

fn sheet_record(
    targets: &[(String, &'static str)],
    group: Vec<(usize, Vec<String>)>,
    node_id: &str,
) -> Row {
    let first_row = group.first().map_or(0, |(r, _)| *r);
    let mut record = Map::new();
    let mut columns = BTreeMap::new();
    let mut items = Vec::new();
    let mut errors = Vec::new();
    for (item_index, (row, cells)) in group.iter().enumerate() {
        let mut item = Map::new();
        for ((name, target), cell) in targets.iter().zip(cells.iter()) {
            let cell = cell.trim();
            if target.is_empty() || cell.is_empty() {
                continue;
            }
            if let Some(error) = cell.strip_prefix(SHEET_ERROR) {
                let pointer = match target.strip_prefix('/') {
                    Some(_) => (*target).to_owned(),
                    None => format!("/items/{item_index}/{target}"),
                };
                errors.push(FieldError::new(
                    pointer,
                    format!(
                        "row {row}, column {name}: the cell holds the spreadsheet error {error}"
                    ),
                ));
                continue;
            }
            if let Some(record_path) = target.strip_prefix('/') {
                let pointer = format!("/{record_path}");
                columns.insert(pointer.clone(), name.clone());
                let value = match record_path {
                    "event/context" => json!(
                        cell.split(['|', ';'])
                            .map(str::trim)
                            .filter(|c| !c.is_empty())
                            .collect::<Vec<_>>()
                    ),
                    "case_refs" => json!([{ "system": "national_case", "ref": cell }]),
                    _ => Value::String(cell.to_owned()),
                };
                set_path(&mut record, &pointer, value);
            } else {
                let pointer = format!("/items/{item_index}/{target}");
                columns.insert(pointer.clone(), name.clone());
                let value = if *target == "quantity/count" {
                    // Digits only: `+5`, ` 5 ` inside, `5.0` are not counts as written.
                    match cell
                        .parse::<u64>()
                        .ok()
                        .filter(|_| cell.bytes().all(|b| b.is_ascii_digit()))
                    {
                        Some(n) => Value::from(n),
                        None => {
                            errors.push(FieldError::new(
                                pointer.clone(),
                                format!("row {row}, column {name}: {cell:?} is not a whole number"),
                            ));
                            continue;
                        }
                    }
                } else {
                    Value::String(cell.to_owned())
                };
                set_path(&mut item, target, value);
            }
        }
        if !item.contains_key("item_id") {
            item.insert(
                "item_id".into(),
                Value::String(format!("i{}", item_index + 1)),
            );
        }
        if let Some(h) = item.get_mut("headstamp").and_then(Value::as_object_mut) {
            h.insert("present".into(), Value::Bool(true));
        }
        items.push(Value::Object(item));
    }
    record
        .entry("originating_state")
        .or_insert_with(|| Value::String(node_id.to_owned()));
    record.insert("items".into(), Value::Array(items));
    let record = if errors.is_empty() {
        Ok(Value::Object(record))
    } else {
        Err(errors)
    };
    Row {
        row: first_row,
        record,
        columns,
    }
}

/// The sheet column a record pointer came from, if any.
pub fn column_of(columns: &BTreeMap<String, String>, pointer: &str) -> Option<String> {
    columns
        .iter()
        .filter(|(p, _)| {
            pointer.starts_with(p.as_str()) || p.starts_with(pointer) && !pointer.is_empty()
        })
        .max_by_key(|(p, _)| p.len())
        .map(|(_, c)| c.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "record_ref,date,country,event_type,location_precision,tlp,item_category,calibre,headstamp,lot,quantity\n\
        A,2024-03-11,XAA,seizure,country,GREEN,small_arms_ammunition,7.62x39,539 85,21-85,100\n\
        A,2024-03-11,XAA,seizure,country,GREEN,small_arms_ammunition,5.45x39,270 98,77-98,40\n\
        B,2024-04-01,XAA,seizure,country,AMBER,small_arms_ammunition,9mm,PPU 19,UF7387/19,many\n";

    #[test]
    fn sheet_rows_group_into_records() {
        let rows = parse(Format::Csv, CSV.as_bytes(), "XAA").unwrap();
        assert_eq!(rows.len(), 2);
        let a = rows[0].record.as_ref().unwrap();
        assert_eq!(a["items"].as_array().unwrap().len(), 2);
        assert_eq!(a["items"][1]["lot"]["raw"], "77-98");
        assert_eq!(a["items"][0]["quantity"]["count"], 100);
        assert_eq!(a["originating_state"], "XAA");
        let b = rows[1].record.as_ref().unwrap_err();
        assert_eq!(b[0].pointer, "/items/0/quantity/count");
        assert_eq!(rows[1].row, 4);
        assert_eq!(
            column_of(&rows[0].columns, "/items/1/lot/raw").as_deref(),
            Some("lot")
        );
    }

    #[test]
    fn unknown_columns_refuse_the_file() {
        let e = parse(Format::Csv, b"lot,colour\n1,red\n", "XAA").unwrap_err();
        assert_eq!(e.pointer, "/columns/1");
    }

    #[test]
    fn a_quote_left_open_refuses_the_file() {
        let body = "record_ref,date,country,event_type,location_precision,tlp,item_category,lot,quantity\n\
            A,2024-03-11,XAA,seizure,country,GREEN,small_arms_ammunition,\"QQ-01,100\n\
            B,2024-03-11,XAA,seizure,country,GREEN,small_arms_ammunition,QQ-02,200\n\
            C,2024-03-11,XAA,seizure,country,GREEN,small_arms_ammunition,QQ-03,300\n";
        let e = parse(Format::Csv, body.as_bytes(), "XAA").unwrap_err();
        assert_eq!(e.pointer, "/rows/2");
        assert!(e.detail.contains("never closed"), "{}", e.detail);
        // Doubled quotes inside a closed field are fine.
        let body = "lot,notes\n21-85,\"said \"\"hello\"\"\"\n";
        assert!(parse(Format::Csv, body.as_bytes(), "XAA").is_ok());
    }

    #[test]
    fn a_column_named_twice_refuses_the_file() {
        let e = parse(Format::Csv, b"lot,quantity,Lot\n1,2,3\n", "XAA").unwrap_err();
        assert_eq!(e.pointer, "/columns/2");
    }

    #[test]
    fn counts_are_digits_only() {
        for count in ["+5", "5.0", "-1", "5 000"] {
            let body = CSV.replace(",many", &format!(",{count}"));
            let rows = parse(Format::Csv, body.as_bytes(), "XAA").unwrap();
            let e = rows[1].record.as_ref().unwrap_err();
            assert_eq!(e[0].pointer, "/items/0/quantity/count", "{count}");
        }
    }

    #[test]
    fn a_spreadsheet_error_refuses_its_row() {
        assert!(cell_text(&DataRef::Error(calamine::CellErrorType::Div0)).starts_with(SHEET_ERROR));
        let header: Vec<String> = ["record_ref", "lot", "quantity"].map(String::from).to_vec();
        let row = |r: &str, lot: &str| vec![r.to_owned(), lot.to_owned(), "10".to_owned()];
        let error = cell_text(&DataRef::Error(calamine::CellErrorType::Div0));
        let rows = sheet_rows(
            vec![(1, header), (2, row("A", "21-85")), (3, row("B", &error))],
            "XAA",
        )
        .unwrap();
        assert!(rows[0].record.is_ok());
        let e = rows[1].record.as_ref().unwrap_err();
        assert_eq!(e[0].pointer, "/items/0/lot/raw");
        assert!(e[0].detail.contains("#DIV/0!"), "{}", e[0].detail);
    }

    fn xlsx(cells: &[(u32, u16, &str)]) -> Vec<u8> {
        let mut book = rust_xlsxwriter::Workbook::new();
        let sheet = book.add_worksheet();
        for (row, col, text) in cells {
            sheet.write_string(*row, *col, *text).unwrap();
        }
        book.save_to_buffer().unwrap()
    }

    #[test]
    fn a_formula_without_its_result_refuses_its_row() {
        let mut book = rust_xlsxwriter::Workbook::new();
        let sheet = book.add_worksheet();
        // As a program writes a sheet it did not calculate: no result saved.
        sheet.set_formula_result_default("");
        for (col, text) in ["record_ref", "lot", "quantity"].iter().enumerate() {
            sheet.write_string(0, col as u16, *text).unwrap();
        }
        let formula = |result: &str| rust_xlsxwriter::Formula::new("=2*5").set_result(result);
        for (row, reference, result) in [(1, "A", ""), (2, "B", "#DIV/0!"), (3, "C", "10")] {
            sheet.write_string(row, 0, reference).unwrap();
            sheet.write_string(row, 1, "21-85").unwrap();
            sheet.write_formula(row, 2, formula(result)).unwrap();
        }
        let rows = parse(Format::Xlsx, &book.save_to_buffer().unwrap(), "XAA").unwrap();
        for (row, needle) in [(0, "no saved result"), (1, "#DIV/0!")] {
            let e = rows[row].record.as_ref().unwrap_err();
            assert_eq!(e[0].pointer, "/items/0/quantity/count");
            assert!(e[0].detail.contains(needle), "{}", e[0].detail);
        }
        // A saved result is what the sheet shows.
        let r = rows[2].record.as_ref().unwrap();
        assert_eq!(r["items"][0]["quantity"]["count"], 10);
    }

    #[test]
    fn a_far_away_cell_is_refused_without_reading_the_empty_sheet() {
        let head = [
            (0, 0, "lot"),
            (0, 1, "quantity"),
            (1, 0, "21-85"),
            (1, 1, "10"),
        ];
        let mut cells = head.to_vec();
        cells.push((99_999, 16_383, "x"));
        let book = xlsx(&cells);
        let started = std::time::Instant::now();
        let e = parse(Format::Xlsx, &book, "XAA").unwrap_err();
        assert_eq!(e.pointer, "/rows/100000");
        // Reading 1.6 billion empty cells would take many minutes.
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        // Far down but within the columns: read sparsely, numbered as in the sheet.
        let mut cells = head.to_vec();
        cells.push((199_999, 0, "77-98"));
        cells.push((199_999, 1, "5"));
        let rows = parse(Format::Xlsx, &xlsx(&cells), "XAA").unwrap();
        assert_eq!(
            rows.iter().map(|r| r.row).collect::<Vec<_>>(),
            vec![2, 200_000]
        );
    }

    #[test]
    fn json_lines_report_bad_lines() {
        let rows = parse(Format::JsonLines, b"{\"a\":1}\n\n{oops\n", "XAA").unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows[1].record.is_err());
        assert_eq!(rows[1].row, 3);
    }
}
