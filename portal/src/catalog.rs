//! The catalog behind search, deleted and history. Until the `rewind-catalog` crate is wired in,
//! these endpoints answer 503 "catalog not available" rather than pretending.

use std::sync::Arc;

use rewind_store::View;

use crate::config::Config;

pub struct Catalog {
    _view: Arc<View>,
}

impl Catalog {
    pub fn open(_config: &Config, _view: Arc<View>) -> anyhow::Result<Option<Catalog>> {
        Ok(None)
    }
}
