//! Prints a [`Document`] as `report.md` (pipe tables; plots named) and as one
//! self-contained `report.html` (inline CSS and SVG, no scripts, no external references;
//! long tables fold into `<details>`).

use super::data::ReportData;
use super::document::{build_document, Block, Document, Table};
use super::format::{MISSING, NOT_RUN, SHORT_HASH};
use crate::error::Result;

/// Renders the report as Markdown.
pub fn render_markdown(data: &ReportData) -> String {
    markdown(&build_document(data, false).expect("no charts are drawn for Markdown"))
}

/// Renders the report as one HTML page with inline CSS and SVG and no external references.
pub fn render_html(data: &ReportData) -> Result<String> {
    Ok(html(&build_document(data, true)?))
}

fn markdown(doc: &Document) -> String {
    let mut out = format!("# {}\n\n{}\n", doc.title, doc.subtitle);
    for section in &doc.sections {
        out.push_str(&format!("\n## {}\n", section.title));
        for block in &section.blocks {
            markdown_block(block, &mut out);
        }
    }
    out
}

fn markdown_block(block: &Block, out: &mut String) {
    match block {
        Block::Paragraph(p) => out.push_str(&format!("\n{p}\n")),
        Block::List(items) => {
            out.push('\n');
            for i in items {
                out.push_str(&format!("- {i}\n"));
            }
        }
        Block::Warnings(items) => {
            out.push('\n');
            for i in items {
                out.push_str(&format!("> **Warning:** {i}\n>\n"));
            }
        }
        Block::Table(t) => out.push_str(&markdown_table(t)),
        Block::Details {
            summary, blocks, ..
        } => {
            out.push_str(&format!("\n### {summary}\n"));
            for b in blocks {
                markdown_block(b, out);
            }
        }
        Block::Row(blocks) => {
            for b in blocks {
                markdown_block(b, out);
            }
        }
        Block::Charts(charts) => {
            out.push('\n');
            for chart in charts {
                let note = if chart.has_data {
                    "plotted in report.html"
                } else {
                    MISSING
                };
                out.push_str(&format!("- Plot: {}: {note}\n", chart.title));
            }
        }
    }
}

/// A Markdown pipe table; `|` inside cells is escaped.
pub fn markdown_table(t: &Table) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out = String::from("\n|");
    for h in &t.headers {
        out.push_str(&format!(" {} |", cell(h)));
    }
    out.push_str("\n|");
    for _ in &t.headers {
        out.push_str("---|");
    }
    out.push('\n');
    for row in &t.rows {
        out.push('|');
        for c in row {
            out.push_str(&format!(" {} |", cell(c)));
        }
        out.push('\n');
    }
    out
}

const STYLE: &str = "
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif;
  margin: 0 auto; max-width: 1180px; padding: 24px 32px 64px; color: #1d232a; line-height: 1.45; }
