//! Signs approved CertificateSigningRequests for the built-in `kubernetes.io/*` signers
//! with the cluster CA (upstream's csrsigning controller): `kube-apiserver-client`,
//! `kube-apiserver-client-kubelet` (client certificates) and `kubelet-serving`.

use std::sync::Arc;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use rk3s_runtime::{for_objects, run_controller, Action, Trigger, WorkQueue};

use crate::ControllerError;

struct Ctx {
    client: kube::Client,
    ca_cert: String,
    ca_key: String,
}

/// The usage of a signer, or None for signers this controller does not handle.
pub fn signer_usage(signer: &str) -> Option<rk3s_pki::CsrUsage> {
    match signer {
        "kubernetes.io/kube-apiserver-client" | "kubernetes.io/kube-apiserver-client-kubelet" => {
            Some(rk3s_pki::CsrUsage::Client)
        }
        "kubernetes.io/kubelet-serving" => Some(rk3s_pki::CsrUsage::Server),
        _ => None,
    }
}

fn condition(csr: &CertificateSigningRequest, t: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == t && c.status == "True"))
}

async fn reconcile(
    csr: Arc<CertificateSigningRequest>,
    ctx: Arc<Ctx>,
) -> Result<Action, ControllerError> {
    let done = csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    if done
        || !condition(&csr, "Approved")
        || condition(&csr, "Denied")
        || condition(&csr, "Failed")
    {
        return Ok(Action::await_change());
    }
    let Some(usage) = signer_usage(&csr.spec.signer_name) else {
        return Ok(Action::await_change());
    };
    let pem = String::from_utf8_lossy(&csr.spec.request.0).to_string();
    // Upstream's default --cluster-signing-duration is one year.
    let secs = csr
        .spec
        .expiration_seconds
        .map(i64::from)
        .unwrap_or(365 * 24 * 3600);
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let status = match rk3s_pki::sign_csr(&ctx.ca_cert, &ctx.ca_key, &pem, usage, secs) {
        Ok(cert) => {
            use base64::Engine;
            json!({"status": {"certificate": base64::engine::general_purpose::STANDARD.encode(cert.as_bytes())}})
        }
        Err(e) => {
            let now = jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            let mut conds = csr
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .map(|c| serde_json::to_value(c).unwrap_or_default())
                .unwrap_or_else(|| json!([]));
            if let Some(a) = conds.as_array_mut() {
                a.push(json!({"type": "Failed", "status": "True", "reason": "SignerValidationFailure", "message": format!("invalid certificate request: {e}"), "lastUpdateTime": now, "lastTransitionTime": now}));
            }
            json!({"status": {"conditions": conds}})
        }
    };
    api.patch_status(
        &csr.name_any(),
        &PatchParams::default(),
        &Patch::Merge(status),
    )
    .await?;
    Ok(Action::await_change())
}

/// Runs the signer until the watch ends (CSRs from the shared informer).
pub async fn run(
    client: kube::Client,
    ca_cert: String,
    ca_key: String,
    informers: crate::informers::SharedInformers,
) -> Result<(), ControllerError> {
    // Subscribe before reading the store: no change after the first list is missed.
    let changes = informers.subscribe::<CertificateSigningRequest>();
    let csrs = informers.store::<CertificateSigningRequest>().await;
    let ctx = Arc::new(Ctx {
        client,
        ca_cert,
        ca_key,
    });
    let triggers = vec![
        Trigger::for_each(changes),
        // The CSRs listed before this controller subscribed.
        Trigger::all_in(&csrs),
    ];
    run_controller(
        "csrsigning",
        2,
        WorkQueue::new(),
        triggers,
        for_objects(csrs, ctx, reconcile),
    )
    .await;
    Ok(())
}
