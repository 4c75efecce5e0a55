//! Health and lag of every walflow hop. `doctor` is the preflight a user runs before
//! anything else: can each service be reached, which version is it, and is it fit.

pub mod doctor;
pub mod kafka_api_versions;
