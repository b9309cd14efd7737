//! A minimal PostgreSQL simple-query client that keeps what drivers hide: exact command
//! tags, column names and type OIDs, text values with NULLs, and every field of an
//! error. The differential tests compare plain PostgreSQL with pgshard through it, so it
//! must not normalise anything itself.

use std::collections::BTreeMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
}

/// An ErrorResponse or NoticeResponse, by field code (`C` SQLSTATE, `M` message…).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerMessage {
    pub fields: BTreeMap<char, String>,
}

impl ServerMessage {
    pub fn code(&self) -> &str {
        self.fields.get(&'C').map(String::as_str).unwrap_or("")
    }
    pub fn message(&self) -> &str {
        self.fields.get(&'M').map(String::as_str).unwrap_or("")
    }
}

/// The result of one statement of a simple Query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A statement that completed: its columns (empty when it returns no rows), rows as
    /// text (`None` for NULL) and command tag.
    Done {
        columns: Vec<Column>,
        rows: Vec<Vec<Option<String>>>,
        tag: String,
    },
    /// An empty query string.
    Empty,
    /// The statement failed.
    Error(ServerMessage),
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("server refused the connection: {0:?}")]
    Startup(ServerMessage),
}

/// A connection speaking the simple query protocol.
pub struct WireClient {
    stream: BufReader<TcpStream>,
    /// ParameterStatus values reported by the server.
    pub parameters: BTreeMap<String, String>,
    /// Transaction status of the last ReadyForQuery: `I`, `T` or `E`.
    pub status: u8,
}

impl WireClient {
    /// Connect with trust or cleartext-password authentication.
    pub async fn connect(
        host: &str,
        port: u16,
        user: &str,
        database: &str,
        password: Option<&str>,
    ) -> Result<WireClient, WireError> {
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        let mut c = WireClient {
            stream: BufReader::new(tcp),
            parameters: BTreeMap::new(),
            status: b'I',
        };
        let mut body = Vec::new();
        body.extend_from_slice(&196608u32.to_be_bytes());
        for (k, v) in [("user", user), ("database", database)] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        c.stream.get_mut().write_all(&msg).await?;
        loop {
            let (tag, payload) = c.read_message().await?;
            match tag {
                b'R' => {
                    let kind = be_u32(&payload, 0)?;
                    match kind {
                        0 => {}
                        3 => {
                            let pw = password.unwrap_or("");
                            let mut m = vec![b'p'];
                            m.extend_from_slice(&((pw.len() + 5) as u32).to_be_bytes());
                            m.extend_from_slice(pw.as_bytes());
                            m.push(0);
                            c.stream.get_mut().write_all(&m).await?;
                        }
                        other => {
                            return Err(WireError::Protocol(format!(
                                "unsupported authentication request {other}"
                            )))
                        }
                    }
                }
                b'S' => {
                    let mut parts = payload.split(|b| *b == 0);
                    let k = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    let v = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    c.parameters.insert(k, v);
                }
                b'K' | b'N' => {}
                b'E' => return Err(WireError::Startup(parse_fields(&payload))),
                b'Z' => {
                    c.status = payload.first().copied().unwrap_or(b'I');
                    return Ok(c);
                }
                other => {
                    return Err(WireError::Protocol(format!(
                        "unexpected message {:?} during startup",
                        other as char
                    )))
                }
            }
        }
    }

    async fn read_message(&mut self) -> Result<(u8, Vec<u8>), WireError> {
        let tag = self.stream.read_u8().await?;
        let len = self.stream.read_u32().await? as usize;
        if !(4..=1 << 30).contains(&len) {
            return Err(WireError::Protocol(format!("bad message length {len}")));
        }
        let mut payload = vec![0; len - 4];
        self.stream.read_exact(&mut payload).await?;
        Ok((tag, payload))
    }

