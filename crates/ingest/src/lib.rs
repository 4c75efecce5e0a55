//! walflow's first hop: users from a randomuser-compatible API into Postgres, and
//! `fake_api`, an offline API of the same shape for the demo, the tests and benchmarks.

pub mod churn;
pub mod client;
pub mod fake_api;
pub mod model;
pub mod retry;
pub mod run;
pub mod schema;
pub mod writer;
