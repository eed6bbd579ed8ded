//! Logging through `tracing`, with every line passed through the PAN
//! redactor before it reaches stderr. Handlers log route templates and
//! error codes, never bodies or raw URIs; the redactor is the safety net.

use std::io::{self, Write};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// A writer that masks anything that could be a card number.
#[derive(Clone, Copy, Debug, Default)]
pub struct RedactingStderr;

/// One log line being written.
#[derive(Debug)]
pub struct RedactingWriter(io::Stderr);

impl Write for RedactingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0
            .write_all(tokengate_core::redact_pans(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingWriter;
    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter(io::stderr())
    }
}

/// Install the global subscriber. Level from `TOKENGATE_LOG` (default `info`).
pub fn init(format: LogFormat) {
    // rustls warns once per connection about clients that send an IP
    // address as SNI (curl, wrk): noise at the default level.
    let filter = EnvFilter::try_from_env("TOKENGATE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,rustls=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Replace the panic message printer with one that redacts card numbers.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info.to_string();
        let red = tokengate_core::redact_pans(&msg);
        tracing::error!(panic = %red, "panic");
        let _ = writeln!(io::stderr(), "tokengate panicked: {red}");
    }));
}
