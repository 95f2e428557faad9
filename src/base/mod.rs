//! What every stage uses: UTC timestamps as zdmap writes them ([`time`]), locks that outlive a
//! panic ([`sync`]), and outside text made safe for a terminal or a log line ([`text`]).

pub mod sync;
pub mod text;
pub mod time;
