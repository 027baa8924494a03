//! Blade configuration (placeholder until the config module lands).
#![allow(missing_docs)]
pub struct Config;
impl Config {
    pub fn load(_p: &std::path::Path) -> Result<Config, String> { Err("no config yet".into()) }
    pub fn embedded_default() -> Result<Config, String> { Err("no config yet".into()) }
}
