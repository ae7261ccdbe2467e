//! Reading inputs and writing outputs, binary-safe.

use std::io::{Read, Write};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use crate::output::Format;

/// Reads a file, or stdin for `None` or `-`.
pub fn read_input(path: Option<&str>) -> anyhow::Result<Vec<u8>> {
    match path {
        None | Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read stdin")?;
            Ok(buf)
        }
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read {path}")),
    }
}

/// Writes to a file, or stdout for `-`.
pub fn write_output(path: &str, bytes: &[u8]) -> anyhow::Result<()> {
    if path == "-" {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(bytes).context("cannot write stdout")?;
        stdout.flush().context("cannot write stdout")
    } else {
        std::fs::write(path, bytes).with_context(|| format!("cannot write {path}"))
    }
}

/// Standard base64.
pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes standard base64.
pub fn unb64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    STANDARD.decode(text)
}

/// PEM (RFC 7468): `der` in base64, 64 characters a line, between BEGIN and END `label`.
pub fn pem(label: &str, der: &[u8]) -> String {
    let body = b64(der);
    // Base64 is ASCII, so every 64-byte chunk is whole characters.
    let lines: Vec<String> = body
        .as_bytes()
        .chunks(64)
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A blob: raw to `out`, else base64 on stdout; JSON adds `fields`.
pub fn emit_blob(
    format: Format,
    blob: &[u8],
    out: Option<&str>,
    fields: serde_json::Value,
) -> anyhow::Result<()> {
    emit_bytes(format, "ciphertext_blob", blob, out, fields)
}

/// Bytes that are not secret (a blob, a signature, a MAC): raw to `out`, else base64 on
/// stdout; JSON adds `fields`, and the bytes in base64 as `name` when there is no `out`.
pub fn emit_bytes(
    format: Format,
    name: &str,
    bytes: &[u8],
    out: Option<&str>,
    mut fields: serde_json::Value,
) -> anyhow::Result<()> {
    if let Some(path) = out {
        write_output(path, bytes)?;
    }
    match format {
        Format::Json => {
            if out.is_none() {
                fields[name] = json!(b64(bytes));
            }
            println!("{fields}");
        }
        Format::Text if out.is_none() => println!("{}", b64(bytes)),
        Format::Text => {}
    }
    Ok(())
}

/// Secret bytes: raw to `out` or stdout; JSON puts them in base64 in `plaintext`.
pub fn emit_secret(
    format: Format,
    bytes: &[u8],
    out: Option<&str>,
    mut fields: serde_json::Value,
) -> anyhow::Result<()> {
    match (format, out) {
        (_, Some(path)) => {
            write_output(path, bytes)?;
            if format == Format::Json {
                println!("{fields}");
            }
        }
        (Format::Json, None) => {
            fields["plaintext"] = json!(b64(bytes));
            println!("{fields}");
        }
        (Format::Text, None) => write_output("-", bytes)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_lines_are_64_characters() {
        let text = pem("PUBLIC KEY", &[0xAB; 100]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.first(), Some(&"-----BEGIN PUBLIC KEY-----"));
        assert_eq!(lines.last(), Some(&"-----END PUBLIC KEY-----"));
        // 100 bytes are 136 base64 characters: 64 + 64 + 8.
        let widths: Vec<usize> = lines[1..lines.len() - 1].iter().map(|l| l.len()).collect();
        assert_eq!(widths, [64, 64, 8]);
        let body: String = lines[1..lines.len() - 1].concat();
        assert_eq!(unb64(&body).ok(), Some(vec![0xAB; 100]));
    }
}