    /// Send raw bytes (for tests of malformed input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.stream.get_mut().write_all(bytes).await?;
        Ok(())
    }

    /// Run a simple Query and collect one outcome per statement, plus notices.
    pub async fn query(
        &mut self,
        sql: &str,
    ) -> Result<(Vec<Outcome>, Vec<ServerMessage>), WireError> {
        let mut m = vec![b'Q'];
        m.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        m.extend_from_slice(sql.as_bytes());
        m.push(0);
        self.stream.get_mut().write_all(&m).await?;
        let mut out = Collected::default();
        self.read_until_ready(&mut out, false).await?;
        Ok((out.outcomes, out.notices))
    }

    /// Run one statement as `mode` says (see [`Mode`]).
    pub async fn run(
        &mut self,
        sql: &str,
        mode: Mode,
    ) -> Result<(Vec<Outcome>, Vec<ServerMessage>), WireError> {
        match mode {
            Mode::Simple => self.query(sql).await,
            Mode::ExtendedBinary => {
                let mut m = Vec::new();
                put_msg(&mut m, b'P', &[b"\0", sql.as_bytes(), b"\0\0\0"]);
                // Unnamed portal, no parameters, every result column binary.
                put_msg(&mut m, b'B', &[b"\0\0\0\0\0\0\0\x01\0\x01"]);
                put_msg(&mut m, b'D', &[b"P\0"]);
                put_msg(&mut m, b'E', &[b"\0\0\0\0\0"]);
                put_msg(&mut m, b'S', &[]);
                self.stream.get_mut().write_all(&m).await?;
                let mut out = Collected::default();
                self.read_until_ready(&mut out, true).await?;
                Ok((out.outcomes, out.notices))
            }
            Mode::Prepared => {
                // Prepared and described first (as JDBC and pgx do), executed with
                // text results, then closed.
                let mut m = Vec::new();
                put_msg(&mut m, b'P', &[b"pgs_diff\0", sql.as_bytes(), b"\0\0\0"]);
                put_msg(&mut m, b'D', &[b"Spgs_diff\0"]);
                put_msg(&mut m, b'S', &[]);
                self.stream.get_mut().write_all(&m).await?;
                let mut out = Collected::default();
                self.read_until_ready(&mut out, false).await?;
                if out.outcomes.is_empty() {
                    let mut m = Vec::new();
                    put_msg(&mut m, b'B', &[b"\0pgs_diff\0\0\0\0\0\0\0"]);
                    put_msg(&mut m, b'E', &[b"\0\0\0\0\0"]);
                    put_msg(&mut m, b'S', &[]);
                    self.stream.get_mut().write_all(&m).await?;
                    self.read_until_ready(&mut out, false).await?;
                }
                // Closing a statement that does not exist is no error.
                let mut m = Vec::new();
                put_msg(&mut m, b'C', &[b"Spgs_diff\0"]);
                put_msg(&mut m, b'S', &[]);
                self.stream.get_mut().write_all(&m).await?;
                let (outcomes, notices) = (out.outcomes, out.notices);
                let mut closed = Collected::default();
                self.read_until_ready(&mut closed, false).await?;
                Ok((outcomes, notices))
            }
        }
    }

    /// Reads what the server sends up to ReadyForQuery after raw messages (see
    /// [`WireClient::send_raw`] and [`message`]): one outcome per statement.
    pub async fn read_outcomes(
        &mut self,
        binary: bool,
    ) -> Result<(Vec<Outcome>, Vec<ServerMessage>), WireError> {
        let mut out = Collected::default();
        self.read_until_ready(&mut out, binary).await?;
        Ok((out.outcomes, out.notices))
    }

    /// Reads `n` messages and returns their tags (after a Flush, which ends with no
    /// ReadyForQuery).
    pub async fn read_tags(&mut self, n: usize) -> Result<Vec<u8>, WireError> {
        let mut tags = Vec::with_capacity(n);
        for _ in 0..n {
            tags.push(self.read_message().await?.0);
        }
        Ok(tags)
    }

    /// Reads messages up to ReadyForQuery into `out` (`binary`: values as hex).
    async fn read_until_ready(
        &mut self,
        out: &mut Collected,
        binary: bool,
    ) -> Result<(), WireError> {
        loop {
            let (tag, payload) = self.read_message().await?;
            match tag {
                b'T' => {
                    out.columns = parse_row_description(&payload)?;
                    out.rows.clear();
                }
                b'D' => out.rows.push(parse_data_row(&payload, binary)?),
                b'C' => {
                    let tag = cstr(&payload);
                    out.outcomes.push(Outcome::Done {
                        columns: std::mem::take(&mut out.columns),
                        rows: std::mem::take(&mut out.rows),
                        tag,
                    });
                }
                b'I' => out.outcomes.push(Outcome::Empty),
                b'E' => {
                    out.outcomes.push(Outcome::Error(parse_fields(&payload)));
                    out.columns.clear();
                    out.rows.clear();
                }
                b'N' => out.notices.push(parse_fields(&payload)),
                b'S' => {
                    let mut parts = payload.split(|b| *b == 0);
                    let k = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    let v = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    self.parameters.insert(k, v);
                }
                // A row-limited Execute that left rows: its rows so far, tagged so.
                b's' => out.outcomes.push(Outcome::Done {
                    columns: std::mem::take(&mut out.columns),
                    rows: std::mem::take(&mut out.rows),
                    tag: "(portal suspended)".into(),
                }),
                // ParseComplete, BindComplete, CloseComplete, NoData, ParameterDescription,
                // NotificationResponse.
                b'1' | b'2' | b'3' | b'n' | b't' | b'A' => {}
                b'G' | b'H' => {
                    return Err(WireError::Protocol(
                        "COPY is not supported by the test client".into(),
                    ))
                }
                b'Z' => {
                    self.status = payload.first().copied().unwrap_or(b'I');
                    return Ok(());
                }
                other => {
                    return Err(WireError::Protocol(format!(
                        "unexpected message {:?}",
                        other as char
                    )))
                }
            }
        }
    }
}

