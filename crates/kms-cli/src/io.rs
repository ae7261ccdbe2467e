//! Reading inputs and writing outputs, binary-safe.

use std::io::{Read, Write};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

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
