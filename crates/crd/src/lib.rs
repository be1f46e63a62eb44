#![recursion_limit = "256"]
//! rk3s-crd: the CustomResourceDefinition machinery of the API server, on
//! `serde_json::Value`, following upstream's `apiextensions-apiserver`:
//!
//! - [`resources_of`]: a CRD's served versions as [`rk3s_api::ResourceInfo`]s;
//! - [`validate_crd`]: validation of a CRD on create/update (names, versions,
//!   structural schemas, subresources, printer columns) with upstream's messages;
//! - [`crd_status`]: the naming controller's verdict (`NamesAccepted`,
//!   `Established`, `acceptedNames`, `storedVersions`);
//! - [`Schema`]: a version's structural schema: pruning, defaulting and value
//!   validation of custom objects;
//! - [`printer_columns`] / [`printer_cells`]: `additionalPrinterColumns` for Tables;
//! - [`openapi_schema`] / [`openapi_v2_schema`]: the OpenAPI v3 / v2 definition of a
//!   version (`kubectl explain`, kubectl's client-side validation).

mod crd;
mod jsonpath;
mod openapi;
mod printer;
mod schema;
mod status;
mod util;

pub use crd::{
    resources_of, scale_spec, served_versions, storage_version, validate_crd, ScaleSpec,
};
pub use jsonpath::{JsonPath, JsonPathError};
pub use openapi::{crd_definition_name, openapi_schema, openapi_v2_schema};
pub use printer::{printer_cells, printer_columns, PrinterColumn};
pub use schema::Schema;
pub use status::crd_status;

/// Errors of the CRD machinery.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CrdError {
    /// A required field of the CRD is missing or has the wrong type.
    #[error("invalid CustomResourceDefinition: {0}")]
    Invalid(String),
    /// The CRD has no such version.
    #[error("version {0:?} not found in the CustomResourceDefinition")]
    VersionNotFound(String),
    /// A `pattern` of the schema is not a valid regular expression.
    #[error("invalid pattern {pattern:?}: {message}")]
    BadPattern {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        message: String,
    },
}