/// How a statement is sent; the differential corpus runs in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A simple Query, text results.
    Simple,
    /// Parse/Bind/Describe/Execute/Sync of the unnamed statement and portal, every
    /// result column in binary (compared as hex).
    ExtendedBinary,
    /// A named statement: Parse/Describe/Sync, then Bind/Execute/Sync with text
    /// results, then Close/Sync.
    Prepared,
}

/// What one exchange up to ReadyForQuery returned.
#[derive(Default)]
struct Collected {
    outcomes: Vec<Outcome>,
    notices: Vec<ServerMessage>,
    columns: Vec<Column>,
    rows: Vec<Vec<Option<String>>>,
}

/// A frontend message `tag` whose body is `parts` concatenated, for
/// [`WireClient::send_raw`].
pub fn message(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut m = Vec::new();
    put_msg(&mut m, tag, parts);
    m
}

/// Appends a message `tag` whose body is `parts` concatenated.
fn put_msg(out: &mut Vec<u8>, tag: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum::<usize>() + 4;
    out.push(tag);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
}

fn be_u32(b: &[u8], at: usize) -> Result<u32, WireError> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| WireError::Protocol("truncated message".into()))
}

fn be_u16(b: &[u8], at: usize) -> Result<u16, WireError> {
    b.get(at..at + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or_else(|| WireError::Protocol("truncated message".into()))
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn parse_fields(b: &[u8]) -> ServerMessage {
    let mut fields = BTreeMap::new();
    let mut rest = b;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|c| *c == 0).unwrap_or(tail.len());
        fields.insert(
            code as char,
            String::from_utf8_lossy(&tail[..end]).into_owned(),
        );
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    ServerMessage { fields }
}

fn parse_row_description(b: &[u8]) -> Result<Vec<Column>, WireError> {
    let n = be_u16(b, 0)? as usize;
    let mut at = 2;
    let mut cols = Vec::with_capacity(n);
    for _ in 0..n {
        let name = cstr(b.get(at..).unwrap_or_default());
        at += name.len() + 1;
        let type_oid = be_u32(b, at + 6)?;
        at += 18;
        cols.push(Column { name, type_oid });
    }
    Ok(cols)
}

fn parse_data_row(b: &[u8], binary: bool) -> Result<Vec<Option<String>>, WireError> {
    let n = be_u16(b, 0)? as usize;
    let mut at = 2;
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        let len = be_u32(b, at)? as i32;
        at += 4;
        if len < 0 {
            row.push(None);
        } else {
            let len = len as usize;
            let v = b
                .get(at..at + len)
                .ok_or_else(|| WireError::Protocol("truncated data row".into()))?;
            row.push(Some(if binary {
                v.iter().map(|b| format!("{b:02x}")).collect()
            } else {
                String::from_utf8_lossy(v).into_owned()
            }));
            at += len;
        }
    }
    Ok(row)
}
