//! The shared informers of the controller manager: the controller runtime's
//! ([`rk3s_runtime::informers`]), plus [`OwnedMatching`], the label-selector form of
//! [`OwnedCache::owned_where`] the workload controllers use.

pub use rk3s_runtime::informers::*;

/// "The objects I control that my selector matches", for [`OwnedCache`].
pub trait OwnedMatching<K> {
    /// The objects in `ns` controlled by the object of `uid` whose labels `sel`
    /// matches, as copies (for the pure planning functions), sorted by name.
    fn owned_matching(
        &self,
        uid: &str,
        ns: &str,
        sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    ) -> Vec<K>;
}

impl<K: InformerResource> OwnedMatching<K> for OwnedCache<K> {
    fn owned_matching(
        &self,
        uid: &str,
        ns: &str,
        sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    ) -> Vec<K> {
        let none = std::collections::BTreeMap::new();
        self.owned_where(uid, ns, |o| {
            crate::workload_util::selector_matches(sel, o.meta().labels.as_ref().unwrap_or(&none))
        })
    }
}
