//! CustomResourceDefinitions: their own defaulting and validation
//! ([`crate::crd`]), after admission.

use rk3s_api::{ApiError, ResourceInfo};
use serde_json::Value;

use super::Strategy;

/// The strategy of `customresourcedefinitions`.
pub struct CrdStrategy;

impl Strategy for CrdStrategy {
    fn validate_object(
        &self,
        res: &ResourceInfo,
        sub: Option<&str>,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        match old {
            None => {
                crate::crd::prepare_create(obj);
                crate::crd::apply_defaults(obj);
                crate::crd::validate(res, obj, None)
            }
            Some(old) if sub.is_none() => {
                crate::crd::apply_defaults(obj);
                crate::crd::validate(res, obj, Some(old))
            }
            Some(_) => Ok(()),
        }
    }
}
