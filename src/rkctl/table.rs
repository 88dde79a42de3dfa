//! Tables as kubectl prints them: upper-case headers, each column as wide as its widest cell
//! plus three spaces (at least six), the last column not padded (Go's tabwriter with kubectl's
//! settings: minwidth 6, padding 3).

const MIN_WIDTH: usize = 6;
const PADDING: usize = 3;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table { headers: headers.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// Puts a column in front of every row (`NAMESPACE` with `-A`).
    pub fn prepend(&mut self, header: &str, cells: Vec<String>) {
        self.headers.insert(0, header.to_string());
        for (row, cell) in self.rows.iter_mut().zip(cells) {
            row.insert(0, cell);
        }
    }

    /// Adds a column after the others (`LABELS` with `--show-labels`).
    pub fn append(&mut self, header: &str, cells: Vec<String>) {
        self.headers.push(header.to_string());
        for (row, cell) in self.rows.iter_mut().zip(cells) {
            row.push(cell);
        }
    }

    /// The width of each column but the last, padding included.
    pub fn widths(&self) -> Vec<usize> {
        let n = self.headers.len();
        (0..n.saturating_sub(1))
            .map(|i| {
                let widest = std::iter::once(&self.headers)
                    .chain(&self.rows)
                    .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                    .max()
                    .unwrap_or(0);
                (widest + PADDING).max(MIN_WIDTH)
            })
            .collect()
    }

    /// The whole table, headers first; `headers: false` leaves them out (`--no-headers`).
    pub fn render(&self, headers: bool) -> String {
        let widths = self.widths();
        let mut out = String::new();
        if headers {
            out.push_str(&render_row(&self.headers, &widths));
        }
        for row in &self.rows {
            out.push_str(&render_row(row, &widths));
        }
        out
    }
}

/// One line of a table with the given column widths (the last column unpadded).
pub fn render_row(cells: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        match widths.get(i) {
            Some(w) if i + 1 < cells.len() => {
                line.push_str(cell);
                let len = cell.chars().count();
                let pad = if len < *w { w - len } else { PADDING };
                line.extend(std::iter::repeat_n(' ', pad));
            }
            _ => {
                if i + 1 < cells.len() {
                    line.push_str(cell);
                    line.push_str("   ");
                } else {
                    line.push_str(cell);
                }
            }
        }
    }
    let mut line = line.trim_end().to_string();
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn columns_are_padded_like_kubectl() {
        // What `kubectl get pods` prints for these rows, byte for byte.
        let mut t = Table::new(&["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
        t.push(s(&["web-1", "1/1", "Running", "0", "5m"]));
        t.push(s(&["a", "0/1", "ContainerCreating", "0", "12s"]));
        assert_eq!(
            t.render(true),
            "NAME    READY   STATUS              RESTARTS   AGE\n\
             web-1   1/1     Running             0          5m\n\
             a       0/1     ContainerCreating   0          12s\n"
        );
        assert_eq!(t.render(false).lines().count(), 2);
    }

    #[test]
    fn narrow_columns_keep_the_minimum_width() {
        let mut t = Table::new(&["A", "B"]);
        t.push(s(&["x", "y"]));
        assert_eq!(t.render(true), "A     B\nx     y\n");
    }

    #[test]
    fn extra_columns_go_in_front_and_at_the_end() {
        let mut t = Table::new(&["NAME", "AGE"]);
        t.push(s(&["web", "1s"]));
        t.prepend("NAMESPACE", s(&["default"]));
        t.append("LABELS", s(&["app=web"]));
        assert_eq!(t.render(true), "NAMESPACE   NAME   AGE   LABELS\ndefault     web    1s    app=web\n");
    }
}
