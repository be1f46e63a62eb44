//! Leader election on a `coordination.k8s.io/v1` Lease, as upstream's leaderelection
//! package: acquire when the Lease is free or expired, renew every `duration/3`, give up
//! when renewals fail for a whole `duration`.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff;
use kube::api::{Api, PostParams};
use tokio::sync::oneshot;

/// Acquires and keeps a Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

/// Whether a Lease's holder has not renewed it within its duration.
fn expired(l: &Lease, now: jiff::Timestamp) -> bool {
    let Some(spec) = &l.spec else { return true };
    let Some(renew) = &spec.renew_time else {
        return true;
    };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    now.as_second() - renew.0.as_second() > secs
}

impl LeaderElector {
    /// An elector for Lease `namespace/name`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
        }
    }

    /// Tries once to take or renew the Lease; true when this process holds it.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let secs = i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX);
        match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(now()),
                        renew_time: Some(now()),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let holder = lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.clone())
                    .unwrap_or_default();
                if holder != self.identity && !expired(&lease, jiff::Timestamp::now()) {
                    return Ok(false);
                }
                let spec = lease.spec.get_or_insert_with(Default::default);
                if holder != self.identity {
                    spec.acquire_time = Some(now());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.holder_identity = Some(self.identity.clone());
                spec.lease_duration_seconds = Some(secs);
                spec.renew_time = Some(now());
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Waits until this process holds the Lease; returns a receiver that fires when
    /// leadership is lost (renewals keep running in the background until then).
    pub async fn acquire(&self) -> oneshot::Receiver<()> {
        let retry = (self.duration / 5).max(Duration::from_millis(200));
        loop {
            match self.try_acquire().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: cannot reach the Lease"),
            }
            tokio::time::sleep(retry).await;
        }
        let (tx, rx) = oneshot::channel();
        let me = LeaderElector {
            api: self.api.clone(),
            name: self.name.clone(),
            identity: self.identity.clone(),
            duration: self.duration,
        };
        tokio::spawn(async move {
            let every = (me.duration / 3).max(Duration::from_millis(200));
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(every).await;
                match me.try_acquire().await {
                    Ok(true) => last_ok = tokio::time::Instant::now(),
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "leader election: renewal failed");
                        if last_ok.elapsed() > me.duration {
                            break;
                        }
                    }
                }
            }
            let _ = tx.send(());
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(renewed_secs_ago: i64, duration: i32) -> Lease {
        let t = jiff::Timestamp::from_second(1_000_000 - renewed_secs_ago)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(t)),
                lease_duration_seconds: Some(duration),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn lease_expiry() {
        let now = jiff::Timestamp::from_second(1_000_000).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        assert!(!expired(&lease(5, 15), now));
        assert!(expired(&lease(16, 15), now));
        assert!(expired(&Lease::default(), now));
    }
}
