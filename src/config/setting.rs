//! What a setting's declaration says of it (the table itself is in `config/mod.rs`).

use super::kinds;

/// One setting: its name (the environment variable; in lower case, the file's key), default and
/// meaning.
pub struct Setting {
    pub name: &'static str,
    pub default: Fallback,
    pub help: &'static str,
}

/// What a setting is when neither the environment nor the file sets it.
pub enum Fallback {
    /// This text, read like a given value.
    Value(&'static str),
    /// Nothing: the setting is optional (its kind reads the empty text as "none").
    Unset,
    /// Worked out at start-up (the text says how, for the documentation).
    Computed(&'static str, fn() -> String),
    /// Whatever that other setting is (an old name kept working).
    Same(&'static str),
    /// The first text in development, the second with `APP_ENV=production`.
    ByEnv(&'static str, &'static str),
}

impl Setting {
    /// The setting's key in the configuration file.
    pub fn key(&self) -> String {
        self.name.to_ascii_lowercase()
    }

    /// The default as `--help` and the README show it.
    pub fn default_text(&self) -> String {
        match self.default {
            Fallback::Value(v) => v.to_owned(),
            Fallback::Unset => kinds::NONE.to_owned(),
            Fallback::Computed(text, _) => text.to_owned(),
            Fallback::Same(other) => format!("({other})"),
            Fallback::ByEnv(development, production) => {
                format!("{development} (production: {production})")
            }
        }
    }
}
