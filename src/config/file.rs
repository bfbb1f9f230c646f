//! The optional configuration file (`--config kisse.toml`): a flat TOML table whose keys are the
//! settings' names in lower case (`database_url = "postgres://..."`).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};

use super::setting::Setting;

/// The file's values, checked against the declared settings, as text.
#[derive(Debug)]
pub struct ConfigFile {
    pub path: PathBuf,
    values: HashMap<&'static str, String>,
}

impl ConfigFile {
    /// Reads the file at `path`, whose keys must be among `settings`.
    pub fn read(path: &Path, settings: &'static [Setting]) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration file {}", path.display()))?;
        Self::parse(path, &text, settings)
    }

    pub fn parse(path: &Path, text: &str, settings: &'static [Setting]) -> anyhow::Result<Self> {
        let file = path.display();
        let table: toml::Table = text
            .parse()
            .with_context(|| format!("{file} is not TOML"))?;
        let mut values = HashMap::new();
        for (key, value) in table {
            let Some(setting) = settings.iter().find(|s| s.key() == key) else {
                // An operator who copied a name from the environment gets pointed at its key.
                let hint = settings
                    .iter()
                    .find(|s| s.name.eq_ignore_ascii_case(&key))
                    .map(|s| format!(" (keys are lower case: {})", s.key()))
                    .unwrap_or_default();
                bail!("{file}: unknown setting {key:?}{hint}");
            };
            let Some(text) = as_text(&value) else {
                bail!(
                    "{file}: {key} must be a string, an integer or an array of them, not {}",
                    value.type_str()
                );
            };
            values.insert(setting.name, text);
        }
        Ok(Self {
            path: path.to_owned(),
            values,
        })
    }

    /// The raw value of `setting` (by its name), if the file sets it.
    pub fn get(&self, setting: &Setting) -> Option<&str> {
        self.values.get(setting.name).map(String::as_str)
    }
}

/// A value as the environment would spell it: arrays (`trusted_proxies = ["10.0.0.0/8"]`) become
/// the comma-separated lists the environment uses.
fn as_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Array(items) => {
            let items: Option<Vec<String>> = items
                .iter()
                .map(|item| match item {
                    toml::Value::Array(_) => None,
                    item => as_text(item),
                })
                .collect();
            Some(items?.join(","))
        }
        _ => None,
    }
}