h1 { font-size: 1.8rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.3rem; border-bottom: 2px solid #dde3ea; padding-bottom: 4px; margin-top: 2.2rem; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
.subtitle { color: #56606b; margin-top: 0; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.86rem; }
th, td { border: 1px solid #d5dbe1; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f1f4f7; font-weight: 600; }
tr:nth-child(even) td { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.missing { color: #9aa3ad; font-style: italic; }
td.code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.8rem; }
.warning { background: #fff4e5; border-left: 4px solid #e69f00; padding: 6px 12px; margin: 0.6rem 0; }
details { margin: 0.6rem 0; }
summary { cursor: pointer; font-weight: 600; }
.row { display: flex; flex-wrap: wrap; gap: 0 24px; align-items: flex-start; }
.charts { display: flex; flex-wrap: wrap; gap: 14px; margin: 1rem 0; }
.chart { flex: 1 1 520px; max-width: calc(50% - 7px); margin: 0; border: 1px solid #e3e7eb;
  border-radius: 6px; padding: 6px; background: #fff; }
.charts.single .chart { max-width: 860px; }
@media (max-width: 1100px) { .chart { max-width: 100%; } }
.chart svg { width: 100%; height: auto; display: block; }
.chart.missing { color: #9aa3ad; font-style: italic; padding: 24px; }
.scroll { overflow-x: auto; }
";

fn html(doc: &Document) -> String {
    let mut out =
        String::from("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str(&format!(
        "<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(&doc.title)
    ));
    out.push_str(&format!(
        "<h1>{}</h1>\n<p class=\"subtitle\">{}</p>\n",
        escape(&doc.title),
        escape(&doc.subtitle)
    ));
    for section in &doc.sections {
        out.push_str(&format!("<section>\n<h2>{}</h2>\n", escape(&section.title)));
        for block in &section.blocks {
            html_block(block, &mut out);
        }
        out.push_str("</section>\n");
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn html_block(block: &Block, out: &mut String) {
    match block {
        Block::Paragraph(p) => out.push_str(&format!("<p>{}</p>\n", escape(p))),
        Block::List(items) => {
            out.push_str("<ul>\n");
            for i in items {
                out.push_str(&format!("<li>{}</li>\n", escape(i)));
            }
            out.push_str("</ul>\n");
        }
        Block::Warnings(items) => {
            for i in items {
                out.push_str(&format!(
                    "<div class=\"warning\"><strong>Warning:</strong> {}</div>\n",
                    escape(i)
                ));
            }
        }
        Block::Table(t) => out.push_str(&html_table(t)),
        Block::Details {
            summary,
            open,
            blocks,
        } => {
            out.push_str(&format!(
                "<details{}>\n<summary>{}</summary>\n",
                if *open { " open" } else { "" },
                escape(summary)
            ));
            for b in blocks {
                html_block(b, out);
            }
            out.push_str("</details>\n");
        }
        Block::Row(blocks) => {
            out.push_str("<div class=\"row\">\n");
            for b in blocks {
                html_block(b, out);
            }
            out.push_str("</div>\n");
        }
        Block::Charts(charts) => {
            let class = if charts.len() == 1 {
                "charts single"
            } else {
                "charts"
            };
            out.push_str(&format!("<div class=\"{class}\">\n"));
            for chart in charts {
                match &chart.svg {
                    Some(svg) => out.push_str(&format!(
                        "<figure class=\"chart\" aria-label=\"{}\">\n{}\n</figure>\n",
                        escape(&chart.title),
                        strip_xml_declaration(svg)
                    )),
                    None => out.push_str(&format!(
                        "<div class=\"chart missing\">{}: {MISSING}</div>\n",
                        escape(&chart.title)
                    )),
                }
            }
            out.push_str("</div>\n");
        }
    }
}

fn html_table(t: &Table) -> String {
    let mut out = String::from("<div class=\"scroll\"><table>\n<thead><tr>");
    for h in &t.headers {
        out.push_str(&format!("<th>{}</th>", escape(h)));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in &t.rows {
        out.push_str("<tr>");
        for c in row {
            let class = cell_class(c);
            if class.is_empty() {
                out.push_str(&format!("<td>{}</td>", escape(c)));
            } else {
                out.push_str(&format!("<td class=\"{class}\">{}</td>", escape(c)));
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table></div>\n");
    out
}

/// `missing` for absent values, `num` for numbers (right-aligned), `code` for hashes.
fn cell_class(cell: &str) -> &'static str {
    if cell == MISSING || cell == NOT_RUN {
        "missing"
    } else if cell.len() == SHORT_HASH && cell.chars().all(|c| c.is_ascii_hexdigit()) {
        "code"
    } else if cell
        .trim_start_matches('-')
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit())
        && !cell.contains(' ')
    {
        "num"
    } else {
        ""
    }
}

fn strip_xml_declaration(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_and_classes() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(cell_class(MISSING), "missing");
        assert_eq!(cell_class("0123456789ab"), "code");
        assert_eq!(cell_class("-1.5"), "num");
        assert_eq!(cell_class("81.2 ± 1.0"), "");
        let md = markdown_table(&Table {
            headers: vec!["a".into(), "b".into()],
            rows: vec![vec!["x|y".into(), "1".into()]],
        });
        assert_eq!(md, "\n| a | b |\n|---|---|\n| x\\|y | 1 |\n");
    }
}
