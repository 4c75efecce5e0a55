//! Health and lag of every walflow hop. `doctor` is the preflight a user runs before
//! anything else: can each service be reached, which version is it, and is it fit. `lag`
//! says how far behind each hop is.

pub mod doctor;
pub mod kafka_api_versions;
pub mod lag;
mod table;
