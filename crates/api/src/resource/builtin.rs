//! The table of built-in resources (Kubernetes 1.33). Filled in by the registry work.

use super::ResourceInfo;

/// Every built-in resource at every served version.
pub fn resources() -> Vec<ResourceInfo> {
    Vec::new()
}
