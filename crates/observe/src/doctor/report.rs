//! The table people read. Scripts read `--json` instead.

use std::fmt::Write;

use super::{DoctorReport, Status};

pub fn render_table(report: &DoctorReport) -> String {
    let rows: Vec<[String; 4]> = report
        .services
        .iter()
        .flat_map(|service| {
            service.checks.iter().map(move |check| {
                let mut detail = check.detail.clone();
                if let Some(fix) = &check.fix {
                    if check.status != Status::Ok {
                        let _ = write!(detail, "\n  fix: {fix}");
                    }
                }
                [
                    service.service.to_owned(),
                    check.name.to_owned(),
                    label(check.status).to_owned(),
                    detail,
                ]
            })
        })
        .collect();
    let header = ["SERVICE", "CHECK", "STATUS", "DETAIL"];
    let width = |column: usize| {
        rows.iter()
            .map(|row| row[column].len())
            .chain([header[column].len()])
            .max()
            .unwrap_or(0)
    };
    let widths = [width(0), width(1), width(2)];
    let indent = widths.iter().sum::<usize>() + 3 * 2;
    let mut out = String::new();
    let mut line = |cells: [&str; 4]| {
        let mut detail_lines = cells[3].lines();
        let _ = writeln!(
            out,
            "{:w0$}  {:w1$}  {:w2$}  {}",
            cells[0],
            cells[1],
            cells[2],
            detail_lines.next().unwrap_or(""),
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
        );
        for more in detail_lines {
            let _ = writeln!(out, "{:indent$}{more}", "");
        }
    };
    line(header);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3]]);
    }
    out.push('\n');
    for service in &report.services {
        let _ = writeln!(
            out,
            "{}: {} at {}{}",
            service.service,
            label(service.status()),
            service.address,
            service
                .version
                .as_deref()
                .map(|version| format!(" ({version})"))
                .unwrap_or_default(),
        );
    }
    let verdict = match report.status {
        Status::Ok => "all checks passed",
        Status::Warn => "usable, with warnings worth fixing",
        Status::Fail => "NOT READY: fix the failed checks above",
    };
    let _ = writeln!(out, "doctor: {verdict}");
    out
}

fn label(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::Warn => "WARN",
        Status::Fail => "FAIL",
    }
}
