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
    let mut out = crate::table::render(Some(["SERVICE", "CHECK", "STATUS", "DETAIL"]), &rows);
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
