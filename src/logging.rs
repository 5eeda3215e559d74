//! Log setup for `runnel serve`: tracing to stderr, text or JSON lines, levels per
//! module from an EnvFilter directive string (`info,runnel::group=debug`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. The filter was validated with the configuration,
/// so a parse failure here is a broken invariant.
pub fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::builder()
        .parse(filter)
        .expect("log filter validated by BrokerConfig::validate");
    // Colour codes only for a person at a terminal: in files and journald they are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
