//! Shared test harness: servers and the scenarios both backends run.
#![allow(dead_code)] // each test binary uses part of the harness

pub mod scenarios;
pub mod servers;
